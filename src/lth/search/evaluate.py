"""Evaluation: what a task keeps of the model's output on every feature, without gradients, in length-sorted
batches, shared between the processes of a group."""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn
from tqdm.auto import tqdm

from ..core.batches import Feature, collate, evaluation_order
from ..core.devices import Ranks, autocast
from ..tasks.classify import logits_rows
from .train import model_forward


def predict(model: nn.Module, features: list[Feature], pad_id: int, batch_size: int, precision: str = "fp32",
            collect: Callable[[dict, object], list] = logits_rows, desc: str = "eval",
            forward: Callable | None = None, ranks: Ranks | None = None) -> list:
    """What `collect` keeps of the model's output for every feature, in the features' order.

    No gradients; batches sorted by length so padding is minimal. `forward` as in `finetune`. Several processes
    each take every world-th batch and share what they kept. A batch that does not fit the device's memory is
    halved until it does."""
    ranks = ranks or Ranks()
    while True:
        try:
            return _predict(model, features, pad_id, batch_size, precision, collect, desc, forward, ranks)
        except torch.OutOfMemoryError:
            if batch_size == 1:
                raise
            batch_size //= 2
            if ranks.device.type == "cuda":
                torch.cuda.empty_cache()
            tqdm.write(f"{desc}: out of memory, evaluating in batches of {batch_size}")


@torch.inference_mode()
def _predict(model, features, pad_id, batch_size, precision, collect, desc, forward, ranks: Ranks) -> list:
    forward = forward or model_forward
    model.to(ranks.device)
    model.eval()
    lengths = [len(f["input_ids"]) for f in features]
    mine = evaluation_order(lengths, batch_size)[ranks.rank::ranks.world]
    kept: list = []
    with tqdm(total=sum(map(len, mine)), desc=desc, unit="ex", dynamic_ncols=True, leave=False,
              disable=not ranks.main or None) as bar:
        for ids in mine:
            batch = {k: v.to(ranks.device) for k, v in collate([features[i] for i in ids], pad_id).items()}
            with autocast(ranks.device, precision):
                output = forward(model, batch, False)
            cpu = {k: v.cpu() for k, v in batch.items()}
            kept += zip(ids, collect(cpu, _to_cpu(output)))
            bar.update(len(ids))
    model.train()
    out: list = [None] * len(features)
    for part in ranks.gather(kept):
        for i, value in part:
            out[i] = value
    return out


def _to_cpu(output):
    """A model output (a ModelOutput or a namespace of tensors) with its tensors on the CPU, for `collect`."""
    if isinstance(output, dict):
        return type(output)(**{k: v.cpu() if isinstance(v, torch.Tensor) else v for k, v in output.items()})
    fields = {k: v.cpu() if isinstance(v, torch.Tensor) else v for k, v in vars(output).items()}
    return type(output)(**fields)
