"""Where a transferred mask comes from: a run's level (chosen by number or by the nearest sparsity) or a mask
file; and that mask over another model's prunable weights, refused when it was found on another base model."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..artifacts.ticket import TICKET, load_ticket
from ..core import masks
from ..core.console import say
from ..core.errors import LthError
from ..core.files import load_json
from ..core.fingerprints import base_fingerprint
from ..core.tensors import load_tensors, verify_tensors
from ..report.tables import pct
from ..run.layout import level_dir


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
    meta = verify_tensors(path)
    if meta.get("format") == json.dumps(TICKET):  # an exported ticket: bit-packed, with its base's fingerprints
        mask, info = load_ticket(path)
        return Source(str(path), mask, info.get("base_fingerprints"), info.get("base_model", "an unknown model"))
    mask = masks.load(path)
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
