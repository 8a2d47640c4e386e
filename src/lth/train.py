"""The one training loop: fine-tune a masked model, resumable, and evaluate it."""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from .batches import TARGETS, Feature, collate, evaluation_order, training_order
from .errors import LthError
from .files import load_checkpoint, save_checkpoint
from .masks import Mask


@dataclass
class Recipe:
    """How one level is trained."""

    batch_size: int
    lr: float
    epochs: float
    weight_decay: float = 0.0
    warmup: float = 0.0
    seed: int = 1
    bf16: bool = False
    max_grad_norm: float = 1.0
    checkpoint_minutes: float = 10.0
    steps: int | None = None  # a fixed number of steps (MLM) instead of epochs

    def total_steps(self, examples: int) -> int:
        return self.steps or math.ceil(self.epochs * self.steps_per_epoch(examples))

    def steps_per_epoch(self, examples: int) -> int:
        return math.ceil(examples / self.batch_size)

    def lr_at(self, step: int, total: int) -> float:
        """Linear warm-up then linear decay to zero over the level's own steps."""
        warm = int(self.warmup * total)
        if step < warm:
            return self.lr * (step + 1) / warm
        return self.lr * max(0.0, (total - step) / max(1, total - warm))


def _optimizer(model: nn.Module, recipe: Recipe) -> torch.optim.AdamW:
    # Decay only matrices (by shape, not by name): biases and LayerNorm stay undecayed, as in BERT.
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": recipe.weight_decay},
              {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=recipe.lr, fused=True)


def _state(model, optimizer, step: int, losses: list[float]) -> dict:
    return {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "step": step,
            "rng": torch.get_rng_state(), "losses": losses}


class Diverged(LthError):
    """Training produced a non-finite loss or weights: the unit cannot become a ticket."""


def model_forward(model: nn.Module, batch: dict, train: bool):
    """The model's own forward: with its targets (and loss) to train, without them to predict."""
    if train:
        return model(**batch)
    return model(**{k: v for k, v in batch.items() if k not in TARGETS})  # no loss: `collect` scores


def mask_factors(model: nn.Module, mask: Mask) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """The weights a step must multiply by their mask, and the masks as factors of their dtype.

    All-ones matrices (level 0, the full model) are left out: multiplying by one costs time, not zeros."""
    params = dict(model.named_parameters())
    pruned = [name for name, m in mask.items() if not m.all()]
    weights = [params[name] for name in pruned]
    return weights, [mask[name].to(w.dtype) for name, w in zip(pruned, weights)]


def finetune(model: nn.Module, mask: Mask, features: list[Feature], recipe: Recipe, pad_id: int,
             checkpoint: Path, start_step: int = 0, desc: str = "train",
             on_step: Callable[[int], None] | None = None,
             prepare: Callable[[dict, int], dict] | None = None, forward: Callable | None = None) -> list[float]:
    """Train `model` with `mask` held fixed (pruned weights stay exactly zero); returns the loss of every step
    taken (resumed ones included).

    Resumes from `checkpoint` when it exists, and writes it every epoch and every few minutes.
    `prepare(batch, step)` changes a batch before the model sees it (MLM masks tokens there);
    `forward(model, batch, train)` replaces the model's forward and must return an object with `.loss`."""
    weights, keep = mask_factors(model, mask)
    optimizer = _optimizer(model, recipe)
    forward = forward or model_forward
    total, per_epoch = recipe.total_steps(len(features)), recipe.steps_per_epoch(len(features))
    step, losses = start_step, []
    torch.manual_seed(recipe.seed)  # dropout
    state = load_checkpoint(checkpoint)
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        torch.set_rng_state(state["rng"])
        step, losses = state["step"], list(state.get("losses", []))
    _multiply_(weights, keep)
    lengths = [len(f["input_ids"]) for f in features]
    model.train()
    saved_at = time.monotonic()
    bar = tqdm(total=total, initial=step, desc=desc, unit="step", dynamic_ncols=True, leave=False)
    while step < total:
        epoch, offset = divmod(step, per_epoch)
        for ids in training_order(lengths, recipe.batch_size, recipe.seed, epoch)[offset:]:
            batch = collate([features[i] for i in ids], pad_id)
            if prepare is not None:
                batch = prepare(batch, step)
            loss = _step(model, optimizer, batch, weights, keep, recipe, recipe.lr_at(step, total), forward)
            if not math.isfinite(loss):
                raise Diverged(f"{desc}: training diverged at step {step + 1} of {total}: the loss is {loss}; "
                               f"lower --lr (it is {recipe.lr:g}) or check --weight-decay and the labels; "
                               "nothing of this unit was saved as finished")
            step += 1
            losses.append(loss)
            bar.update()
            bar.set_postfix(loss=f"{loss:.4f}", refresh=False)
            if on_step is not None:
                on_step(step)
            epoch_end = step % per_epoch == 0 or step == total
            if epoch_end or time.monotonic() - saved_at > 60 * recipe.checkpoint_minutes:
                save_checkpoint(_state(model, optimizer, step, losses), checkpoint)
                saved_at = time.monotonic()
            if step == total:
                break
    bar.close()
    _check_finite(model, desc)
    return losses


@torch.no_grad()
def _check_finite(model: nn.Module, desc: str) -> None:
    """A last step can turn weights into inf/nan without a non-finite loss yet: never keep such a model."""
    for name, p in model.named_parameters():
        if not torch.isfinite(p).all():
            raise Diverged(f"{desc}: training diverged: {name} holds non-finite values after the last step; "
                           "lower --lr or check --weight-decay; nothing of this unit was saved as finished")


def _step(model, optimizer, batch, weights, keep, recipe: Recipe, lr: float, forward: Callable) -> float:
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=recipe.bf16):
        loss = forward(model, batch, True).loss
    loss.backward()
    # Masking gradients before clipping keeps the norm honest and Adam's moments at zero for pruned
    # weights; masking the weights after the step makes "exactly zero" independent of the optimizer.
    grads = [(w.grad, k) for w, k in zip(weights, keep) if w.grad is not None]  # unused weights: no grad
    _multiply_([g for g, _ in grads], [k for _, k in grads])
    nn.utils.clip_grad_norm_(model.parameters(), recipe.max_grad_norm)
    for group in optimizer.param_groups:
        group["lr"] = lr
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    _multiply_(weights, keep)
    return loss.item()


@torch.no_grad()
def _multiply_(tensors: list[torch.Tensor], factors: list[torch.Tensor]) -> None:
    if tensors:  # an empty mask: nothing to keep at zero
        torch._foreach_mul_(tensors, factors)


def logits_rows(batch: dict, output) -> list[np.ndarray]:
    """Classification: one row of logits per example."""
    return list(output.logits.float().numpy())


@torch.inference_mode()
def predict(model: nn.Module, features: list[Feature], pad_id: int, batch_size: int, bf16: bool,
            collect: Callable[[dict, object], list] = logits_rows, desc: str = "eval",
            forward: Callable | None = None) -> list:
    """What `collect` keeps of the model's output for every feature, in the features' order.

    No gradients; batches sorted by length so padding is minimal. `forward` as in `finetune`."""
    forward = forward or model_forward
    model.eval()
    lengths = [len(f["input_ids"]) for f in features]
    out: list = [None] * len(features)
    with tqdm(total=len(features), desc=desc, unit="ex", dynamic_ncols=True, leave=False) as bar:
        for ids in evaluation_order(lengths, batch_size):
            batch = collate([features[i] for i in ids], pad_id)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                output = forward(model, batch, False)
            for i, kept in zip(ids, collect(batch, output)):
                out[i] = kept
            bar.update(len(ids))
    model.train()
    return out
