"""Transfer: train a ticket found on one task on another, and judge it like the target's own ticket.

A transfer is a branch of the target's run (`branches/transfer/<fingerprint>/seed_S`), trained by the one loop
from the target's θ0 with the target's recipe, next to the full model's seeds and random masks of the same
sparsity. A source is named by the fingerprint of its mask's content, so the same mask from any path is one
branch. A source is a run (a level, or the level nearest a sparsity) or a mask file."""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import torch

from . import masks
from .config import find_settings
from .errors import LthError
from .files import load_json, load_tensors, save_json, verify_tensors
from .pruning import sparsity_at
from .runs import level_dir, random_dir, transfer_dir
from .search import Search, open_search
from .verdict import format_verdict_table, pct, summarize
from .work import Unit, say


@dataclass
class Source:
    """A mask to transfer and what is known of where it was found."""

    label: str  # how tables name it: "<run name> level N" or the file's path
    mask: masks.Mask
    base: dict[str, str] | None  # per weight, a fingerprint of the pre-trained values it was found on
    model: str = "an unknown model"
    run: Path | None = None
    level: int | None = None
    requested: float | None = None  # the sparsity asked for, when the level was chosen by it
    notes: list[str] = field(default_factory=list)

    @property
    def sparsity(self) -> float:
        return masks.sparsity(self.mask)

    def describe(self) -> dict:
        return {"label": self.label, "run": str(self.run) if self.run else None, "level": self.level,
                "model": self.model, "sparsity": self.sparsity}


def base_fingerprint(weights: dict[str, torch.Tensor]) -> dict[str, str]:
    """Per weight, a hash of its values (as float32): equal only for the same pre-trained model."""
    return {name: hashlib.sha256(w.detach().float().cpu().contiguous().numpy().tobytes()).hexdigest()[:16]
            for name, w in weights.items()}


def mask_fingerprint(mask: masks.Mask) -> str:
    digest = hashlib.sha256()
    for name in sorted(mask):
        digest.update(f"{name}{tuple(mask[name].shape)}".encode())
        digest.update(mask[name].contiguous().numpy().tobytes())
    return digest.hexdigest()[:12]


# -- where sources come from ------------------------------------------------------------------------------

def resolve_sources(spec: str, levels: list[int] | None, sparsities: list[float] | None) -> list[Source]:
    """The masks a source names: levels of a run (chosen by number or by the nearest sparsity), or a mask file."""
    path = Path(spec).expanduser()
    if path.is_dir() and (path / "settings.json").is_file():
        return _run_sources(path, levels, sparsities)
    if path.is_file():
        if levels or sparsities:
            say(f"note: {spec} is a mask file: --level and --sparsity choose levels of run sources only")
        return [_file_source(path)]
    raise LthError(f"transfer source {spec}: no such run directory or mask file; give a run folder that lth find "
                   "printed (runs/<task>-<model>-<hash>) or a mask .safetensors file")


def _run_levels(run: Path) -> dict[int, Path]:
    """The levels of a run whose mask is final: level 0, and every level whose previous level has finished."""
    found = {}
    for path in sorted(run.glob("level_*/mask.safetensors")):
        level = int(path.parent.name.split("_")[1])
        if level == 0 or (level_dir(run, level - 1) / "metrics.json").exists():
            found[level] = path
    return found


def _run_sources(run: Path, levels: list[int] | None, sparsities: list[float] | None) -> list[Source]:
    available = _run_levels(run)
    stated = {level: float(verify_tensors(path).get("sparsity", "nan")) for level, path in available.items()}
    if levels:
        missing = [level for level in levels if level not in available]
        if missing:
            raise LthError(f"{run} has no finished mask at level {missing[0]} (it has levels "
                           f"{', '.join(map(str, sorted(available)))}); choose one of those, or let the search go on")
        chosen = [(level, None) for level in levels]
    elif sparsities:
        pruned = {level: s for level, s in stated.items() if level > 0}
        if not pruned:
            raise LthError(f"{run} has no pruned level yet; run its search further first")
        chosen = [(min(pruned, key=lambda level: abs(pruned[level] - s)), s) for s in sparsities]
    else:
        raise LthError(f"{run} is a run: say which of its masks to transfer with --level N or --sparsity S")
    info = load_json(run / "settings.json", {"settings": dict})
    init, _ = load_tensors(run / "init.safetensors")
    sources = []
    for level, requested in chosen:
        mask = masks.load(available[level])
        if requested is not None:
            say(f"{run.name}: --sparsity {requested:g} -> level {level} ({pct(stated[level])}), the nearest")
        sources.append(Source(f"{run.name} level {level}", mask, base_fingerprint({k: init[k] for k in mask}),
                              info["settings"].get("model", "an unknown model"), run, level, requested))
    return sources


def _file_source(path: Path) -> Source:
    mask = masks.load(path)
    meta = verify_tensors(path)
    base = json.loads(meta["base"]) if "base" in meta else None
    run = next((p for p in path.parents if (p / "settings.json").is_file() and (p / "init.safetensors").is_file()),
               None)
    model, notes = json.loads(meta.get("model", '"an unknown model"')), []
    if base is None and run is not None:  # a mask inside a run: the run's θ0 says what it was found on
        init, _ = load_tensors(run / "init.safetensors")
        base = base_fingerprint({k: init[k] for k in mask if k in init})
        model = load_json(run / "settings.json", {"settings": dict})["settings"].get("model", model)
    if base is None:
        notes.append(f"{path} records no fingerprint of the model it was found on: only the names and shapes "
                     "of its weights could be checked")
    return Source(str(path), mask, base, model, run, notes=notes)


# -- applying a source to a target ------------------------------------------------------------------------

def adapt(source: Source, weights: dict[str, torch.Tensor], base: dict[str, str], model: str
          ) -> tuple[masks.Mask, list[str]]:
    """The source's mask over this model's prunable weights: refused if it was found on another base model;
    weights it does not cover stay dense, weights this model does not prune are ignored (both stated)."""
    common = [name for name in weights if name in source.mask]
    if not common:
        raise LthError(f"{source.label} shares no prunable weight with {model} (it has e.g. "
                       f"{next(iter(source.mask))}); a mask applies only to the base model it was found in")
    for name in common:
        if tuple(source.mask[name].shape) != tuple(weights[name].shape):
            raise LthError(f"{source.label} does not fit {model}: {name} is {tuple(source.mask[name].shape)} in the "
                           f"mask but {tuple(weights[name].shape)} here; use a mask found on the same base model")
    if source.base is not None:
        differ = [name for name in common if source.base.get(name, base[name]) != base[name]]
        if differ:
            raise LthError(f"{source.label} was found on another base model ({source.model}): the pre-trained "
                           f"values of {differ[0]} (and {len(differ) - 1} more) differ from those of {model}; "
                           "a ticket applies only to the model it was found in")
    notes = list(source.notes)
    dense = [name for name in weights if name not in source.mask]
    ignored = [name for name in source.mask if name not in weights]
    if dense:
        notes.append(f"{len(dense)} prunable weights of this model are not in the mask and stay dense: "
                     f"{', '.join(dense[:3])}{' ...' if len(dense) > 3 else ''}")
    if ignored:
        notes.append(f"{len(ignored)} weights of the mask are not prunable here and are ignored: "
                     f"{', '.join(ignored[:3])}{' ...' if len(ignored) > 3 else ''}")
    mask = {name: source.mask[name].clone() if name in source.mask else torch.ones_like(w, dtype=torch.bool)
            for name, w in weights.items()}
    return mask, notes


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
    units = [search.unit("transfer", None, seed, folder / f"seed_{seed}", source=folder / "mask.safetensors")
             for seed in search.seeds]
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
    summaries, cells = {}, []
    for target in [t.strip() for t in task.split(",") if t.strip()]:
        search = open_search(find_settings(task=target, **flags), judging=False)
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
    print(format_matrix(cells))
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
            print(format_verdict_table(entry["table"], metrics, primary, judged="transfer"))
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
    from .verdict import outcomes

    if not table["full"] or not table["levels"]:
        return None
    return {rule: next(iter(outcomes(table, metric, rule).values()), None) for rule in ("1sigma", "strict")}


def format_matrix(cells: list[dict]) -> str:
    """Sources down, targets across; each cell the ticket's mean ± std on the target's primary metric, marked
    ** (at or above the full model's mean) or * (within one std of it)."""
    if not cells:
        return "no transfers"
    targets = list(dict.fromkeys(c["target"] for c in cells))
    sources = list(dict.fromkeys(c["source"] for c in cells))
    rows = [["source \\ target", *[f"{t} ({next(c['metric'] for c in cells if c['target'] == t)})" for t in targets]]]
    for source in sources:
        row = [source]
        for target in targets:
            cell = next((c for c in cells if c["source"] == source and c["target"] == target), None)
            row.append(_cell_text(cell))
        rows.append(row)
    full = ["full model", *[_stat(next(c["full"] for c in cells if c["target"] == t)) for t in targets]]
    rows.append(full)
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(x.ljust(w) for x, w in zip(r, widths)).rstrip() for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    lines.append("** at or above the full model's mean   * within one std of it   (own) the target's own ticket   "
                 "@ the sparsity on the target")
    return "\n".join(lines)


def _stat(stats: dict | None) -> str:
    if stats is None:
        return "-"
    if stats["mean"] is None:
        return "undefined"
    return f"{stats['mean']:.4f}" + (f" ±{stats['std']:.4f}" if stats["std"] is not None else "")


def _cell_text(cell: dict | None) -> str:
    if cell is None or cell["ticket"] is None:
        return "-"
    wins = cell["wins"] or {}
    mark = "**" if wins.get("strict") else "*" if wins.get("1sigma") else ""
    own = " (own)" if cell["kind"] == "own ticket" else ""
    return f"{_stat(cell['ticket'])}{mark}{own} @{pct(cell['sparsity'])}"
