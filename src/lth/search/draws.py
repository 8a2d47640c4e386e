"""Cheaper ways to draw the candidate masks than IMP's fine-tuning per level (--search): both watch one training run
and draw every level's mask from it. Each is a drawer that `train.finetune` calls after every step; its state is
part of the unit's checkpoint, so a killed run resumes to the same masks.

- early-bird (You et al., ICLR 2020; EarlyBERT, ACL 2021): while the dense model trains (level 0), every `every`
  steps, the magnitude mask of each level's sparsity; a level's mask is drawn at the first check where it differs
  from the previous check's in less than `epsilon` of the weights (normalised Hamming distance), else at the end.
- gradual (Zhu & Gupta 2017): one fine-tuning from θ0 that prunes by magnitude every `every` steps along the
  cubic schedule, reaching the highest level's sparsity at 3/4 of its steps and training on at it; a level's mask
  is drawn at the first pruning step whose sparsity reaches the level's, from the weights of that moment."""
from __future__ import annotations

import math
import time

import torch

from ..core import masks
from ..core.masks import Mask
from ..core.pruning import gradual_sparsity, prune

GRADUAL_END = 0.75  # the share of the steps over which gradual pruning reaches its final sparsity


def check_every(every: int | None, total: int) -> int:
    """Steps between two checks or pruning steps: --draw-every, else 5% of the unit's steps."""
    return min(every or max(1, round(0.05 * total)), total)


class Drawer:
    """The common part: the levels to draw, the clock (resumed with the state) and each level's drawn mask."""

    search = ""

    def __init__(self, weights: dict[str, torch.Tensor], levels: dict[int, float], strategy: str, every: int,
                 total: int):
        self.weights, self.levels, self.strategy = weights, dict(levels), strategy
        self.every, self.total = every, total
        self.drawn: dict[int, dict] = {}  # level -> {"mask", "step", "seconds"}
        self.mask: Mask | None = None  # the mask training holds now; None: the unit's own
        self._clock, self._before = time.monotonic(), 0.0

    def seconds(self) -> float:
        """Training time so far (with the time before an interruption)."""
        return round(self._before + time.monotonic() - self._clock, 1)

    def draw(self, level: int, mask: Mask, step: int) -> None:
        self.drawn[level] = {"mask": mask, "step": step, "seconds": self.seconds()}

    def magnitudes(self, sparsity: float, within: Mask | None = None) -> Mask:
        return prune(self.strategy, self.weights, within or _ones(self.weights), sparsity)

    def state(self) -> dict:
        return {"drawn": self.drawn, "seconds": self.seconds(), "mask": self.mask}

    def restore(self, state: dict | None) -> None:
        if state is not None:
            self.drawn, self.mask, self._before = state["drawn"], state["mask"], state["seconds"]
            self._clock = time.monotonic()

    def masks(self) -> dict[int, Mask]:
        """Every level's drawn mask (call when training has finished)."""
        missing = sorted(set(self.levels) - set(self.drawn))
        assert not missing, f"levels {missing} were never drawn"
        return {level: self.drawn[level]["mask"] for level in sorted(self.levels)}

    def record(self) -> dict:
        """What draw.json says of the drawing: when each level's mask was drawn, in steps and seconds."""
        return {"search": self.search, "every": self.every, "steps": self.total,
                "levels": [{"level": level, "sparsity": masks.sparsity(self.drawn[level]["mask"]),
                            "step": self.drawn[level]["step"], "seconds": self.drawn[level]["seconds"]}
                           for level in sorted(self.levels)]}


class EarlyBird(Drawer):
    search = "early-bird"

    def __init__(self, weights, levels, strategy, every, total, epsilon: float = 0.1):
        super().__init__(weights, levels, strategy, every, total)
        self.epsilon = epsilon
        self.last: dict[int, Mask] = {}  # each undrawn level's mask at the previous check
        self.curves: dict[int, list[list]] = {level: [] for level in self.levels}  # [step, distance] per check

    def after_step(self, step: int) -> bool:
        if step % self.every and step != self.total:
            return False
        for level, sparsity in self.levels.items():
            if level in self.drawn:
                continue
            mask = self.magnitudes(sparsity)
            if level in self.last:
                change = masks.distance(mask, self.last[level])
                self.curves[level].append([step, round(change, 6)])
                if change < self.epsilon:
                    self.draw(level, mask, step)
            self.last[level] = mask
            if step == self.total and level not in self.drawn:  # never settled: the trained weights' mask
                self.draw(level, mask, step)
        for level in self.drawn:
            self.last.pop(level, None)
        return False  # the dense model trains on, unpruned

    def state(self) -> dict:
        return {**super().state(), "last": self.last, "curves": self.curves}

    def restore(self, state: dict | None) -> None:
        super().restore(state)
        if state is not None:
            self.last, self.curves = state["last"], state["curves"]

    def record(self) -> dict:
        return {**super().record(), "epsilon": self.epsilon,
                "distances": {str(level): curve for level, curve in self.curves.items()}}


class Gradual(Drawer):
    search = "gradual"

    def __init__(self, weights, levels, strategy, every, total):
        super().__init__(weights, levels, strategy, every, total)
        self.final = max(self.levels.values())
        self.end = max(every, every * math.floor(GRADUAL_END * total / every))
        self.schedule: list[list] = []  # [step, sparsity] of every pruning step

    def after_step(self, step: int) -> bool:
        if step % self.every or step > self.end:
            return False
        target = gradual_sparsity(step, self.end, self.final)
        before = self.mask or _ones(self.weights)
        for level, sparsity in sorted(self.levels.items()):
            if level not in self.drawn and sparsity <= target + 1e-9:  # passed: drawn from the weights of now
                self.draw(level, self.magnitudes(sparsity, before), step)
        self.mask = self.magnitudes(target, before)
        self.schedule.append([step, round(masks.sparsity(self.mask), 6)])
        return True

    def state(self) -> dict:
        return {**super().state(), "schedule": self.schedule}

    def restore(self, state: dict | None) -> None:
        super().restore(state)
        if state is not None:
            self.schedule = state["schedule"]

    def record(self) -> dict:
        return {**super().record(), "end": self.end, "final": self.final, "schedule": self.schedule}


def _ones(weights: dict[str, torch.Tensor]) -> Mask:
    return {name: torch.ones(w.shape, dtype=torch.bool) for name, w in weights.items()}


DRAWERS = {"early-bird": EarlyBird, "gradual": Gradual}


def drawer(search: str, weights, levels, strategy: str, every: int | None, total: int, epsilon: float) -> Drawer:
    """The drawer of --search `search` over a unit of `total` steps."""
    made = DRAWERS[search](weights, levels, strategy, check_every(every, total), total)
    if isinstance(made, EarlyBird):
        made.epsilon = epsilon
    return made
