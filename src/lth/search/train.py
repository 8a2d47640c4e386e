"""The one training loop: fine-tune a masked model, resumable after any interruption (evaluation: `evaluate.py`)."""
from __future__ import annotations

import contextlib
import functools
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch import nn
from tqdm.auto import tqdm

from ..core.batches import ROW, TARGETS, Feature, collate, training_order
from ..core.devices import Ranks, autocast
from ..core.dropout import bits_dropout
from ..core.errors import LthError
from ..core.files import writing
from ..core.masks import Mask
from ..core.tensors import load_checkpoint, save_checkpoint


@dataclass
class Recipe:
    """How one level is trained."""

    batch_size: int
    lr: float
    epochs: float
    weight_decay: float = 0.0
    warmup: float = 0.0
    seed: int = 1
    precision: str = "fp32"  # fp32, bf16 (autocast) or fp16 (autocast and a gradient scaler)
    max_grad_norm: float = 1.0
    checkpoint_minutes: float = 10.0
    steps: int | None = None  # a fixed number of steps (MLM) instead of epochs
    grad_accum: int = 1  # micro-batches per optimizer step: the batch is the same, memory is a fraction
    fast_dropout: bool = False  # dropout masks from random bits (core.dropout)

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


def _optimizer(model: nn.Module, recipe: Recipe, device: torch.device) -> torch.optim.AdamW:
    # Decay only matrices (by shape, not by name): biases and LayerNorm stay undecayed, as in BERT.
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": recipe.weight_decay},
              {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=recipe.lr, fused=device.type in ("cpu", "cuda"))


def _state(model, optimizer, step: int, losses: list[float], ranks: Ranks) -> dict:
    """What a resumed unit needs, as CPU tensors (a run started on a GPU resumes on a CPU); every process's
    random state (dropout), so a resumed group continues as the uninterrupted one would."""
    rng = ranks.gather(_rng())
    return {"model": _cpu(model.state_dict()), "optimizer": _cpu(optimizer.state_dict()), "step": step,
            "rng": rng[0]["cpu"], "rngs": rng, "losses": losses, "processes": ranks.world}


def _rng() -> dict:
    state = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def _cpu(obj):
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu()
    if isinstance(obj, dict):
        return {k: _cpu(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_cpu(v) for v in obj)
    return obj


def _restore_rng(state: dict, ranks: Ranks) -> None:
    mine = state.get("rngs", [{"cpu": state["rng"]}])
    rng = mine[ranks.rank] if len(mine) == ranks.world else mine[0]  # another number of processes: rank 0's
    torch.set_rng_state(rng["cpu"])
    if "cuda" in rng and ranks.device.type == "cuda":
        torch.cuda.set_rng_state(rng["cuda"])


class Diverged(LthError):
    """Training produced a non-finite loss or weights: the unit cannot become a ticket."""


def model_forward(model: nn.Module, batch: dict, train: bool):
    """The model's own forward: with its targets (and loss) to train, without them to predict."""
    if train:
        return model(**{k: v for k, v in batch.items() if k != ROW})
    return model(**{k: v for k, v in batch.items() if k not in TARGETS and k != ROW})  # no loss: `collect` scores


class _Loss(nn.Module):
    """The training loss as a module's forward, so several processes can wrap it in DDP whatever the task's
    forward calls inside (MLM runs its head on the masked positions only)."""

    def __init__(self, model: nn.Module, forward: Callable):
        super().__init__()
        self.model, self.task_forward = model, forward

    def forward(self, batch: dict) -> torch.Tensor:
        return self.task_forward(self.model, batch, True).loss


def mask_factors(model: nn.Module, mask: Mask) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """The weights a step must multiply by their mask, and the masks as factors of their dtype (on their device).

    All-ones matrices (level 0, the full model) are left out: multiplying by one costs time, not zeros."""
    params = dict(model.named_parameters())
    pruned = [name for name, m in mask.items() if not m.all()]
    weights = [params[name] for name in pruned]
    return weights, [mask[name].to(device=w.device, dtype=w.dtype) for name, w in zip(pruned, weights)]


def _dropout_from_bits(train: Callable) -> Callable:
    """`train(model, mask, features, recipe, ...)` with recipe.fast_dropout: dropout draws its masks from random
    bits while it trains (core.dropout), and the model is as it was afterwards."""
    @functools.wraps(train)
    def wrapped(model: nn.Module, mask: Mask, features: list[Feature], recipe: Recipe, *args, **kwargs):
        with bits_dropout(model, recipe.fast_dropout):
            return train(model, mask, features, recipe, *args, **kwargs)
    return wrapped


@_dropout_from_bits
def finetune(model: nn.Module, mask: Mask, features: list[Feature], recipe: Recipe, pad_id: int,
             checkpoint: Path, start_step: int = 0, desc: str = "train",
             on_step: Callable[[int], None] | None = None,
             prepare: Callable[[dict, int], dict] | None = None, forward: Callable | None = None,
             ranks: Ranks | None = None, drawer=None) -> list[float]:
    """Train `model` with `mask` held fixed (pruned weights stay exactly zero); returns the loss of every step
    taken (resumed ones included).

    Resumes from `checkpoint` when it exists, and writes it every epoch and every few minutes.
    `prepare(batch, step)` changes a batch before the model sees it (MLM masks tokens there);
    `forward(model, batch, train)` replaces the model's forward and must return an object with `.loss`.
    With several `ranks`, each process trains on its rows of every global batch (DDP averages the gradients);
    the step is the same as one process taking the whole batch. `drawer` (search.draws) watches every step and may
    prune further (gradual); its state is saved in the checkpoint."""
    ranks = ranks or Ranks()
    model.to(ranks.device)
    weights, keep = mask_factors(model, mask)
    optimizer = _optimizer(model, recipe, ranks.device)
    loss_of = _Loss(model, forward or model_forward)
    if ranks.world > 1:
        loss_of = nn.parallel.DistributedDataParallel(loss_of, find_unused_parameters=True,
                                                      device_ids=[ranks.device] if ranks.device.type == "cuda" else None)
    scaler = torch.amp.GradScaler(ranks.device.type) if recipe.precision == "fp16" else None
    total, per_epoch = recipe.total_steps(len(features)), recipe.steps_per_epoch(len(features))
    step, losses = start_step, []
    torch.manual_seed(recipe.seed)  # dropout
    state = load_checkpoint(checkpoint)
    if state is not None and state.get("processes", ranks.world) != ranks.world:
        tqdm.write(f"note: {checkpoint} was trained by {state['processes']} processes, this run has {ranks.world}: "
                   "their dropout and batch splits differ, so the unit starts over instead of mixing them")
        state = None
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        _restore_rng(state, ranks)
        step, losses = state["step"], list(state.get("losses", []))
        if drawer is not None:
            drawer.restore(state.get("drawer"))
    if drawer is not None and drawer.mask is not None:  # pruned further before the interruption
        weights, keep = mask_factors(model, drawer.mask)
    _multiply_(weights, keep)
    lengths = [len(f["input_ids"]) for f in features]
    model.train()
    saved_at = time.monotonic()
    bar = tqdm(total=total, initial=step, desc=desc, unit="step", dynamic_ncols=True, leave=False,
               disable=not ranks.main or None)
    while step < total:
        epoch, offset = divmod(step, per_epoch)
        for ids in training_order(lengths, recipe.batch_size, recipe.seed, epoch)[offset:]:
            batch = collate([features[i] for i in ids], pad_id)
            if prepare is not None:
                batch = prepare(batch, step)
            loss = _step(loss_of, optimizer, scaler, batch, weights, keep, recipe, recipe.lr_at(step, total), ranks)
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
            if drawer is not None and drawer.after_step(step):  # pruned: the step's weights to keep at zero change
                weights, keep = mask_factors(model, drawer.mask)
                _multiply_(weights, keep)
            due = step % per_epoch == 0 or step == total or time.monotonic() - saved_at > 60 * recipe.checkpoint_minutes
            if ranks.broadcast(due):  # the main process's clock decides, so every process saves at the same step
                state = _state(model, optimizer, step, losses, ranks)  # every process: it gathers their RNGs
                if drawer is not None:
                    state["drawer"] = drawer.state()
                if writing():
                    save_checkpoint(state, checkpoint)
                saved_at = time.monotonic()
            if step == total:
                break
    bar.close()
    _check_finite(model, desc)
    return losses


def loss_elements(batch: dict) -> int:
    """How many terms the model's mean loss averages: labelled tokens for MLM, examples otherwise."""
    labels = batch.get("labels")
    if labels is not None and labels.dim() > 1:
        return int((labels != -100).sum())
    return len(batch["input_ids"])


def _pieces(batch: dict, ranks: Ranks, accum: int) -> list[tuple[dict, float]]:
    """This process's micro-batches of a global batch, each with the share of the global loss it carries.

    Rows are split into world x accum near-equal parts; each part is trimmed to its own longest row. A process
    whose parts are empty (a short last batch) still runs one row with weight 0, so DDP's reductions meet."""
    rows = len(batch["input_ids"])
    total = max(1, loss_elements(batch))
    parts = torch.tensor_split(torch.arange(rows), ranks.world * accum)[ranks.rank * accum:(ranks.rank + 1) * accum]
    pieces = []
    for part in parts:
        weight = 1.0
        if len(part) == 0:
            part, weight = torch.arange(1), 0.0
        piece = {k: v[part] for k, v in batch.items()}
        width = int(piece["attention_mask"].sum(1).max())
        piece = {k: v[:, :width] if v.dim() > 1 and v.shape[1] == batch["attention_mask"].shape[1] else v
                 for k, v in piece.items()}
        share = loss_elements(piece) / total if rows > len(part) else 1.0
        pieces.append((piece, weight * share))
    return pieces


def _step(loss_of, optimizer, scaler, batch, weights, keep, recipe: Recipe, lr: float, ranks: Ranks) -> float:
    pieces = _pieces(batch, ranks, recipe.grad_accum)
    # summed on the device, in float64 as Python's floats were (MPS has no float64): one host sync a step
    carried = torch.zeros((), dtype=torch.float32 if ranks.device.type == "mps" else torch.float64, device=ranks.device)
    for i, (piece, share) in enumerate(pieces):
        piece = {k: v.to(ranks.device) for k, v in piece.items()}
        last = i == len(pieces) - 1
        with (loss_of.no_sync() if ranks.world > 1 and not last else contextlib.nullcontext()):
            with autocast(ranks.device, recipe.precision):
                loss = loss_of(piece)
            # DDP averages gradients over the processes: scaling by the world size makes them a sum of shares
            scaled = loss * (share * ranks.world) if share != 1.0 or ranks.world > 1 else loss
            (scaler.scale(scaled) if scaler else scaled).backward()
        carried += loss.detach().to(carried.dtype) * share
    if scaler:
        scaler.unscale_(optimizer)
    # Masking gradients before clipping keeps the norm honest and Adam's moments at zero for pruned
    # weights; masking the weights after the step makes "exactly zero" independent of the optimizer.
    grads = [(w.grad, k) for w, k in zip(weights, keep) if w.grad is not None]  # unused weights: no grad
    _multiply_([g for g, _ in grads], [k for _, k in grads])
    nn.utils.clip_grad_norm_(loss_of.parameters(), recipe.max_grad_norm)
    for group in optimizer.param_groups:
        group["lr"] = lr
    if scaler:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    _multiply_(weights, keep)
    return ranks.total(carried)


@torch.no_grad()
def _check_finite(model: nn.Module, desc: str) -> None:
    """A last step can turn weights into inf/nan without a non-finite loss yet: never keep such a model."""
    for name, p in model.named_parameters():
        if not torch.isfinite(p).all():
            raise Diverged(f"{desc}: training diverged: {name} holds non-finite values after the last step; "
                           "lower --lr or check --weight-decay; nothing of this unit was saved as finished")


@torch.no_grad()
def _multiply_(tensors: list[torch.Tensor], factors: list[torch.Tensor]) -> None:
    if tensors:  # an empty mask: nothing to keep at zero
        torch._foreach_mul_(tensors, factors)
