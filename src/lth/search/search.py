"""The ticket search: one run opened (task, model, θ0, settings.json), and every unit of it trained by the same
rewind -> finetune -> evaluate -> metrics.json path. Which mask and which starting weights a unit takes is its
kind's row in run.kinds.KINDS."""
from __future__ import annotations

import os
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

from ..core import masks
from ..core.baselines import reinitialize_
from ..core.batches import ROW
from ..core.console import say
from ..core.devices import Ranks, start
from ..core.errors import LthError
from ..core.files import DamagedFile, load_json, only_main_writes, remove, save_json, sweep
from ..core.metrics import undefined_note
from ..core.models import check_max_length, load_tokenizer, prunable_weights
from ..core.tensors import CHECKSUM, load_into, save_model, verify_tensors
from ..report.tables import level_line
from ..run.costs import time_to_ticket
from ..run.kinds import CHAIN, INIT, KINDS, REINIT
from ..run.layout import run_name
from ..run.plan import Plan, keeps_final, previous_final
from ..run.records import check_run, read_record
from ..run.settings import FindSettings
from ..run.summary import SETTINGS_RECORD, read_results
from ..run.units import Unit, unique
from ..tasks import Task, build_task
from .distill import Teacher
from .draws import drawer
from .evaluate import predict
from .masking import Masks
from .queue import work
from .train import Recipe, finetune
from .warmup import head_warmup_steps, warm_up_head


def open_search(s: FindSettings, judging: bool = True, at: Path | None = None,
                task: Task | None = None) -> "Search":
    """Load the task and the model, find or create the run directory, and restore θ0.

    Everything that can be refused is checked before a file is written. `judging`: this call chooses the
    levels that get seeds and baselines (a transfer leaves the search's own choice as it was). `at`: an existing
    run, opened read-only wherever its folder now is (export): it is identified by its contents (settings and
    data), not by its folder's name, and nothing in it is written. `task`: the settings' task, when already built."""
    torch.set_num_threads(s.threads or os.cpu_count() or 1)
    ranks = start(s.device)
    only_main_writes(ranks.main)
    if not ranks.main:  # the other processes of a group train the same units: one voice is enough
        sys.stdout = open(os.devnull, "w")
    if s.batch_size < ranks.world * s.grad_accum:
        raise LthError(f"--batch-size {s.batch_size} is smaller than {ranks.world} processes x --grad-accum "
                       f"{s.grad_accum}: every process needs at least one example of each micro-batch")
    task = task or build_task(s)
    tokenizer = load_tokenizer(s.model)
    data = task.fingerprint()
    model = task.load_model(s.model, s.seed)
    s.head_warmup = head_warmup_steps(s, task)  # part of the run's name: it changes θ0
    name = run_name(task.name, s.model, s.digest(data))  # what the run is called wherever its folder now is
    run = at if at is not None else Path(s.runs_dir) / name
    say(f"run {run}")
    check_max_length(s.max_length, model, tokenizer, s.model)
    weights = prunable_weights(model, s.include, s.exclude)
    for note in task.notes:
        say(f"note: {note}")
    search = Search(s, task, tokenizer, model, weights, run, ranks)
    search.name = name
    previous = _previous_settings(run, data)
    if at is not None:
        _same_run(run, s, previous)
        load_into(model, run / "init.safetensors")
        return search
    _note_other_data(run, s, data)
    for leftover in sweep(run) if run.exists() else []:
        say(f"removed {leftover}, left by an interrupted writer")
    init = _restore_or_save(model, run / "init.safetensors", previous.get("init_sha256"),
                            lambda: warm_up_head(search))
    if search.teacher is not None:
        search.teacher.check()
    check_run(run)
    search.masks.level(0)  # the all-ones mask: written now if it is missing (a fresh run, or deleted as damaged)
    judged = search.judged if judging else previous.get("judged_levels", [])
    save_json({"settings": s.to_dict(), "sizes": task.sizes(), "notes": task.notes, "primary": task.primary,
               "metrics": task.metric_names, "judged_levels": judged, "data_fingerprint": data,
               "settings_digest": s.digest(data=""), "init_sha256": init}, run / "settings.json")
    if search.kept:
        size = sum(t.numel() * t.element_size() for t in model.state_dict().values()) / 2**20
        say(f"keeping the trained weights of level {', '.join(map(str, search.kept))}: {size:,.1f} MiB each, "
            f"{size * len(search.kept):,.1f} MiB in all (--keep-weights)")
    total = sum(w.numel() for w in weights.values())
    say(f"model {s.model}: {len(weights)} prunable matrices, {total:,} weights "
        f"of {sum(p.numel() for p in model.parameters()):,} parameters")
    return search


def _same_run(run: Path, s: FindSettings, previous: dict) -> None:
    """An existing run is the one these settings describe: the same settings that change results, on the same
    data (checked by _previous_settings), from the same θ0."""
    if not previous:
        raise LthError(f"{run} is not a run directory (it has no settings.json); give a folder that lth find printed")
    if previous.get("settings_digest", s.digest(data="")) != s.digest(data=""):
        raise LthError(f"{run}: its settings.json does not describe the run it holds (its digest differs); the file "
                       "was edited: restore it")
    path = run / "init.safetensors"
    if not path.is_file():
        raise LthError(f"{run} has no init.safetensors (its rewind point); rerun the lth find command that made it")
    if previous.get("init_sha256") not in (None, verify_tensors(path).get(CHECKSUM)):
        raise LthError(f"{path} is not the rewind point this run recorded (its checksum differs); rerun the lth find "
                       "command that made the run, which rebuilds it")


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


class Search(Plan):
    """One run on disk with its task and model loaded: trains the IMP levels (level_NN/) and their branches
    (branches/<kind>/...)."""

    def __init__(self, s: FindSettings, task: Task, tokenizer, model, weights, run: Path, ranks: Ranks | None = None):
        super().__init__(s, run)
        self.task, self.model, self.weights, self.tokenizer = task, model, weights, tokenizer
        self.ranks = ranks or Ranks()
        self.name = run.name  # open_search names it by its contents (a copied run keeps its name)
        self.masks = Masks(self, weights)
        self.pad_id = tokenizer.pad_token_id or 0
        self.recipe = Recipe(**s.group("recipe"))
        self.train = task.train_features(tokenizer, s.max_length)
        self.teacher = Teacher(self) if s.distill else None
        if s.distill and task.fixed_inputs:  # each example finds its teacher outputs by its row
            self.train = [{**feature, ROW: i} for i, feature in enumerate(self.train)]
        self._distilled = None
        self.evals = task.eval_features(tokenizer, s.max_length)
        if s.rewind_step >= self.recipe.total_steps(len(self.train)):
            raise LthError(f"--rewind-step {s.rewind_step} is not inside level 0's "
                           f"{self.recipe.total_steps(len(self.train))} training steps; choose a smaller step")

    def work(self, units: list[Unit], poll_seconds: float = 10.0) -> None:
        work(unique(units), self.run_unit, poll_seconds, self.ranks)

    # -- how a unit is trained -------------------------------------------------------------------------
    def run_unit(self, unit: Unit) -> None:
        started = time.monotonic()
        row = KINDS[unit.kind]
        drawer = self.drawer_of(unit)
        mask, first_step, losses = self.train_unit(unit, unit.where / "checkpoint.pt", drawer=drawer)
        metrics = self.evaluate(str(unit))
        if drawer is not None:
            self.masks.save_drawn(drawer)
            mask = drawer.mask or mask  # what the model holds now (gradual ends pruned)
        elif row.search and not self.drawn:  # IMP: this level's trained weights give the next level's mask
            self.masks.next_level(unit.level, mask)
        if self.teacher is not None and row.search and unit.level == 0:
            self.teacher.build()
        if keeps_final(self, unit):
            save_model(self.model, unit.where / "final.safetensors")
        self._record(unit, mask, metrics, losses, first_step, time.monotonic() - started)
        if row.chain and unit.level > 1:  # the chain has moved on: drop the weights it came from
            remove(previous_final(self, unit.kind, unit.seed, unit.level))

    def train_unit(self, unit: Unit, checkpoint: Path, desc: str | None = None, keep_rewind: bool = True,
                   drawer=None) -> tuple[masks.Mask, int, list[float]]:
        """Rewind to the unit's starting weights with its mask and fine-tune: (mask, first step, loss per step).
        The weights stay in self.model. `keep_rewind`: level 0 saves the later rewind point (--rewind-step).
        `drawer`: draws every level's mask as the unit trains (see drawer_of)."""
        row = KINDS[unit.kind]
        forward = self.distilled() if self.distills(unit.kind, unit.level) else self.task.forward  # may load θ_teacher
        mask = self.masks.of(unit)
        point, first_step = self.start(unit)
        rewind(self.model, point, mask, self.weights)
        if row.start == REINIT:
            reinitialize_(self.model, unit.seed)
            masks.apply_(self.weights, mask)
        on_step = self._rewind_hook() if row.search and unit.level == 0 and keep_rewind else None
        losses = finetune(self.model, mask, self.train, replace(self.recipe, seed=unit.seed), self.pad_id,
                          checkpoint, start_step=first_step, desc=desc or f"{unit} train", on_step=on_step,
                          prepare=self.task.prepare, forward=forward, ranks=self.ranks, drawer=drawer)
        return mask, first_step, losses

    def drawer_of(self, unit: Unit):
        """The drawer of a drawing search's unit that draws the masks (level 0 for early-bird, the draw unit for
        gradual); None for every other unit."""
        if self.way.drawer != unit.kind or unit.level not in (0, None):
            return None
        return drawer(self.s.search, self.weights, self.drawn_levels(), self.s.strategy, self.s.draw_every,
                      self.recipe.total_steps(len(self.train)), self.s.early_bird_epsilon)

    def start(self, unit: Unit) -> tuple[Path, int]:
        """The weights a unit starts from and its first step: tickets and the masks that compete with them
        start from the rewind point; dense runs, re-initialised weights and chains at step 0."""
        start = KINDS[unit.kind].start
        if start == CHAIN and unit.level > 0:
            return previous_final(self, unit.kind, unit.seed, unit.level), 0
        if start in (INIT, REINIT, CHAIN) or unit.level == 0:
            return self.run / "init.safetensors", 0
        return self.run / self.rewind_file(), self.s.rewind_step

    def _record(self, unit: Unit, mask, metrics: dict, losses: list[float], first_step: int, seconds: float) -> None:
        save_json({"step_losses": [round(x, 6) for x in losses], "first_step": first_step},
                  unit.where / "train_loss.json")
        record = {"level": unit.level, "kind": unit.kind, "seed": unit.seed, "sparsity": masks.sparsity(mask),
                  "metrics": metrics, "seconds": round(seconds, 1), "processes": self.ranks.world}
        if note := undefined_note(metrics):
            record["notes"] = [note]
            say(f"{unit}: note: {note}")
        save_json(record, unit.where / "metrics.json")
        remove(unit.where / "checkpoint.pt")  # hundreds of MB, no longer needed
        say(level_line(record) if KINDS[unit.kind].search else f"{unit.kind} seed {unit.seed}: {level_line(record)}")

    def distilled(self):
        """The training forward of a unit that learns from the teacher (made once: the stored outputs are read once)."""
        if self._distilled is None:
            self._distilled = self.teacher.forward()
        return self._distilled

    def evaluate(self, name: str, model=None) -> dict[str, float]:
        """The task's metrics of `model` (the search's own by default) on every evaluation split."""
        metrics = {}
        for split, feats in self.evals.items():
            outputs = predict(model or self.model, feats, self.pad_id, self.s.eval_batch_size, self.s.precision,
                              self.task.collect, desc=f"{name} eval {split}", forward=self.task.forward,
                              ranks=self.ranks)
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
        if self.s.distill and levels and levels[0]["level"] == 0:  # for reference: what the students learn from
            summary["teacher"] = {"level": 0, "seed": self.seeds[0], "metrics": levels[0]["metrics"]}
        summary["search"], summary["time_to_ticket"] = self.s.search, time_to_ticket(self)
        found = read_results(self.run, self.task.metric_names, self.task.primary, self.seeds[0], self.judged)
        if found.table["full"]:
            summary["results"], summary["verdict"] = found.table, found.verdict
            if found.transfers:
                summary["transfers"] = found.transfers
        return summary

    def write_summary(self) -> dict:
        summary = self.summary()
        save_json(summary, self.run / "summary.json")
        return summary


def rewind(model, point: Path, mask: masks.Mask, weights: dict) -> None:
    """Reset every weight, encoder and head, to the rewind point; pruned weights become zero."""
    load_into(model, point)
    masks.apply_(weights, mask)


def _restore_or_save(model, path: Path, recorded: str | None, make=lambda: None) -> str | None:
    """The rewind point θ0 (encoder and new head) is created once, then always read back from disk.

    θ0 is the pre-trained model with a head drawn from the seed, which `model` holds when it is called, after `make`
    (the head warm-up): a damaged θ0 is rebuilt the same way, and kept only if it is bit-identical to the checksum
    the run recorded."""
    if not path.exists():
        make()
        return save_model(model, path)
    try:
        checksum = verify_tensors(path).get(CHECKSUM)
    except DamagedFile:
        if recorded is None:
            raise
        make()
        rebuilt = path.with_name("init.rebuilt.safetensors")
        if save_model(model, rebuilt) != recorded:
            rebuilt.unlink()
            raise
        os.replace(rebuilt, path)
        say(f"note: {path} was damaged; rebuilt it from the model and the seed (identical to the original)")
        return recorded
    load_into(model, path)
    return checksum
