"""Where each kind's mask comes from: the `mask` column of run.kinds.KINDS, over one run's prunable weights."""
from __future__ import annotations

from pathlib import Path

import torch

from ..core import masks
from ..core.baselines import oneshot_mask, random_mask
from ..core.console import say
from ..core.files import save_json
from ..core.pruning import prune, sparsity_at
from ..core.tensors import load_tensors
from ..run.kinds import KINDS
from ..run.layout import DRAW_RECORD, branch_dir, level_dir
from ..run.plan import Plan, previous_final
from ..run.units import Unit


class Masks:
    """The masks of one run: the search's own, written level by level, and every other kind's, drawn from them."""

    def __init__(self, plan: Plan, weights: dict[str, torch.Tensor]):
        self.plan, self.s, self.run, self.weights = plan, plan.s, plan.run, weights
        self.sources = {"level": self.of_level, "dense": self.dense, "random": self.random, "oneshot": self.oneshot,
                        "chain": self.chained, "source": self.transferred}

    def of(self, unit: Unit) -> masks.Mask:
        return self.sources[KINDS[unit.kind].mask](unit)

    def level(self, level: int) -> masks.Mask:
        """The search's mask of `level` (the all-ones mask of level 0 is written when missing)."""
        path = level_dir(self.run, level) / "mask.safetensors"
        if level == 0 and not path.exists():
            mask = masks.ones(self.weights)
            masks.save(mask, path, {"level": 0})
            return mask  # not read back: in a group of processes only the main one writes it
        mask = masks.load(path)
        masks.check(mask, self.weights, str(path))
        return mask

    def of_level(self, unit: Unit) -> masks.Mask:
        return self.level(unit.level)

    def dense(self, unit: Unit) -> masks.Mask:
        return self.level(0)

    def random(self, unit: Unit) -> masks.Mask:
        return random_mask(self.weights, self.target(unit), unit.seed)

    def oneshot(self, unit: Unit) -> masks.Mask:
        return oneshot_mask(self.stored(self.run / "init.safetensors"), self.target(unit), self.s.strategy)

    def chained(self, unit: Unit) -> masks.Mask:
        """Magnitudes of the chain's previous trained weights (the dense run's at level 1)."""
        if unit.level == 0:
            return self.level(0)
        path = unit.where / "mask.safetensors"
        if path.exists():
            return masks.load(path)
        before = self.level(0) if unit.level == 1 else masks.load(
            branch_dir(self.run, unit.kind, unit.seed, unit.level - 1) / "mask.safetensors")
        trained = self.stored(previous_final(self.plan, unit.kind, unit.seed, unit.level))
        mask = prune(self.s.strategy, trained, before, self.target(unit))
        masks.save(mask, path, {"level": unit.level, "model": self.s.model, "strategy": self.s.strategy,
                                "kind": unit.kind})
        return mask

    def transferred(self, unit: Unit) -> masks.Mask:
        mask = masks.load(unit.source)
        masks.check(mask, self.weights, str(unit.source))
        return mask

    def next_level(self, level: int, mask: masks.Mask) -> None:
        """Prune the search's trained weights to the next level's mask. Written even past the planned last level, so
        asking for more sparsity later resumes from here."""
        target = sparsity_at(level + 1, self.s.schedule, self.s.rate)
        if target < 1:
            self.save_level(level + 1, prune(self.s.strategy, self.weights, mask, target))

    def save_drawn(self, drawer) -> None:
        """Every level's mask from a drawing search (search.draws), then the record of when each was drawn, which
        the levels' units wait for."""
        for level, mask in drawer.masks().items():
            self.save_level(level, mask, {"search": self.s.search})
        save_json(drawer.record(), self.run / DRAW_RECORD)

    def save_level(self, level: int, mask: masks.Mask, extra: dict | None = None) -> None:
        for name, density in masks.nearly_empty(mask).items():
            say(f"warning: level {level} keeps {density:.1%} of {name}: global magnitude ranks the whole "
                "matrix lowest, which cuts the layer out and can collapse the model; if unintended, rerun "
                "with --exclude on its name or --strategy layerwise")
        masks.save(mask, level_dir(self.run, level) / "mask.safetensors",
                   {"level": level, "model": self.s.model, "strategy": self.s.strategy, **(extra or {})})

    def target(self, unit: Unit) -> float:
        if unit.sparsity is not None:
            return unit.sparsity
        return sparsity_at(unit.level, self.s.schedule, self.s.rate)

    def stored(self, path: Path) -> dict:
        """The prunable weights as saved in a weights file."""
        saved, _ = load_tensors(path)
        return {name: saved[name] for name in self.weights}
