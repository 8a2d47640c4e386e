"""The ticket search: iterative magnitude pruning with rewinding, and every unit that hangs off it.

A run is opened once (task, model, θ0, settings.json), then any list of units is trained through the same
rewind -> finetune -> evaluate -> metrics.json path; which mask and which starting weights a unit takes is
the table in `branches.py`."""
from __future__ import annotations

import os
import re
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

from . import masks
from .baselines import reinitialize_
from .branches import CHAIN, INIT, KINDS, REINIT, keeps_final, planned_units, previous_final
from .config import FindSettings, find_settings
from .errors import LthError
from .files import (CHECKSUM, DamagedFile, load_into, load_json, only_main_writes, remove, save_json, save_model, sweep,
                    verify_tensors)
from .metrics import undefined_note
from .models import check_max_length, load_tokenizer, prunable_weights
from .parallel import Ranks, start
from .pruning import planned_levels, prune, sparsity_at
from .report import level_line, table
from .runs import branch_dir, check_run, collect_results, collect_transfers, judged_on_disk, level_dir, read_record
from .tasks import load_task
from .tasks.classify import ClassificationTask
from .tasks.mlm import MaskedLMTask
from .tasks.squad import SquadTask
from .train import Recipe, finetune, predict
from .verdict import format_verdict_table, verdict
from .work import Unit, say, unique, work, work_one


def find(settings: FindSettings | None = None, unit: str | None = None, list_units: bool = False,
         **overrides) -> dict:
    """Run (or resume) a ticket search, and its seeds and baselines when asked for.

    Returns the summary also written to the run's summary.json. Several processes given the same settings
    share the work: each trains what nobody else is training (see `work.work`). `list_units` prints every unit
    of the run with its state; `unit` trains that one unit only (for a scheduler's job array)."""
    search = open_search(settings or find_settings(**overrides))
    units = unique(planned_units(search))
    if list_units:
        print(format_units(units, search.run))
        return {"units": [{"id": u.id, "done": u.done, "ready": u.ready()} for u in units]}
    if unit is not None:
        work_one(one_unit(units, unit, search.run), search.run_unit, ranks=search.ranks)
        return search.write_summary() if search.ranks.main else {}
    search.work(units)
    summary = search.write_summary()
    print(table(summary))
    if "verdict" in summary and (len(search.seeds) > 1 or search.baselines):
        print()
        print(format_verdict_table(summary["results"], search.task.metric_names, search.task.primary))
    print(f"run directory: {search.run}")
    return summary


def format_units(units: list[Unit], run: Path) -> str:
    """One line per unit: its id (for --unit), and whether it is done, ready to start, or waiting for inputs."""
    state = lambda u: "done" if u.done else "ready" if u.ready() else "waits for " + ", ".join(  # noqa: E731
        p.relative_to(run).as_posix() for p in u.needs if not p.exists())
    width = max(len(u.id) for u in units)
    return "\n".join(f"{u.id:<{width}}  {state(u)}" for u in units)


def one_unit(units: list[Unit], wanted: str, run: Path) -> Unit:
    """The unit named by --unit (its folder inside the run, as --list-units prints it)."""
    for unit in units:
        if unit.id == wanted.strip("/"):
            return unit
    raise LthError(f"--unit {wanted}: {run.name} has no such unit; the same command with --list-units prints "
                   "every unit's id")


def open_search(s: FindSettings, judging: bool = True) -> "Search":
    """Load the task and the model, find or create the run directory, and restore θ0.

    Everything that can be refused is checked before a file is written. `judging`: this call chooses the
    levels that get seeds and baselines (a transfer leaves the search's own choice as it was)."""
    torch.set_num_threads(s.threads or os.cpu_count() or 1)
    ranks = start(s.device)
    only_main_writes(ranks.main)
    if not ranks.main:  # the other processes of a group train the same units: one voice is enough
        sys.stdout = open(os.devnull, "w")
    if s.batch_size < ranks.world * s.grad_accum:
        raise LthError(f"--batch-size {s.batch_size} is smaller than {ranks.world} processes x --grad-accum "
                       f"{s.grad_accum}: every process needs at least one example of each micro-batch")
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
    search = Search(s, task, tokenizer, model, weights, run, ranks)
    previous = _previous_settings(run, data)
    _note_other_data(run, s, data)
    for leftover in sweep(run) if run.exists() else []:
        say(f"removed {leftover}, left by an interrupted writer")
    init = _restore_or_save(model, run / "init.safetensors", previous.get("init_sha256"))
    check_run(run)
    search.mask(0)  # the all-ones mask: written now if it is missing (a fresh run, or deleted as damaged)
    judged = search.judged if judging else previous.get("judged_levels", [])
    save_json({"settings": s.to_dict(), "sizes": task.sizes(), "notes": task.notes, "primary": task.primary,
               "metrics": task.metric_names, "judged_levels": judged, "data_fingerprint": data,
               "settings_digest": s.digest(data=""), "init_sha256": init}, run / "settings.json")
    total = sum(w.numel() for w in weights.values())
    say(f"model {s.model}: {len(weights)} prunable matrices, {total:,} weights "
        f"of {sum(p.numel() for p in model.parameters()):,} parameters")
    return search


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


class Plan:
    """What a run is meant to hold, from its settings alone: its levels, judged levels, seeds, baselines and
    their units (a report reads it without loading the model)."""

    def __init__(self, s: FindSettings, run: Path):
        self.s, self.run = s, run
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

    def unit(self, kind: str, level: int | None, seed: int, where: Path, needs: tuple = (), **kw) -> Unit:
        """A unit; one that starts from a later rewind point also waits for level 0 to have saved it."""
        if KINDS[kind].start not in (INIT, REINIT, CHAIN) and level != 0 and self.s.rewind_step:
            needs = (*needs, self.run / self.rewind_file())
        return Unit(kind, level, seed, where, needs, id=where.relative_to(self.run).as_posix(), **kw)

    def dense_units(self) -> list[Unit]:
        """The full model with every seed: the search's own level 0, then the other seeds' dense runs."""
        first = [self.unit("trunk", 0, self.seeds[0], level_dir(self.run, 0))]
        return first + [self.unit("full", 0, seed, branch_dir(self.run, "full", seed, 0)) for seed in self.seeds[1:]]

    def rewind_file(self) -> str:
        return "init.safetensors" if self.s.rewind_step == 0 else f"rewind_step_{self.s.rewind_step}.safetensors"


class Search(Plan):
    """One run on disk with its task and model loaded: trains the IMP levels (level_NN/) and their branches
    (branches/<kind>/...)."""

    def __init__(self, s: FindSettings, task, tokenizer, model, weights, run: Path, ranks: Ranks | None = None):
        super().__init__(s, run)
        self.task, self.model, self.weights, self.tokenizer = task, model, weights, tokenizer
        self.ranks = ranks or Ranks()
        self.pad_id = tokenizer.pad_token_id or 0
        self.recipe = Recipe(batch_size=s.batch_size, lr=s.lr, epochs=s.epochs, weight_decay=s.weight_decay,
                             warmup=s.warmup, seed=s.seed, precision=s.precision,
                             checkpoint_minutes=s.checkpoint_minutes, steps=s.steps, grad_accum=s.grad_accum)
        self.train = task.train_features(tokenizer, s.max_length)
        self.evals = task.eval_features(tokenizer, s.max_length)
        if s.rewind_step >= self.recipe.total_steps(len(self.train)):
            raise LthError(f"--rewind-step {s.rewind_step} is not inside level 0's "
                           f"{self.recipe.total_steps(len(self.train))} training steps; choose a smaller step")

    def work(self, units: list[Unit], poll_seconds: float = 10.0) -> None:
        work(unique(units), self.run_unit, poll_seconds, self.ranks)

    # -- how a unit is trained -------------------------------------------------------------------------
    def run_unit(self, unit: Unit) -> None:
        started = time.monotonic()
        mask = KINDS[unit.kind].mask(self, unit)
        point, first_step = self.start(unit)
        rewind(self.model, point, mask, self.weights)
        if KINDS[unit.kind].start == REINIT:
            reinitialize_(self.model, unit.seed)
            masks.apply_(self.weights, mask)
        on_step = self._rewind_hook() if unit.kind == "trunk" and unit.level == 0 else None
        losses = finetune(self.model, mask, self.train, replace(self.recipe, seed=unit.seed), self.pad_id,
                          unit.where / "checkpoint.pt", start_step=first_step, desc=f"{unit} train",
                          on_step=on_step, prepare=getattr(self.task, "prepare", None),
                          forward=getattr(self.task, "forward", None), ranks=self.ranks)
        metrics = self.evaluate(str(unit))
        if unit.kind == "trunk":
            self.save_next_mask(unit.level, mask)
        if keeps_final(self, unit):
            save_model(self.model, unit.where / "final.safetensors")
        self._record(unit, mask, metrics, losses, first_step, time.monotonic() - started)
        if unit.kind == "standard" and unit.level > 1:  # the chain has moved on: drop the weights it came from
            remove(previous_final(self, unit.seed, unit.level))

    def start(self, unit: Unit) -> tuple[Path, int]:
        """The weights a unit starts from and its first step: tickets and the masks that compete with them
        start from the rewind point; dense runs, re-initialised weights and standard pruning at step 0."""
        start = KINDS[unit.kind].start
        if start == CHAIN and unit.level > 0:
            return previous_final(self, unit.seed, unit.level), 0
        if start in (INIT, REINIT, CHAIN) or unit.level == 0:
            return self.run / "init.safetensors", 0
        return self.run / self.rewind_file(), self.s.rewind_step

    def _record(self, unit: Unit, mask, metrics: dict, losses: list[float], first_step: int, seconds: float) -> None:
        save_json({"step_losses": [round(x, 6) for x in losses], "first_step": first_step},
                  unit.where / "train_loss.json")
        record = {"level": unit.level, "kind": unit.kind, "seed": unit.seed, "sparsity": masks.sparsity(mask),
                  "metrics": metrics, "seconds": round(seconds, 1)}
        if note := undefined_note(metrics):
            record["notes"] = [note]
            say(f"{unit}: note: {note}")
        save_json(record, unit.where / "metrics.json")
        remove(unit.where / "checkpoint.pt")  # hundreds of MB, no longer needed
        say(level_line(record) if unit.kind == "trunk" else f"{unit.kind} seed {unit.seed}: {level_line(record)}")

    def mask(self, level: int) -> masks.Mask:
        path = level_dir(self.run, level) / "mask.safetensors"
        if level == 0 and not path.exists():
            mask = masks.ones(self.weights)
            masks.save(mask, path, {"level": 0})
            return mask  # not read back: in a group of processes only the main one writes it
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

    def evaluate(self, name: str, model=None) -> dict[str, float]:
        """The task's metrics of `model` (the search's own by default) on every evaluation split."""
        metrics = {}
        for split, feats in self.evals.items():
            outputs = predict(model or self.model, feats, self.pad_id, self.s.eval_batch_size, self.s.precision,
                              self.task.collect, desc=f"{name} eval {split}",
                              forward=getattr(self.task, "forward", None), ranks=self.ranks)
            metrics.update(self.task.score(split, outputs))
        return metrics

    def _rewind_hook(self):
        if self.s.rewind_step == 0:
            return None
        path, at = self.run / self.rewind_file(), self.s.rewind_step

        def save_rewind_point(step: int) -> None:
            if step == at:
                save_model(self.model, path)
        return save_rewind_point

    def summary(self) -> dict:
        """Everything finished on disk: the levels, the verdict of seeds and baselines, and the transfers."""
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
        transfers = collect_transfers(self.run, self.seeds[0])
        if transfers and results["full"]:
            for entry in transfers.values():
                entry["verdict"] = verdict(entry["table"], self.task.metric_names, self.task.primary)
            summary["transfers"] = transfers
        return summary

    def write_summary(self) -> dict:
        summary = self.summary()
        save_json(summary, self.run / "summary.json")
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
