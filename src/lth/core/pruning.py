"""Pruning strategies: pure functions (weights, current mask, target sparsity) -> new mask."""
from __future__ import annotations

from collections.abc import Mapping

import torch

from .errors import LthError
from .masks import Mask, count


def _remove(scores: Mapping[str, torch.Tensor], mask: Mask, k: int) -> Mask:
    """Remove the k alive weights of lowest score, pooled over every tensor in `scores` (ties: the first
    in mask order, row-major within a tensor).

    Memory: one float32 copy of the alive scores, partitioned in place for the k-th value (no sort, no
    index tensor); `scores` may compute each tensor's scores when asked (see `Magnitudes`)."""
    sizes = [int(torch.count_nonzero(m)) for m in mask.values()]
    if k <= 0 or k >= sum(sizes):
        return {name: m.clone() if k <= 0 else torch.zeros_like(m) for name, m in mask.items()}
    threshold, missing = _kth_smallest(scores, mask, sizes, k)
    new = {}
    for name, m in mask.items():
        score = scores[name]
        drop = m & (score < threshold)
        if missing > 0:
            ties = (m & (score == threshold)).flatten().nonzero().squeeze(1)[:missing]
            drop.view(-1)[ties] = True
            missing -= ties.numel()
        new[name] = m & ~drop
    return new


def _kth_smallest(scores: Mapping[str, torch.Tensor], mask: Mask, sizes: list[int], k: int) -> tuple[float, int]:
    """The k-th smallest alive score, and how many alive scores equal to it are among the k smallest."""
    alive = torch.empty(sum(sizes), dtype=torch.float32)
    for (name, m), part in zip(mask.items(), alive.split(sizes)):
        part.copy_(scores[name][m])
    alive.numpy().partition(k - 1)  # introselect, in place: alive[k - 1] is the k-th smallest
    threshold = float(alive[k - 1])
    return threshold, k - int(torch.count_nonzero(alive < threshold))


def _check_finite(scores: Mapping[str, torch.Tensor], mask: Mask) -> None:
    """Magnitudes of nan rank nowhere: pruning a diverged model would silently prune nothing."""
    for name, m in mask.items():
        bad = int(torch.count_nonzero(~torch.isfinite(scores[name][m])))
        if bad:
            raise LthError(f"cannot prune: {bad:,} alive weights of {name} are not finite (nan or inf); the training "
                           "that produced them diverged; lower --lr or check --weight-decay and rerun")


def _to_remove(mask: Mask, target: float) -> int:
    kept, total = count(mask)
    return round(target * total) - (total - kept)


def select(scores: Mapping[str, torch.Tensor], mask: Mask, target: float, layerwise: bool = False) -> Mask:
    """Prune the lowest-scoring alive weights until `target` of them are gone, globally or per matrix."""
    if not 0 <= target < 1:
        raise LthError(f"target sparsity {target} is outside [0, 1)")
    _check_finite(scores, mask)
    if not layerwise:
        return _remove(scores, mask, max(0, _to_remove(mask, target)))
    return {name: _remove({name: scores[name]}, {name: m}, max(0, _to_remove({name: m}, target)))[name]
            for name, m in mask.items()}


class Magnitudes(Mapping):
    """|w| as float32, computed per tensor when asked: pruning never holds a copy of every weight."""

    def __init__(self, weights: dict[str, torch.Tensor]):
        self.weights = weights

    def __getitem__(self, name: str) -> torch.Tensor:
        with torch.no_grad():
            return self.weights[name].detach().abs().float().cpu()  # masks live on the CPU, weights anywhere

    def __iter__(self):
        return iter(self.weights)

    def __len__(self) -> int:
        return len(self.weights)


def random_scores(weights: dict[str, torch.Tensor], seed: int) -> dict[str, torch.Tensor]:
    """Uniform random scores: selecting by them is random pruning."""
    g = torch.Generator().manual_seed(seed)
    return {name: torch.rand(w.shape, generator=g) for name, w in weights.items()}


PRUNERS = {
    "global": lambda weights, mask, target: select(Magnitudes(weights), mask, target),
    "layerwise": lambda weights, mask, target: select(Magnitudes(weights), mask, target, layerwise=True),
}


def prune(strategy: str, weights: dict[str, torch.Tensor], mask: Mask, target: float) -> Mask:
    """The one pruning entry point: the new mask at sparsity `target` (masks only shrink)."""
    return PRUNERS[strategy](weights, mask, target)


def sparsity_at(level: int, schedule: str, rate: float) -> float:
    """The sparsity a schedule reaches at `level` (level 0 is the dense model)."""
    if schedule == "original":  # the paper: each level removes `rate` of the original weights
        return round(level * rate, 10)
    return 1.0 - (1.0 - rate) ** level


def gradual_sparsity(step: int, end: int, final: float) -> float:
    """Zhu & Gupta's cubic schedule (2017, with s_i = 0 and t_0 = 0): the sparsity after `step` of `end` pruning
    steps, fast at first and flat at the end, reaching `final` at `end` and staying there."""
    if step >= end:
        return final
    return final * (1.0 - (1.0 - step / end) ** 3)


def planned_levels(schedule: str, rate: float, max_sparsity: float, last: int | None) -> list[float]:
    """Sparsity of every level to run, level 0 first."""
    plan, level = [], 0
    while sparsity_at(level, schedule, rate) <= max_sparsity + 1e-9 and (last is None or level <= last):
        plan.append(sparsity_at(level, schedule, rate))
        level += 1
    return plan
