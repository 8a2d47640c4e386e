"""The ticket search: iterative magnitude pruning with rewinding, and the seeds and baselines that judge it.

Everything is a unit of work with a folder on disk; a unit is done when its metrics.json exists."""
from __future__ import annotations

import os
import re
import time
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from tqdm.auto import tqdm

from . import masks
from .baselines import oneshot_mask, random_mask, reinitialize_
from .config import FindSettings, find_settings
from .errors import LthError
from .files import (CHECKSUM, DamagedFile, load_into, load_json, load_tensors, save_json, save_model, sweep,
                    verify_tensors)
from .metrics import undefined_note
from .models import check_max_length, load_tokenizer, prunable_weights
from .pruning import planned_levels, prune, sparsity_at
from .report import level_line, table
from .runs import Claim, branch_dir, check_run, collect_results, judged_on_disk, level_dir, read_record
from .tasks import load_task
from .tasks.classify import ClassificationTask
from .tasks.mlm import MaskedLMTask
from .tasks.squad import SquadTask
from .train import Recipe, finetune, predict
from .verdict import format_verdict_table, verdict


def find(settings: FindSettings | None = None, **overrides) -> dict:
    """Run (or resume) a ticket search, and its seeds and baselines when asked for.

    Returns the summary also written to the run's summary.json. Several processes given the same settings
    share the work: each trains what nobody else is training (see `Search.work`)."""
    s = settings or find_settings(**overrides)
    torch.set_num_threads(s.threads or os.cpu_count() or 1)
    task = build_task(s)
    tokenizer = load_tokenizer(s.model)
    data = task.fingerprint()
    run = Path(s.runs_dir) / f"{_slug(task.name)}-{_slug(s.model)}-{s.digest(data)}"
    say(f"run {run}")
    model = task.load_model(s.model, s.seed)
    check_max_length(s.max_length, model, tokenizer, s.model)
    weights = prunable_weights(model, s.include, s.exclude)
    for note in task.notes:
        say(f"note: {note}")
    search = Search(s, task, tokenizer, model, weights, run)  # checks everything before a file is written
    previous = _previous_settings(run, data)
    _note_other_data(run, s, data)
    for leftover in sweep(run) if run.exists() else []:
        say(f"removed {leftover}, left by an interrupted writer")
    init = _restore_or_save(model, run / "init.safetensors", previous.get("init_sha256"))
    check_run(run)
    search.mask(0)  # the all-ones mask: written now if it is missing (a fresh run, or deleted as damaged)
    save_json({"settings": s.to_dict(), "sizes": task.sizes(), "notes": task.notes, "primary": task.primary,
               "metrics": task.metric_names, "judged_levels": search.judged, "data_fingerprint": data,
               "settings_digest": s.digest(data=""), "init_sha256": init}, run / "settings.json")
    total = sum(w.numel() for w in weights.values())
    say(f"model {s.model}: {len(weights)} prunable matrices, {total:,} weights "
        f"of {sum(p.numel() for p in model.parameters()):,} parameters")
    search.work(search.units())
    summary = search.summary()
    save_json(summary, run / "summary.json")
    print(table(summary))
    if "verdict" in summary and (len(search.seeds) > 1 or search.baselines):
        print()
        print(format_verdict_table(summary["results"], task.metric_names, task.primary))
    print(f"run directory: {run}")
    return summary


SETTINGS_RECORD = {"settings": dict, "primary": str, "metrics": list}


def _previous_settings(run: Path, data: str) -> dict:
    """What the run recorded when it began; refuses to continue it on other data."""
    path = run / "settings.json"
    if not path.exists():
        return {}
    previous = load_json(path, SETTINGS_RECORD)
    if previous.get("data_fingerprint", data) != data:
        raise LthError(f"{run} was trained on other data (fingerprint {previous['data_fingerprint']}, now {data}); "
                       "a run continues only on the data it began with: restore that data, or move the run away")
    return previous


def _note_other_data(run: Path, s: FindSettings, data: str) -> None:
    """Say so when the same settings already have a run on different data (the files at a path changed)."""
    if run.exists():
        return
    for other in sorted(run.parent.glob(f"{run.name.rsplit('-', 1)[0]}-*/settings.json")):
        try:
            info = load_json(other)
        except (DamagedFile, OSError):
            continue
        if info.get("settings_digest") == s.digest(data="") and info.get("data_fingerprint") != data:
            say(f"note: {other.parent} has the same settings on other data (the files changed since?); "
                "this is a new run on the data as it is now")


def build_task(s: FindSettings):
    """The task object the trunk drives: features, a model with its head, and a score."""
    if s.task == "squad":
        return SquadTask(s.data, s.eval, s.split_articles, s.doc_stride, s.train_limit, s.eval_limit)
    if s.task == "mlm":
        return MaskedLMTask(s.data, s.eval, s.seed, s.train_limit, s.eval_limit, s.text_column)
    data = load_task(s.task, s.data, s.eval, text_column=s.text_column, pair_column=s.text_pair_column,
                     label_column=s.label_column, train_limit=s.train_limit, eval_limit=s.eval_limit,
                     seed=s.seed)
    return ClassificationTask(data)


@dataclass
class Unit:
    """One model to train and evaluate: a level of the search itself ("trunk"), or a seed or baseline of a level.

    Done when where/metrics.json exists; ready to start when every file in `needs` exists."""

    kind: str
    level: int
    seed: int
    where: Path
    needs: tuple[Path, ...] = ()

    @property
    def done(self) -> bool:
        return (self.where / "metrics.json").exists()

    def ready(self) -> bool:
        return all(p.exists() for p in self.needs)

    def __str__(self) -> str:
        return f"level {self.level} {self.kind} seed {self.seed}"


class Search:
    """One run on disk: the IMP levels (level_NN/) and their branches (branches/<kind>/seed_S/level_NN/).

    Every unit goes through the same rewind -> finetune -> evaluate -> metrics.json path."""

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
        chosen = s.chosen_levels()
        self.plan = planned_levels(s.schedule, s.rate, s.max_sparsity, max(chosen) if chosen else None)
        beyond = [level for level in chosen or [] if level >= len(self.plan)]
        if beyond:  # refused before anything is written: a finished run's summary stays as it was
            raise LthError(f"--levels {s.levels}: level {', '.join(map(str, beyond))} is beyond --max-sparsity "
                           f"{s.max_sparsity} (level {len(self.plan) - 1} reaches {self.plan[-1]:.1%}); raise "
                           "--max-sparsity or choose lower levels")
        self.judged = [level for level in (chosen if chosen is not None else range(len(self.plan)))
                       if 0 < level < len(self.plan)]
        self.seeds, self.baselines = s.seed_list(), s.baseline_names()

    # -- what to train ---------------------------------------------------------------------------------
    def units(self) -> list[Unit]:
        """Every unit of the run, in an order where each one's inputs come from units before it.

        The search's own levels come first: they are the critical path when several processes share a run."""
        first, others = self.seeds[0], self.seeds[1:]
        units = [Unit("trunk", level, first, level_dir(self.run, level),
                      (level_dir(self.run, level - 1) / "metrics.json",) if level else ())
                 for level in range(len(self.plan))]
        units += [Unit("full", 0, seed, branch_dir(self.run, "full", seed, 0)) for seed in others]
        standard = "standard" in self.baselines
        if standard:
            units += [Unit("standard", 0, seed, branch_dir(self.run, "standard", seed, 0))
                      for seed in self.seeds
                      if self._dense_final(seed).parent == branch_dir(self.run, "standard", seed, 0)]
        # Kind by kind over all judged levels: an interrupted run has whole columns of the verdict table.
        units += [Unit("imp", level, seed, branch_dir(self.run, "imp", seed, level), self._trunk_mask(level))
                  for level in self.judged for seed in others]
        for kind in self.baselines:
            if kind != "standard":
                units += [Unit(kind, level, seed, branch_dir(self.run, kind, seed, level),
                               self._trunk_mask(level) if kind == "random-reinit" else ())
                          for level in self.judged for seed in self.seeds]
        if standard:  # a chain per seed: every level up to the highest judged one, judged or not
            for level in range(1, max(self.judged, default=0) + 1):
                units += [Unit("standard", level, seed, branch_dir(self.run, "standard", seed, level),
                               (self._previous_final(seed, level),)) for seed in self.seeds]
        return units

    def _trunk_mask(self, level: int) -> tuple[Path]:
        return (level_dir(self.run, level) / "mask.safetensors",)

    def _dense_final(self, seed: int) -> Path:
        """The fine-tuned dense weights that seed's standard-pruning chain starts from.

        They are saved by the dense run of that seed; a dense run finished before standard pruning was
        asked for did not keep them, and is trained again under branches/standard/seed_S/level_00."""
        dense = level_dir(self.run, 0) if seed == self.seeds[0] else branch_dir(self.run, "full", seed, 0)
        if (dense / "metrics.json").exists() and not (dense / "final.safetensors").exists():
            dense = branch_dir(self.run, "standard", seed, 0)
        return dense / "final.safetensors"

    def _previous_final(self, seed: int, level: int) -> Path:
        if level == 1:
            return self._dense_final(seed)
        return branch_dir(self.run, "standard", seed, level - 1) / "final.safetensors"

    def work(self, units: list[Unit], poll_seconds: float = 10.0) -> None:
        """Train every unit not done yet. A unit another process is training is left to it; when nothing
        can start, wait for the others. A finished unit is never trained again."""
        said = None
        while todo := [u for u in units if not u.done]:
            for unit in todo:
                claim = Claim(unit.where)
                if unit.ready() and claim.acquire():
                    try:
                        if not unit.done:  # finished by another process between the check and the claim
                            sweep(unit.where)  # what a killed writer of this unit left (we hold its claim)
                            say(f"{unit}: training ({len(units) - len(todo)} of {len(units)} units done)")
                            self.run_unit(unit)
                    finally:
                        claim.release()
                    break
            else:
                busy = [u for u in todo if Claim(u.where).held_elsewhere()]
                if not busy and any(u.ready() and not u.done for u in todo):
                    continue  # another process finished what these waited for since we looked: look again
                if not busy:
                    missing = [str(p) for u in todo for p in u.needs if not p.exists()]
                    raise LthError(f"cannot start {todo[0]}: {missing[0] if missing else 'its input'} is missing "
                                   "and nothing will produce it; delete that unit's folder and rerun")
                if said != str(busy[0]):
                    said = str(busy[0])
                    say(f"waiting for another lth process ({said} and {len(busy) - 1} more)")
                time.sleep(poll_seconds)

    # -- how to train it ---------------------------------------------------------------------------------
    def run_unit(self, unit: Unit) -> None:
        started = time.monotonic()
        level, where = unit.level, unit.where
        mask = self.unit_mask(unit)
        rewind(self.model, self._start_point(unit), mask, self.weights)
        if unit.kind == "random-reinit":
            reinitialize_(self.model, unit.seed)
            masks.apply_(self.weights, mask)
        on_step = self._rewind_hook() if unit.kind == "trunk" and level == 0 else None
        losses = finetune(self.model, mask, self.train, replace(self.recipe, seed=unit.seed), self.pad_id,
                 where / "checkpoint.pt", start_step=self._first_step(unit),
                 desc=f"{unit} train", on_step=on_step, prepare=getattr(self.task, "prepare", None),
                 forward=getattr(self.task, "forward", None))
        metrics = self.evaluate(str(unit))
        if unit.kind == "trunk":
            self.save_next_mask(level, mask)
        if self._keeps_final(unit):
            save_model(self.model, where / "final.safetensors")
        save_json({"step_losses": [round(x, 6) for x in losses], "first_step": self._first_step(unit)},
                  where / "train_loss.json")
        record = {"level": level, "kind": unit.kind, "seed": unit.seed, "sparsity": masks.sparsity(mask),
                  "metrics": metrics, "seconds": round(time.monotonic() - started, 1)}
        if note := undefined_note(metrics):
            record["notes"] = [note]
            say(f"{unit}: note: {note}")
        save_json(record, where / "metrics.json")
        (where / "checkpoint.pt").unlink(missing_ok=True)  # hundreds of MB, no longer needed
        if unit.kind == "standard" and level > 1:  # the chain has moved on: drop the weights it came from
            self._previous_final(unit.seed, level).unlink(missing_ok=True)
        say(level_line(record) if unit.kind == "trunk" else f"{unit.kind} seed {unit.seed}: {level_line(record)}")

    def _first_step(self, unit: Unit) -> int:
        return self.s.rewind_step if self._rewound(unit) else 0

    @staticmethod
    def _rewound(unit: Unit) -> bool:
        """Tickets and the masks that compete with them start from the rewind point; the dense runs, the
        re-initialised weights and standard pruning's fresh schedule start at step 0."""
        return unit.kind in ("trunk", "imp", "random-prune", "oneshot") and unit.level > 0

    def _start_point(self, unit: Unit) -> Path:
        if unit.kind == "standard" and unit.level > 0:
            return self._previous_final(unit.seed, unit.level)
        return self.run / (self.rewind_file() if self._rewound(unit) else "init.safetensors")

    def unit_mask(self, unit: Unit) -> masks.Mask:
        """The mask a unit trains: the search's own, a random one, or magnitudes of the weights it ranks."""
        level, target = unit.level, sparsity_at(unit.level, self.s.schedule, self.s.rate)
        if level == 0:
            return self.mask(0)
        if unit.kind in ("trunk", "imp", "random-reinit"):
            return self.mask(level)
        if unit.kind == "random-prune":
            return random_mask(self.weights, target, unit.seed)
        if unit.kind == "oneshot":
            return oneshot_mask(self._stored(self.run / "init.safetensors"), target, self.s.strategy)
        path = unit.where / "mask.safetensors"  # standard: magnitudes of the previous level's trained weights
        if not path.exists():
            before = self.mask(0) if level == 1 else masks.load(
                branch_dir(self.run, "standard", unit.seed, level - 1) / "mask.safetensors")
            trained = self._stored(self._previous_final(unit.seed, level))
            masks.save(prune(self.s.strategy, trained, before, target), path,
                       {"level": level, "model": self.s.model, "strategy": self.s.strategy, "kind": "standard"})
        return masks.load(path)

    def _stored(self, path: Path) -> dict[str, torch.Tensor]:
        """The prunable weights as saved in a weights file."""
        saved, _ = load_tensors(path)
        return {name: saved[name] for name in self.weights}

    def _keeps_final(self, unit: Unit) -> bool:
        if "standard" not in self.baselines:
            return False
        if unit.level == 0:
            return self._dense_final(unit.seed).parent == unit.where
        return unit.kind == "standard" and unit.level < max(self.judged, default=0)

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

    def evaluate(self, name: str) -> dict[str, float]:
        metrics = {}
        for split, feats in self.evals.items():
            outputs = predict(self.model, feats, self.pad_id, self.s.eval_batch_size, self.recipe.bf16,
                              self.task.collect, desc=f"{name} eval {split}",
                              forward=getattr(self.task, "forward", None))
            metrics.update(self.task.score(split, outputs))
        return metrics

    def rewind_file(self) -> str:
        return "init.safetensors" if self.s.rewind_step == 0 else f"rewind_step_{self.s.rewind_step}.safetensors"

    def _rewind_hook(self):
        if self.s.rewind_step == 0:
            return None
        path, at = self.run / self.rewind_file(), self.s.rewind_step

        def save_rewind_point(step: int) -> None:
            if step == at:
                save_model(self.model, path)
        return save_rewind_point

    def summary(self) -> dict:
        levels = [read_record(p) for p in sorted(self.run.glob("level_*/metrics.json"))]
        summary = {"run": str(self.run), "task": self.task.name, "model": self.s.model,
                   "primary": self.task.primary, "metrics": self.task.metric_names,
                   "prunable_weights": sum(w.numel() for w in self.weights.values()),
                   "prunable_matrices": len(self.weights), "levels": levels,
                   "seeds": self.seeds, "baselines": self.baselines, "judged_levels": self.judged}
        # every level with seeds or baselines on disk is judged, also when this call asked for fewer
        results = collect_results(self.run, self.seeds[0], sorted(set(self.judged) | judged_on_disk(self.run)))
        if results["full"]:
            summary["results"] = results
            summary["verdict"] = verdict(results, self.task.metric_names, self.task.primary)
        return summary


def rewind(model, point: Path, mask: masks.Mask, weights: dict) -> None:
    """Reset every weight, encoder and head, to the rewind point; pruned weights become zero."""
    load_into(model, point)
    masks.apply_(weights, mask)


def _restore_or_save(model, path: Path, recorded: str | None) -> str | None:
    """The rewind point θ0 (encoder and new head) is created once, then always read back from disk.

    θ0 is the pre-trained model with a head drawn from the seed, which `model` holds when it is called: a damaged
    θ0 is rebuilt from it, and kept only if it is bit-identical to the checksum the run recorded."""
    if not path.exists():
        return save_model(model, path)
    try:
        checksum = verify_tensors(path).get(CHECKSUM)
    except DamagedFile:
        if recorded is None:
            raise
        rebuilt = path.with_name("init.rebuilt.safetensors")
        if save_model(model, rebuilt) != recorded:
            rebuilt.unlink()
            raise
        os.replace(rebuilt, path)
        say(f"note: {path} was damaged; rebuilt it from the model and the seed (identical to the original)")
        return recorded
    load_into(model, path)
    return checksum


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", Path(text).stem)[:40]


def say(line: str) -> None:
    tqdm.write(line)
