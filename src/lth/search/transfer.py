"""Transfer: train a ticket found on one task on another, and judge it like the target's own ticket.

A transfer is a branch of the target's run (`branches/transfer/<fingerprint>/seed_S`), trained by the one loop
from the target's θ0 with the target's recipe, next to the full model's seeds and random masks of the same
sparsity. A source is named by the fingerprint of its mask's content, so the same mask from any path is one
branch. A source is a run (a level, or the level nearest a sparsity) or a mask file."""
from __future__ import annotations

from pathlib import Path

from ..core import masks
from ..core.console import say
from ..core.errors import LthError
from ..core.files import load_json, save_json
from ..core.fingerprints import base_fingerprint, mask_fingerprint
from ..core.pruning import sparsity_at
from ..report.tables import matrix_table, verdict_table
from ..run.layout import random_dir, transfer_dir
from ..run.settings import find_settings
from ..run.units import Unit
from ..run.verdict import outcomes, summarize
from ..tasks import build_task
from .search import Search, open_search
from .sources import Source, adapt, resolve_sources


def matching_level(search: Search, mask: masks.Mask) -> int | None:
    """The level of the search's schedule that prunes exactly as many weights as `mask` (its random masks and
    its own ticket are then the ones to compare with), or None."""
    kept, total = masks.count(mask)
    for level in range(1, 200):
        planned = sparsity_at(level, search.s.schedule, search.s.rate)
        if planned >= 1:
            return None
        if round(planned * total) == total - kept:
            return level
    return None


def transfer_units(search: Search, source: Source, base: dict[str, str]) -> tuple[list[Unit], str]:
    """The units that train `source` on this run, and random masks of its sparsity; and its fingerprint."""
    mask, notes = adapt(source, search.weights, base, search.s.model)
    fingerprint = mask_fingerprint(mask)
    folder, sparsity, level = transfer_dir(search.run, fingerprint), masks.sparsity(mask), matching_level(search, mask)
    if not (folder / "mask.safetensors").exists():
        masks.save(mask, folder / "mask.safetensors", {"kind": "transfer", "source": source.describe()})
    info = load_json(folder / "source.json") if (folder / "source.json").exists() else {"sources": [], "seeds": []}
    described = source.describe()
    save_json({"sparsity": sparsity, "level": level, "notes": notes,
               "sources": info["sources"] + ([described] if described not in info["sources"] else []),
               "seeds": sorted(set(info["seeds"]) | set(search.seeds))}, folder / "source.json")
    for note in notes:
        say(f"note: {source.label} on {search.run.name}: {note}")
    units = [search.unit("transfer", None, seed, folder / f"seed_{seed}", source=folder / "mask.safetensors",
                         label=f"transfer {fingerprint} seed {seed}") for seed in search.seeds]
    units += [search.unit("random-prune", level, seed, random_dir(search.run, seed, level, sparsity),
                          sparsity=None if level is not None else sparsity) for seed in search.seeds]
    return units, fingerprint


# -- the command -----------------------------------------------------------------------------------------

def transfer(sources: list[str] | str, task: str, level: str | int | None = None, sparsity: str | float | None = None,
             json_path: str | None = None, **flags) -> dict:
    """Train each source's mask on each target task (comma-separated) and judge it; returns every target's
    summary and the matrix of sources x targets x sparsities (also written to `json_path`)."""
    specs = [sources] if isinstance(sources, str) else list(sources)
    levels = _numbers(level, int, "--level")
    sparsities = _numbers(sparsity, float, "--sparsity")
    if sparsities and any(not 0 < s < 1 for s in sparsities):
        raise LthError(f"--sparsity {sparsity}: each must be a fraction in (0, 1), e.g. 0.5,0.7")
    resolved = [src for spec in specs for src in resolve_sources(spec, levels, sparsities)]
    flags.setdefault("seeds", 3)
    targets = [t.strip() for t in task.split(",") if t.strip()]
    if not targets:
        raise LthError(f"--task {task!r} names no task; give one or several, e.g. mrpc,stsb")
    settings = [find_settings(task=target, **flags) for target in targets]
    tasks = [build_task(s) for s in settings]  # every target's settings and data checked before anything trains
    summaries, cells = {}, []
    for target, s, built in zip(targets, settings, tasks):
        search = open_search(s, judging=False, task=built)
        base = base_fingerprint(search.weights)  # θ0's values: nothing has been trained yet
        units, entries = search.dense_units(), []
        for source in resolved:
            if source.run is not None and source.run.resolve() == search.run.resolve():
                entries.append((source, None))  # a run's own level: its ticket, the matrix's diagonal
                continue
            more, fingerprint = transfer_units(search, source, base)
            units += more
            entries.append((source, fingerprint))
        search.work(units)
        summary = search.write_summary()
        summaries[target] = summary
        cells += [_cell(summary, source, fingerprint) for source, fingerprint in entries]
        _print_target(summary, [fp for _, fp in entries if fp])
    matrix = {"cells": cells}
    print(matrix_table(cells))
    if json_path:
        save_json(matrix, json_path)
        print(f"matrix written to {json_path}")
    return {"targets": summaries, "matrix": matrix}


def _numbers(value, kind, flag: str) -> list | None:
    if value is None:
        return None
    try:
        return [kind(x) for x in str(value).split(",") if x.strip()]
    except ValueError:
        raise LthError(f"{flag} {value!r}: give numbers separated by commas, e.g. {'2,3' if kind is int else '0.5,0.7'}"
                       ) from None


def _print_target(summary: dict, fingerprints: list[str]) -> None:
    primary, metrics = summary["primary"], summary["metrics"]
    for fingerprint in dict.fromkeys(fingerprints):
        entry = summary.get("transfers", {}).get(fingerprint)
        if entry:
            labels = ", ".join(s["label"] for s in entry["sources"])
            print(f"\n{labels} -> {summary['task']} ({Path(summary['run']).name})")
            print(verdict_table(entry["table"], metrics, primary, judged="transfer"))
            for note in entry["notes"]:
                print(f"note: {note}")


def _cell(summary: dict, source: Source, fingerprint: str | None) -> dict:
    """One cell of the matrix: the ticket judged on the target's primary metric against its full model."""
    primary = summary["primary"]
    if fingerprint is None:  # the target's own ticket at the source level
        sparsity = f"{source.sparsity:.6f}"
        table = {"full": summary.get("results", {}).get("full", []),
                 "levels": {sparsity: summary.get("results", {}).get("levels", {}).get(sparsity, {})}}
        kind = "own ticket"
    else:
        table = summary.get("transfers", {}).get(fingerprint, {"table": {"full": [], "levels": {}}})["table"]
        kind = "transfer"
    row = next(iter(table["levels"].values()), {})
    stats = summarize(row.get("imp", [])).get(primary)
    full = summarize(table["full"]).get(primary)
    random = summarize(row.get("random-prune", [])).get(primary)
    own = summarize(row.get("own-ticket", [])).get(primary)
    return {"source": source.label, "target": summary["task"], "run": summary["run"], "kind": kind,
            "requested": source.requested, "sparsity": float(next(iter(table["levels"]), source.sparsity)),
            "metric": primary, "ticket": stats, "full": full, "random": random, "own_ticket": own,
            "wins": _wins(table, primary)}


def _wins(table: dict, metric: str) -> dict | None:
    if not table["full"] or not table["levels"]:
        return None
    return {rule: next(iter(outcomes(table, metric, rule).values()), None) for rule in ("1sigma", "strict")}
