"""`lth inspect`: what an artifact is and what its mask keeps where, for every file lth writes."""
from __future__ import annotations

import json
from pathlib import Path

import torch

from ..core import masks
from ..core.errors import LthError
from ..core.tensors import load_tensors
from ..report.tables import align, pct
from ..run.records import read_record
from .compact import COMPACT
from .manifest import RECORD, check_inside, verify
from .ticket import TICKET, load_ticket, read_meta, unpack


def inspect(path: str | Path) -> str:
    """A readable description of an export folder, a ticket, a compact model, a Hugging Face folder written by
    lth export, an ONNX file, a run's mask or a run directory."""
    path = Path(path).expanduser()
    if not path.exists():
        raise LthError(f"{path}: no such file or folder; give an export folder, a .safetensors file, a model "
                       "folder, an .onnx file or a run directory")
    check_inside(path)
    if path.is_dir():
        for name, describe in (("ticket.json", _export), ("compact.safetensors", _compact_folder),
                               ("settings.json", _run), ("config.json", _hf_folder)):
            if (path / name).is_file():
                return describe(path)
        if (path / "ticket.safetensors").is_file() or (path / "model").is_dir() or (path / "compact").is_dir():
            raise LthError(f"{path} is an incomplete export (it has no {RECORD}, which lth export writes last: the "
                           "export was interrupted); rerun the same lth export command")
        raise LthError(f"{path} holds nothing lth wrote (no ticket.json, compact.safetensors, settings.json or "
                       "config.json)")
    if path.suffix == ".onnx":
        return _onnx(path)
    if path.suffix == ".safetensors":
        return _tensor_file(path)
    if path.name == "ticket.json":
        return _export(path.parent)
    raise LthError(f"{path}: lth writes .safetensors, .onnx and folders; this is none of them")


def _tensor_file(path: Path) -> str:
    meta = read_meta(path)
    kind = meta.get("format")
    if kind == TICKET:
        mask, meta = load_ticket(path)
        return _describe("ticket (a mask relative to its base model)", path, meta, mask)
    if kind == COMPACT:
        return _describe(f"compact model ({meta.get('dtype')}: surviving weights and bit masks)", path, meta,
                         _compact_mask(path, meta))
    tensors, _ = load_tensors(path)
    if tensors and all(t.dtype == torch.bool for t in tensors.values()):
        return _describe("mask (one byte per weight, as a run keeps it)", path, meta, tensors)
    raise LthError(f"{path} is a safetensors file, but no mask, ticket or compact model that lth wrote")


def _compact_mask(path: Path, meta: dict) -> masks.Mask:
    tensors, _ = load_tensors(path)
    return {name: unpack(tensors[f"{name}::mask"], meta["encodings"][name], shape)
            for name, shape in meta["shapes"].items()}


def _describe(kind: str, path: Path, meta: dict, mask: masks.Mask) -> str:
    kept, total = masks.count(mask)
    lines = [f"{path}: {kind}", f"  size             {path.stat().st_size:,} bytes",
             f"  sparsity         {pct(1 - kept / total)} ({total - kept:,} of {total:,} prunable weights removed, "
             f"{len(mask)} matrices)"]
    for key, label in (("base_model", "base model"), ("base_fingerprint", "base fingerprint"), ("task", "task"),
                       ("level", "level"), ("run", "found in run"), ("lth_version", "lth version")):
        if key in meta:
            lines.append(f"  {label:<16} {meta[key]}")
    if "metrics" in meta:
        lines.append("  metrics          " + ", ".join(f"{k} {v:.4f}" for k, v in meta["metrics"].items()
                                                       if isinstance(v, (int, float))))
    if "rule" in meta:
        lines.append(f"  prunable rule    include {meta['rule'].get('include') or '-'}, exclude "
                     f"{meta['rule'].get('exclude') or '-'}")
    if "schedule" in meta:
        lines.append("  found with       " + ", ".join(f"{k} {v}" for k, v in meta["schedule"].items()))
    return "\n".join(lines + ["", "density per layer (share of weights kept):", format_density(mask)])


def _export(folder: Path) -> str:
    info = verify(folder)  # every file's size and checksum: the sizes below are the files' own
    text = _tensor_file(folder / "ticket.safetensors")
    files = "\n".join(f"  {name:<28} {(folder / name).stat().st_size:,} bytes" for name in info["files"]["bytes"])
    metrics = "\n".join(f"  {name:<28} " + ", ".join(f"{k} {v:.4f}" for k, v in values.items() if v is not None)
                        for name, values in info["metrics"].items())
    return f"{folder}: a ticket exported by lth export\n{files}\ndev metrics:\n{metrics}\n\n{text}"


def _compact_folder(folder: Path) -> str:
    return _tensor_file(folder / "compact.safetensors")


def _run(folder: Path) -> str:
    lines = [f"{folder}: a run directory of lth find"]
    for path in sorted(folder.glob("level_*/mask.safetensors")):
        done = path.parent / "metrics.json"
        metrics = read_record(done)["metrics"] if done.exists() else None
        kept, total = masks.count(masks.load(path))
        text = ", ".join(f"{k} {v:.4f}" for k, v in metrics.items() if v is not None) if metrics else "not trained yet"
        lines.append(f"  {path.parent.name}  sparsity {pct(1 - kept / total):>7}  {text}")
    return "\n".join(lines + ["inspect a level's mask for its density per layer: lth inspect RUN/level_NN/mask.safetensors"])


def _hf_folder(folder: Path) -> str:
    config = json.loads((folder / "config.json").read_text())
    weights = folder / "model.safetensors"
    if not weights.is_file():
        raise LthError(f"{folder} has config.json but no model.safetensors")
    tensors, _ = load_tensors(weights)
    mask = {name: t != 0 for name, t in tensors.items() if t.dim() == 2 and (".layer." in name or "pooler" in name)}
    return _describe(f"Hugging Face model ({', '.join(config.get('architectures', []))}; zeros counted as pruned)",
                     weights, {}, mask)


def _onnx(path: Path) -> str:
    lines = [f"{path}: ONNX model", f"  size   {path.stat().st_size:,} bytes"]
    try:
        import onnx
    except ImportError:
        return "\n".join(lines + ["  (pip install 'lth[onnx]' to see its inputs and outputs)"])
    try:
        graph = onnx.load(str(path), load_external_data=False).graph
    except Exception as exc:  # a truncated or foreign file
        raise LthError(f"{path} is not a readable ONNX model ({type(exc).__name__}); export it again") from None
    lines.append(f"  inputs  {', '.join(i.name for i in graph.input)}")
    lines.append(f"  outputs {', '.join(o.name for o in graph.output)}")
    return "\n".join(lines)


def format_density(mask: masks.Mask) -> str:
    """Share of weights kept per layer (rows) and matrix type (columns)."""
    rows = masks.density_map(mask)
    columns = masks.matrix_types(rows)
    lines = [["layer", *map(masks.short_column, columns)]]
    for row, cells in rows.items():
        if "" in cells:
            lines.append([row, f"{cells['']:.1%}"] + [""] * (len(columns) - 1))
        else:
            lines.append([row, *(f"{cells[c]:.1%}" if c in cells else "-" for c in columns)])
    return "\n".join(align(lines, right=True))
