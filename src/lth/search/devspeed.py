"""`lth speed --data`: every engine that `lth speed` times, scored on the ticket's own dev set, so that a speed is
read next to what it costs in the metric; OpenVINO's int8 model is then calibrated on the task's own training
sentences."""
from __future__ import annotations

import dataclasses
from pathlib import Path
from types import SimpleNamespace
from typing import Callable

import torch
from torch import nn

from ..core.batches import collate
from ..core.errors import LthError
from ..core.files import load_json
from ..engine.bench import first_output
from ..run.settings import FindSettings
from ..tasks import TASK_NAMES, build_task
from ..tasks.base import Task
from .evaluate import predict

EVAL_BATCH = next(f.default for f in dataclasses.fields(FindSettings) if f.name == "eval_batch_size")
CALIBRATION = 100  # training sentences NNCF calibrates OpenVINO's int8 model on, one a batch, as a user would


def ticket_task(export: Path, data: str | None) -> Task:
    """The classification task an export was trained on (ticket.json's), its data read from `data`."""
    info = load_json(export / "ticket.json") if (export / "ticket.json").is_file() else {}
    name = info.get("task")
    if name not in TASK_NAMES:
        raise LthError(f"{export} is not an export of a GLUE or demo classification task (its task: {name!r}): "
                       "--data scores only those; leave --data out to time it")
    settings = SimpleNamespace(task=name, data=None if name == "bbc" else data, eval=None, text_column="text",
                               text_pair_column=None, label_column="label", train_limit=None, eval_limit=None,
                               seed=info.get("recipe", {}).get("seed", 0))
    return build_task(settings)


def calibration_batches(task: Task, tokenizer, max_length: int, keys: list[str]) -> list[dict]:
    """The first CALIBRATION training examples of the task, one a batch, with the inputs the engines take."""
    return [_inputs(collate([f], tokenizer.pad_token_id or 0), keys)
            for f in task.train_features(tokenizer, max_length)[:CALIBRATION]]


def dev_metrics(runs: dict[str, Callable], task: Task, tokenizer, max_length: int, keys: list[str],
                batch_size: int = EVAL_BATCH) -> dict[str, dict[str, float]]:
    """engine -> its metrics on the task's evaluation splits (each engine's first output read as the logits), in
    the batches lth's own evaluation makes, so that torch fp32 scores what `lth export` measured."""
    features = task.eval_features(tokenizer, max_length)
    found = {}
    for name, run in runs.items():
        def forward(model, batch, train, run=run):
            return SimpleNamespace(logits=torch.from_numpy(first_output(run(_inputs(batch, keys)))))
        metrics: dict[str, float] = {}
        for split, feats in features.items():
            outputs = predict(nn.Module(), feats, tokenizer.pad_token_id or 0, batch_size, "fp32", task.collect,
                              desc=f"{name} on {split}", forward=forward)
            metrics.update(task.score(split, outputs))
        found[name] = metrics
    return found


def metrics_table(found: dict[str, dict[str, float]], task: Task, reference: str = "torch fp32") -> str:
    """Each engine's primary dev metric and how many points it lies from the reference engine's."""
    primary, scale = task.primary, 1 if task.percent else 100
    lines = [f"dev set ({primary}; points against {reference}):"]
    for name, metrics in found.items():
        moved = (metrics[primary] - found[reference][primary]) * scale
        lines.append(f"  {name:<28} {metrics[primary]:9.4f} {moved:+8.2f}")
    return "\n".join(lines)


def _inputs(batch: dict, keys: list[str]) -> dict[str, torch.Tensor]:
    """The inputs the engines were built with (an ONNX graph takes exactly those), zeros for a missing one."""
    return {k: batch[k] if k in batch else torch.zeros_like(batch["input_ids"]) for k in keys}

