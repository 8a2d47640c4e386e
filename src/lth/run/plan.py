"""What a run is meant to hold, from its settings alone: its levels, the judged levels, seeds and baselines, and
every unit with what it waits for (a report reads it without loading the model). Each kind's part of the plan
comes from its row in `kinds.KINDS`."""
from __future__ import annotations

from pathlib import Path

from ..core.errors import LthError
from ..core.pruning import planned_levels
from .kinds import CHAIN, INIT, KINDS, REINIT, WAYS
from .layout import DRAW_RECORD, branch_dir, draw_dir, level_dir
from .settings import FindSettings
from .units import Unit


class Plan:
    def __init__(self, s: FindSettings, run: Path):
        self.s, self.run = s, run
        chosen = s.chosen_levels()
        self.plan = planned_levels(s.schedule, s.rate, s.max_sparsity, max(chosen) if chosen else None)
        beyond = [level for level in chosen or [] if level >= len(self.plan)]
        if beyond:  # refused before anything is written: a finished run's summary stays as it was
            raise LthError(f"--levels {s.levels}: level {', '.join(map(str, beyond))} is beyond --max-sparsity "
                           f"{s.max_sparsity} (level {len(self.plan) - 1} reaches {self.plan[-1]:.1%}); raise "
                           "--max-sparsity or choose lower levels")
        self.judged = [level for level in (chosen if chosen is not None else range(len(self.plan)))
                       if 0 < level < len(self.plan)]
        self.seeds, self.baselines = s.seed_list(), s.baseline_names()
        self.kept = s.kept_levels(len(self.plan))
        self.way = WAYS[s.search]

    @property
    def drawn(self) -> bool:
        """Whether every level's mask is drawn by one unit (early-bird, gradual) rather than level by level (IMP)."""
        return self.way.drawer is not None

    def drawn_levels(self) -> dict[int, float]:
        """The levels whose masks a drawing search draws, with their sparsities: every one up to --max-sparsity
        (--levels only chooses which are trained and judged)."""
        plan = planned_levels(self.s.schedule, self.s.rate, self.s.max_sparsity, None)
        return {level: sparsity for level, sparsity in enumerate(plan) if level > 0}

    def trunk_levels(self) -> list[int]:
        """The search's own levels that train: every one for IMP (each gives the next its mask); for a drawing
        search the dense model and the judged levels (their seed of the search)."""
        return list(range(len(self.plan))) if not self.drawn else [0, *self.judged]

    def draw_units(self) -> list[Unit]:
        """The unit of its own that draws the masks (gradual), if the search has one."""
        if self.way.drawer is None or KINDS[self.way.drawer].search:
            return []
        seed = self.seeds[0]
        return [self.unit(self.way.drawer, None, seed, draw_dir(self.run), label=f"{self.s.search} draw seed {seed}")]

    def unit(self, kind: str, level: int | None, seed: int, where: Path, needs: tuple = (), **kw) -> Unit:
        """A unit; one that starts from a later rewind point also waits for level 0 to have saved it."""
        if KINDS[kind].start not in (INIT, REINIT, CHAIN) and level != 0 and self.s.rewind_step:
            needs = (*needs, self.run / self.rewind_file())
        if self.distills(kind, level):  # the teacher (level 0, its outputs written before its metrics.json)
            needs = (*needs, level_dir(self.run, 0) / "metrics.json")
        return Unit(kind, level, seed, where, needs, id=where.relative_to(self.run).as_posix(), **kw)

    def dense_units(self) -> list[Unit]:
        """The full model with every seed: the search's own level 0, then the other seeds' dense runs."""
        return self.kind_units("trunk", [0]) + self.kind_units("full", [0])

    def distills(self, kind: str, level: int | None) -> bool:
        """Whether a unit learns from the teacher: with --distill, every pruned unit whose kind's row says so."""
        return self.s.distill and KINDS[kind].teacher and level != 0

    def rewind_file(self) -> str:
        return "init.safetensors" if self.s.rewind_step == 0 else f"rewind_step_{self.s.rewind_step}.safetensors"

    @property
    def chains(self) -> list[str]:
        """The baselines that chain their levels (standard pruning)."""
        return [kind for kind in self.baselines if KINDS[kind].chain]

    def seeds_of(self, kind: str) -> list[int]:
        return {"search": self.seeds[:1], "others": self.seeds[1:], "all": self.seeds}[KINDS[kind].seeds]

    def where(self, kind: str, seed: int, level: int) -> Path:
        return level_dir(self.run, level) if KINDS[kind].search else branch_dir(self.run, kind, seed, level)

    def needs(self, kind: str, seed: int, level: int) -> tuple[Path, ...]:
        """The files a unit of `kind` waits for (its row's `needs`)."""
        wanted = KINDS[kind].needs
        if self.drawn and wanted in ("previous level", "level mask") and level > 0:
            return (self.run / DRAW_RECORD,)  # every level's mask at once, when the drawing unit has finished
        if wanted == "previous level" and level > 0:
            return (level_dir(self.run, level - 1) / "metrics.json",)
        if wanted == "level mask":
            return (level_dir(self.run, level) / "mask.safetensors",)
        if wanted == "previous weights" and level > 0:
            return (previous_final(self, kind, seed, level),)
        return ()

    def kind_units(self, kind: str, levels) -> list[Unit]:
        """The units of `kind` at `levels`, level by level, each with every seed its row asks for."""
        return [self.unit(kind, level, seed, self.where(kind, seed, level), self.needs(kind, seed, level))
                for level in levels for seed in self.seeds_of(kind)]


def planned_units(plan: Plan) -> list[Unit]:
    """Every unit of the search and its seeds and baselines, in an order where each one's inputs come from units
    before it. The search's own levels come first: they are the critical path when processes share a run. Then
    the dense seeds, the dense starts of chains, and kind by kind over all judged levels (an interrupted run has
    whole columns of the verdict table); the chains' levels last."""
    units = plan.draw_units() + plan.kind_units("trunk", plan.trunk_levels()) + plan.kind_units("full", [0])
    for chain in plan.chains:  # a seed whose dense run did not keep its weights trains them again
        units += [u for u in plan.kind_units(chain, [0]) if dense_final(plan, chain, u.seed).parent == u.where]
    judged = [kind for kind in ("imp", *plan.baselines) if KINDS[kind].levels == "judged"]
    for kind in judged:
        units += plan.kind_units(kind, plan.judged)
    for chain in plan.chains:  # every level up to the highest judged one, judged or not
        units += plan.kind_units(chain, range(1, max(plan.judged, default=0) + 1))
    return units


# -- chains (standard pruning): each level starts from the previous level's trained weights --------------------

def dense_final(plan: Plan, chain: str, seed: int) -> Path:
    """The fine-tuned dense weights that seed's chain starts from.

    They are saved by the dense run of that seed; a dense run finished before the chain was asked for did not
    keep them, and is trained again as the chain's own level 0 (branches/<chain>/seed_S/level_00)."""
    dense = plan.where("trunk", seed, 0) if seed == plan.seeds[0] else plan.where("full", seed, 0)
    if (dense / "metrics.json").exists() and not (dense / "final.safetensors").exists():
        dense = branch_dir(plan.run, chain, seed, 0)
    return dense / "final.safetensors"


def previous_final(plan: Plan, chain: str, seed: int, level: int) -> Path:
    if level == 1:
        return dense_final(plan, chain, seed)
    return branch_dir(plan.run, chain, seed, level - 1) / "final.safetensors"


def keeps_final(plan: Plan, unit: Unit) -> bool:
    """Whether a unit's trained weights are kept: the start of a chain's next level."""
    if plan.s.distill and KINDS[unit.kind].search and unit.level == 0:
        return True  # the teacher's weights (masked-LM's teacher runs beside each student)
    if KINDS[unit.kind].search and unit.level in plan.kept:
        return True  # --keep-weights: lth export of the level needs no training
    if not plan.chains or unit.level is None:
        return False
    if unit.level == 0:
        return any(dense_final(plan, chain, unit.seed).parent == unit.where for chain in plan.chains)
    return KINDS[unit.kind].chain and unit.level < max(plan.judged, default=0)
