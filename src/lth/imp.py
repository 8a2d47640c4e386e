"""The trunk: iterative magnitude pruning with rewinding, resumable level by level."""
from __future__ import annotations

import os
import re
import time
from pathlib import Path

import torch
from safetensors.torch import load_model as load_weights, save_model as save_weights
from tqdm.auto import tqdm

from . import masks
from .config import FindSettings, find_settings
from .errors import LthError
from .models import load_tokenizer, prunable_weights
from .pruning import planned_levels, prune, sparsity_at
from .report import level_line, table
from .runs import atomic_path, level_dir, load_json, save_json
from .tasks import load_task
from .tasks.classify import ClassificationTask
from .tasks.mlm import MaskedLMTask
from .tasks.squad import SquadTask
from .train import Recipe, finetune, predict


def find(settings: FindSettings | None = None, **overrides) -> dict:
    """Run (or resume) a ticket search; returns the summary also written to the run's summary.json."""
    s = settings or find_settings(**overrides)
    torch.set_num_threads(s.threads or os.cpu_count() or 1)
    task = build_task(s)
    tokenizer = load_tokenizer(s.model)
    run = Path(s.runs_dir) / f"{_slug(task.name)}-{_slug(s.model)}-{s.digest()}"
    say(f"run {run}")
    model = task.load_model(s.model, s.seed)
    weights = prunable_weights(model, s.include, s.exclude)
    for note in task.notes:
        say(f"note: {note}")
    save_json({"settings": s.to_dict(), "sizes": task.sizes(), "notes": task.notes}, run / "settings.json")
    _restore_or_save(model, run / "init.safetensors")
    total = sum(w.numel() for w in weights.values())
    say(f"model {s.model}: {len(weights)} prunable matrices, {total:,} weights "
        f"of {sum(p.numel() for p in model.parameters()):,} parameters")
    trunk = Trunk(s, task, tokenizer, model, weights, run)
    for level, _ in enumerate(planned_levels(s.schedule, s.rate, s.max_sparsity, s.levels)):
        trunk.run_level(level)
    summary = trunk.summary()
    save_json(summary, run / "summary.json")
    print(table(summary))
    print(f"run directory: {run}")
    return summary


def build_task(s: FindSettings):
    """The task object the trunk drives: features, a model with its head, and a score."""
    if s.task == "squad":
        return SquadTask(s.data, s.eval, s.split_articles, s.doc_stride, s.train_limit, s.eval_limit)
    if s.task == "mlm":
        return MaskedLMTask(s.data, s.eval, s.seed, s.train_limit, s.eval_limit)
    data = load_task(s.task, s.data, s.eval, text_column=s.text_column, pair_column=s.text_pair_column,
                     label_column=s.label_column, train_limit=s.train_limit, eval_limit=s.eval_limit,
                     seed=s.seed)
    return ClassificationTask(data)


class Trunk:
    """One IMP run on disk: level_NN/{mask.safetensors, metrics.json, checkpoint.pt}."""

    def __init__(self, s: FindSettings, task, tokenizer, model, weights, run: Path):
        self.s, self.task, self.model, self.weights, self.run = s, task, model, weights, run
        self.pad_id = tokenizer.pad_token_id or 0
        self.recipe = Recipe(batch_size=s.batch_size, lr=s.lr, epochs=s.epochs, weight_decay=s.weight_decay,
                             warmup=s.warmup, seed=s.seed, bf16=s.precision == "bf16",
                             checkpoint_minutes=s.checkpoint_minutes, steps=s.steps)
        self.train = task.train_features(tokenizer, s.max_length)
        self.evals = task.eval_features(tokenizer, s.max_length)
        if s.rewind_step >= self.recipe.total_steps(len(self.train)):
            raise LthError(f"--rewind-step {s.rewind_step} is not inside level 0's "
                           f"{self.recipe.total_steps(len(self.train))} training steps; choose a smaller step")

    def run_level(self, level: int) -> None:
        where = level_dir(self.run, level)
        if (where / "metrics.json").exists():
            return
        mask = self.mask(level)
        started = time.monotonic()
        rewind(self.model, self.run / ("init.safetensors" if level == 0 else self.rewind_file()), mask, self.weights)
        start = 0 if level == 0 else self.s.rewind_step
        finetune(self.model, mask, self.train, self.recipe, self.pad_id, where / "checkpoint.pt",
                 start_step=start, desc=f"level {level} train", on_step=self._rewind_hook(level),
                 prepare=getattr(self.task, "prepare", None))
        metrics = self.evaluate(level)
        self.save_next_mask(level, mask)
        record = {"level": level, "sparsity": masks.sparsity(mask), "metrics": metrics,
                  "seconds": round(time.monotonic() - started, 1)}
        save_json(record, where / "metrics.json")
        (where / "checkpoint.pt").unlink(missing_ok=True)  # hundreds of MB, no longer needed
        say(level_line(record))

    def mask(self, level: int) -> masks.Mask:
        path = level_dir(self.run, level) / "mask.safetensors"
        if level == 0 and not path.exists():
            masks.save(masks.ones(self.weights), path, {"level": 0})
        mask = masks.load(path)
        masks.check(mask, self.weights, str(path))
        return mask

    def save_next_mask(self, level: int, mask: masks.Mask) -> None:
        # Written even past the planned last level, so asking for more sparsity later resumes from here.
        target = sparsity_at(level + 1, self.s.schedule, self.s.rate)
        if target < 1:
            new = prune(self.s.strategy, self.weights, mask, target)
            for name, density in masks.nearly_empty(new).items():
                say(f"warning: level {level + 1} keeps {density:.1%} of {name}: global magnitude ranks the whole "
                    "matrix lowest, which cuts the layer out and can collapse the model; if unintended, rerun "
                    "with --exclude on its name or --strategy layerwise")
            masks.save(new, level_dir(self.run, level + 1) / "mask.safetensors",
                       {"level": level + 1, "model": self.s.model, "strategy": self.s.strategy})

    def evaluate(self, level: int) -> dict[str, float]:
        metrics = {}
        for split, feats in self.evals.items():
            outputs = predict(self.model, feats, self.pad_id, self.s.eval_batch_size, self.recipe.bf16,
                              self.task.collect, desc=f"level {level} eval {split}")
            metrics.update(self.task.score(split, outputs))
        return metrics

    def rewind_file(self) -> str:
        return "init.safetensors" if self.s.rewind_step == 0 else f"rewind_step_{self.s.rewind_step}.safetensors"

    def _rewind_hook(self, level: int):
        if level != 0 or self.s.rewind_step == 0:
            return None
        path, at = self.run / self.rewind_file(), self.s.rewind_step

        def save_rewind_point(step: int) -> None:
            if step == at:
                _save_atomic(self.model, path)
        return save_rewind_point

    def summary(self) -> dict:
        levels = [load_json(p) for p in sorted(self.run.glob("level_*/metrics.json"))]
        return {"run": str(self.run), "task": self.task.name, "model": self.s.model,
                "primary": self.task.primary, "metrics": self.task.metric_names,
                "prunable_weights": sum(w.numel() for w in self.weights.values()),
                "prunable_matrices": len(self.weights), "levels": levels}


def rewind(model, point: Path, mask: masks.Mask, weights: dict) -> None:
    """Reset every weight, encoder and head, to the rewind point; pruned weights become zero."""
    load_weights(model, point)
    masks.apply_(weights, mask)


def _restore_or_save(model, path: Path) -> None:
    """The rewind point θ0 (encoder and new head) is created once, then always read back from disk."""
    if path.exists():
        load_weights(model, path)
    else:
        _save_atomic(model, path)


def _save_atomic(model, path: Path) -> None:
    with atomic_path(path) as tmp:
        save_weights(model, str(tmp))


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", Path(text).stem)[:40]


def say(line: str) -> None:
    tqdm.write(line)
