"""The paper's baselines as pure building blocks: random masks, one-shot masks of θ0, random re-initialisation.

Standard pruning (IMP without rewinding) is a trunk option, not a function here.
"""
from __future__ import annotations

import torch
from torch import nn

from .errors import LthError
from .masks import Mask, ones
from .pruning import PRUNERS, prune, random_scores, select


def random_mask(weights: dict[str, torch.Tensor], sparsity: float, seed: int) -> Mask:
    """A uniformly random mask pruning exactly round(sparsity * total) weights, pooled over all matrices."""
    return select(random_scores(weights, seed), ones(weights), sparsity)


def oneshot_mask(theta0_weights: dict[str, torch.Tensor], sparsity: float, strategy: str = "global") -> Mask:
    """Magnitude pruning of the pre-trained weights straight to `sparsity`, in one step."""
    if strategy not in PRUNERS:
        raise LthError(f"unknown pruning strategy '{strategy}'; use one of: {', '.join(PRUNERS)}")
    return prune(strategy, theta0_weights, ones(theta0_weights), sparsity)


@torch.no_grad()
def reinitialize_(model: nn.Module, seed: int) -> None:
    """Re-draw every parameter of a Hugging Face model (encoder and head) from its own init, seeded."""
    if not hasattr(model, "_init_weights"):
        raise LthError(f"random re-initialisation needs a Hugging Face model; {type(model).__name__} has no "
                       "_init_weights; load the model with lth.core.models.load_model")
    before = _checksums(model)
    _forget_loaded(model)
    with torch.random.fork_rng():  # the caller's random stream (data order, dropout) stays as it was
        torch.manual_seed(seed)
        _run_init(model)
    stale = [name for name, value in _checksums(model).items() if value == before[name]]
    if stale:
        raise LthError(f"random re-initialisation left {len(stale)} weight matrices unchanged (e.g. {stale[0]}): "
                       f"the init of {type(model).__name__} does not cover them; leave the random-reinit "
                       "baseline out for this model, or report the model type")


def _forget_loaded(model: nn.Module) -> None:
    """Clear transformers' "already initialised" flags.

    transformers 5 sets `_is_hf_initialized` on every loaded tensor and module, and its init (even
    `init_weights()` or `apply(_init_weights)`) silently skips flagged ones: without this it changes nothing."""
    for obj in (*model.modules(), *model.parameters(), *model.buffers()):
        if getattr(obj, "_is_hf_initialized", False):
            obj._is_hf_initialized = False


def _run_init(model: nn.Module) -> None:
    if hasattr(model, "initialize_weights"):  # newer transformers: dispatches each sub-model's own _init_weights
        model.initialize_weights()
    else:
        model.apply(model._init_weights)


def _checksums(model: nn.Module) -> dict[str, float]:
    """One float64 sum per linear/embedding weight: a fresh random draw never reproduces it."""
    return {f"{name}.weight": float(module.weight.sum(dtype=torch.float64)) for name, module in model.named_modules()
            if isinstance(module, (nn.Linear, nn.Embedding)) and module.weight is not None}
