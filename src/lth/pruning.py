"""Pruning strategies: pure functions (weights, current mask, target sparsity) -> new mask."""
from __future__ import annotations

import torch

from .errors import LthError
from .masks import Mask, count


def smallest(values: torch.Tensor, k: int) -> torch.Tensor:
    """Boolean over a 1-D tensor marking exactly its k smallest entries (ties broken by position).

    A k-th value selection, not a sort: pruning BERT-base touches 85M weights."""
    chosen = torch.zeros_like(values, dtype=torch.bool)
    if k <= 0:
        return chosen
    if k >= values.numel():
        return ~chosen
    threshold = values.kthvalue(k).values
    chosen = values < threshold
    missing = k - int(chosen.sum())
    ties = (values == threshold).nonzero().squeeze(1)
    chosen[ties[:missing]] = True
    return chosen


def _remove(scores: dict[str, torch.Tensor], mask: Mask, k: int) -> Mask:
    """Remove the k alive weights of lowest score, pooled over every tensor in `scores`."""
    alive = [scores[name][m] for name, m in mask.items()]
    drop = smallest(torch.cat(alive), k).split([a.numel() for a in alive])
    new = {}
    for (name, m), d in zip(mask.items(), drop):
        kept = m.clone()
        kept[m] = ~d
        new[name] = kept
    return new


def _to_remove(mask: Mask, target: float) -> int:
    kept, total = count(mask)
    return round(target * total) - (total - kept)


def select(scores: dict[str, torch.Tensor], mask: Mask, target: float, layerwise: bool = False) -> Mask:
    """Prune the lowest-scoring alive weights until `target` of them are gone, globally or per matrix."""
    if not 0 <= target < 1:
        raise LthError(f"target sparsity {target} is outside [0, 1)")
    if not layerwise:
        return _remove(scores, mask, max(0, _to_remove(mask, target)))
    return {name: _remove({name: scores[name]}, {name: m}, max(0, _to_remove({name: m}, target)))[name]
            for name, m in mask.items()}


@torch.no_grad()
def magnitudes(weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {name: w.detach().abs().float() for name, w in weights.items()}


def random_scores(weights: dict[str, torch.Tensor], seed: int) -> dict[str, torch.Tensor]:
    """Uniform random scores: selecting by them is random pruning."""
    g = torch.Generator().manual_seed(seed)
    return {name: torch.rand(w.shape, generator=g) for name, w in weights.items()}


PRUNERS = {
    "global": lambda weights, mask, target: select(magnitudes(weights), mask, target),
    "layerwise": lambda weights, mask, target: select(magnitudes(weights), mask, target, layerwise=True),
}


def prune(strategy: str, weights: dict[str, torch.Tensor], mask: Mask, target: float) -> Mask:
    """The one pruning entry point: the new mask at sparsity `target` (masks only shrink)."""
    return PRUNERS[strategy](weights, mask, target)


def sparsity_at(level: int, schedule: str, rate: float) -> float:
    """The sparsity a schedule reaches at `level` (level 0 is the dense model)."""
    if schedule == "original":  # the paper: each level removes `rate` of the original weights
        return round(level * rate, 10)
    return 1.0 - (1.0 - rate) ** level


def planned_levels(schedule: str, rate: float, max_sparsity: float, last: int | None) -> list[float]:
    """Sparsity of every level to run, level 0 first."""
    plan, level = [], 0
    while sparsity_at(level, schedule, rate) <= max_sparsity + 1e-9 and (last is None or level <= last):
        plan.append(sparsity_at(level, schedule, rate))
        level += 1
    return plan
