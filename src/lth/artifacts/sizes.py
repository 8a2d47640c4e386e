"""What an export's files cost: bytes of every file, the bounds they are judged against, and the lines `lth export`
prints about them."""
from __future__ import annotations

import math
from pathlib import Path

import torch
from safetensors import safe_open

from ..core import masks
from ..report.tables import pct
from .manifest import checksums, exported_files
from .ticket import entropy_bytes


def sizes(to: Path, mask: masks.Mask, model, dtype: torch.dtype) -> dict:
    """Bytes and sha256 of every file written (ticket.json, written after, aside), and the bounds they are judged
    against."""
    kept, total = masks.count(mask)
    params = {name for name, _ in model.named_parameters()}
    others = sum(t.numel() for name, t in model.state_dict().items() if name not in mask and name in params)
    width = torch.finfo(dtype).bits // 8
    files = {p.relative_to(to).as_posix(): p.stat().st_size for p in exported_files(to)}
    with safe_open(to / "compact" / "compact.safetensors", "pt") as handle:  # the pruned matrices' share of it
        encoder = sum(math.prod(handle.get_slice(k).get_shape()) * _itemsize(handle.get_slice(k).get_dtype())
                      for k in handle.keys() if k.endswith(("::values", "::mask")))
    return {"bytes": files, "sha256": checksums(to), "compact_prunable_bytes": encoder, "prunable_weights": total, "kept_weights": kept,
            "ticket_bits_bytes": math.ceil(total / 8), "ticket_entropy_bytes": round(entropy_bytes(mask)),
            "ticket_entropy_per_matrix_bytes": round(entropy_bytes(mask, per_matrix=True)),
            "compact_bound_bytes": kept * width + sum(math.ceil(m.numel() / 8) for m in mask.values()) + others * width,
            "dense_prunable_bytes": total * 4}


def _itemsize(dtype: str) -> int:
    """Bytes per element of a safetensors dtype name (F32, BF16, U8, ...)."""
    return {"BOOL": 1, "U8": 1, "I8": 1, "I16": 2, "F16": 2, "BF16": 2, "I32": 4, "F32": 4, "I64": 8, "F64": 8}[dtype]


def export_report(result: dict, to: Path, tolerance: float) -> str:
    """What `lth export` prints: every file with its size and bound, and the dev metrics of each exported form."""
    files, mb = result["files"], lambda n: f"{n / 2**20:,.2f} MiB"
    lines = [f"exported level {result['level']} of {result['run']} ({pct(masks_sparsity(result))} sparse) to {to}",
             f"  ticket.safetensors   {mb(files['bytes']['ticket.safetensors'])}  (one bit a weight: "
             f"{mb(files['ticket_bits_bytes'])}; entropy bound {mb(files['ticket_entropy_bytes'])} at one density, "
             f"{mb(files['ticket_entropy_per_matrix_bytes'])} at each matrix's)",
             f"  model/               {mb(files['bytes']['model/model.safetensors'])}  (dense, zeros in place)",
             f"  compact/             {mb(files['bytes']['compact/compact.safetensors'])}  (bound "
             f"{mb(files['compact_bound_bytes'])}); its pruned matrices {mb(files['compact_prunable_bytes'])}, "
             f"{files['compact_prunable_bytes'] / files['dense_prunable_bytes']:.1%} of their dense "
             f"{mb(files['dense_prunable_bytes'])}"]
    if "model.onnx" in files["bytes"]:
        lines.append(f"  model.onnx           {mb(files['bytes']['model.onnx'])}")
    for name, values in result["metrics"].items():
        lines.append(f"  dev metrics, {name}: " + ", ".join(f"{k} {v:.4f}" for k, v in values.items() if v is not None))
    engine = result.get("fast_engine")
    if engine and "error" in engine:
        lines.append(f"  the fast engine (lth.load_fast) could not run this model: {engine['error']}")
    elif engine and engine["precision"] != "fp32":
        moved = f"the fast engine in {engine['precision']} moves {engine['primary']} by {engine['moves_points']:+.2f} points"
        lines.append(f"  {moved}" + ("" if engine["within_tolerance"] else
                     f": more than {tolerance}, so lth.load_fast and lth predict/speed run this ticket in "
                     "fp32 unless told --precision bf16"))
    int8 = result.get("int8_engine")
    if int8 and "error" in int8:
        lines.append(f"  the int8 engine could not run this model: {int8['error']}")
    elif int8:
        lines.append(f"  the fast engine in int8 moves {int8['primary']} by {int8['moves_points']:+.2f} points: "
                     + (f"within {int8['tolerance_points']}, so lth.load_fast and lth predict/speed run it in int8 "
                        "on a CPU with VNNI and no AMX"
                        if int8["within_tolerance"] else f"more than {int8['tolerance_points']}, so int8 runs only "
                        "when asked (--precision int8)"))
    return "\n".join(lines)


def masks_sparsity(result: dict) -> float:
    files = result["files"]
    return 1 - files["kept_weights"] / files["prunable_weights"]
