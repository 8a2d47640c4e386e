"""Every kind of unit as data: where its mask comes from and where its weights start.

    kind            mask                                  starts from
    trunk           the search's mask of its level        the rewind point (θ0 at level 0)
    full            all ones                              θ0
    imp             the search's mask of its level        the rewind point
    random-prune    random, at the level's sparsity       the rewind point
    random-reinit   the search's mask of its level        a fresh draw from the model's own init (seeded)
    oneshot         magnitudes of θ0                      the rewind point
    standard        magnitudes of the chain's weights     the chain's previous trained weights
    transfer        another run's or a file's mask        the rewind point (this run's θ0 and head)

Adding a kind is one row of KINDS and, at most, one small function for its mask. The one training loop
(`Search.run_unit`) reads the row; nothing else tests a unit's kind.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from . import masks
from .baselines import oneshot_mask, random_mask
from .files import load_tensors
from .pruning import prune, sparsity_at
from .runs import branch_dir, level_dir
from .work import Unit

if TYPE_CHECKING:
    from .search import Plan, Search

REWIND, INIT, REINIT, CHAIN = "rewind", "init", "reinit", "chain"


@dataclass(frozen=True)
class Kind:
    mask: Callable[["Search", Unit], masks.Mask]
    start: str  # REWIND: the rewind point; INIT: θ0 at step 0; REINIT: a fresh init; CHAIN: standard pruning's


def level_mask(search: "Search", unit: Unit) -> masks.Mask:
    return search.mask(unit.level)


def dense(search: "Search", unit: Unit) -> masks.Mask:
    return search.mask(0)


def random_at(search: "Search", unit: Unit) -> masks.Mask:
    return random_mask(search.weights, target_sparsity(search, unit), unit.seed)


def oneshot(search: "Search", unit: Unit) -> masks.Mask:
    return oneshot_mask(stored(search, search.run / "init.safetensors"), target_sparsity(search, unit),
                        search.s.strategy)


def standard(search: "Search", unit: Unit) -> masks.Mask:
    """Magnitudes of the chain's previous trained weights (the dense run's at level 1)."""
    if unit.level == 0:
        return search.mask(0)
    path = unit.where / "mask.safetensors"
    if path.exists():
        return masks.load(path)
    before = search.mask(0) if unit.level == 1 else masks.load(
        branch_dir(search.run, "standard", unit.seed, unit.level - 1) / "mask.safetensors")
    trained = stored(search, previous_final(search, unit.seed, unit.level))
    mask = prune(search.s.strategy, trained, before, target_sparsity(search, unit))
    masks.save(mask, path, {"level": unit.level, "model": search.s.model, "strategy": search.s.strategy,
                            "kind": "standard"})
    return mask


def transferred(search: "Search", unit: Unit) -> masks.Mask:
    mask = masks.load(unit.source)
    masks.check(mask, search.weights, str(unit.source))
    return mask


KINDS: dict[str, Kind] = {
    "trunk": Kind(level_mask, REWIND),
    "full": Kind(dense, INIT),
    "imp": Kind(level_mask, REWIND),
    "random-prune": Kind(random_at, REWIND),
    "random-reinit": Kind(level_mask, REINIT),
    "oneshot": Kind(oneshot, REWIND),
    "standard": Kind(standard, CHAIN),
    "transfer": Kind(transferred, REWIND),
}


def target_sparsity(search: "Search", unit: Unit) -> float:
    if unit.sparsity is not None:
        return unit.sparsity
    return sparsity_at(unit.level, search.s.schedule, search.s.rate)


def stored(search: "Search", path: Path) -> dict:
    """The prunable weights as saved in a weights file."""
    saved, _ = load_tensors(path)
    return {name: saved[name] for name in search.weights}


# -- standard pruning: a chain per seed, each level starting from the previous level's trained weights ------

def dense_final(search: "Plan", seed: int) -> Path:
    """The fine-tuned dense weights that seed's standard-pruning chain starts from.

    They are saved by the dense run of that seed; a dense run finished before standard pruning was
    asked for did not keep them, and is trained again under branches/standard/seed_S/level_00."""
    run = search.run
    dense_dir = level_dir(run, 0) if seed == search.seeds[0] else branch_dir(run, "full", seed, 0)
    if (dense_dir / "metrics.json").exists() and not (dense_dir / "final.safetensors").exists():
        dense_dir = branch_dir(run, "standard", seed, 0)
    return dense_dir / "final.safetensors"


def previous_final(search: "Plan", seed: int, level: int) -> Path:
    if level == 1:
        return dense_final(search, seed)
    return branch_dir(search.run, "standard", seed, level - 1) / "final.safetensors"


def keeps_final(search: "Plan", unit: Unit) -> bool:
    """Whether a unit's trained weights are kept: the start of a standard-pruning chain's next level."""
    if "standard" not in search.baselines or unit.level is None:
        return False
    if unit.level == 0:
        return dense_final(search, unit.seed).parent == unit.where
    return unit.kind == "standard" and unit.level < max(search.judged, default=0)


# -- the units a search plans ---------------------------------------------------------------------------

def planned_units(search: "Plan") -> list[Unit]:
    """Every unit of the search and its seeds and baselines, in an order where each one's inputs come from
    units before it. The search's own levels come first: they are the critical path when processes share a run."""
    run, first, others = search.run, search.seeds[0], search.seeds[1:]
    units = [search.unit("trunk", level, first, level_dir(run, level),
                         (level_dir(run, level - 1) / "metrics.json",) if level else ())
             for level in range(len(search.plan))]
    units += search.dense_units()[1:]
    chain = "standard" in search.baselines
    if chain:
        units += [search.unit("standard", 0, seed, branch_dir(run, "standard", seed, 0)) for seed in search.seeds
                  if dense_final(search, seed).parent == branch_dir(run, "standard", seed, 0)]
    # Kind by kind over all judged levels: an interrupted run has whole columns of the verdict table.
    units += [search.unit("imp", level, seed, branch_dir(run, "imp", seed, level), _trunk_mask(run, level))
              for level in search.judged for seed in others]
    for kind in search.baselines:
        if kind != "standard":
            units += [search.unit(kind, level, seed, branch_dir(run, kind, seed, level),
                                  _trunk_mask(run, level) if kind == "random-reinit" else ())
                      for level in search.judged for seed in search.seeds]
    if chain:  # every level up to the highest judged one, judged or not
        for level in range(1, max(search.judged, default=0) + 1):
            units += [search.unit("standard", level, seed, branch_dir(run, "standard", seed, level),
                                  (previous_final(search, seed, level),)) for seed in search.seeds]
    return units


def _trunk_mask(run: Path, level: int) -> tuple[Path]:
    return (level_dir(run, level) / "mask.safetensors",)
