"""Portable tickets: a mask as a small file relative to its public base model, and the trained sparse model in
a compact form that stores only the surviving weights. Both are safetensors (loading never runs code)."""
from __future__ import annotations

import json
import lzma
import math
from pathlib import Path

import numpy as np
import torch
from torch import nn

from . import masks
from .errors import LthError
from .files import DamagedFile, load_tensors, save_tensors

TICKET = "lth-ticket/1"
COMPACT = "lth-compact/1"


# -- bits --------------------------------------------------------------------------------------------------

def pack(mask: torch.Tensor) -> tuple[torch.Tensor, str]:
    """One bit per weight (row-major), xz-compressed when that is smaller: (bytes as a uint8 tensor, encoding)."""
    bits = np.packbits(mask.reshape(-1).numpy().astype(np.uint8))
    squeezed = lzma.compress(bits.tobytes(), preset=6)
    if len(squeezed) < bits.nbytes:
        return torch.frombuffer(bytearray(squeezed), dtype=torch.uint8), "bits+xz"
    return torch.from_numpy(bits), "bits"


def unpack(data: torch.Tensor, encoding: str, shape: list[int]) -> torch.Tensor:
    raw = data.numpy().tobytes()
    if encoding == "bits+xz":
        raw = lzma.decompress(raw)
    elif encoding != "bits":
        raise ValueError(f"unknown encoding {encoding!r}")
    count = math.prod(shape)
    bits = np.unpackbits(np.frombuffer(raw, dtype=np.uint8), count=count)
    if bits.size != count:
        raise ValueError(f"{bits.size} bits where {count} are needed")
    return torch.from_numpy(bits.astype(bool)).reshape(shape)


def entropy_bytes(mask: masks.Mask, per_matrix: bool = False) -> float:
    """The entropy bound of a mask if each weight were kept independently with the mask's density: n·H(p)/8 bytes.

    `per_matrix`: with each matrix's own density instead (lower: global pruning keeps matrices unevenly), the
    bound a coder that knows the per-matrix densities could reach."""
    groups = [masks.count({k: m}) for k, m in mask.items()] if per_matrix else [masks.count(mask)]
    return sum(total * _binary_entropy(kept / total) / 8 for kept, total in groups if total)


def _binary_entropy(p: float) -> float:
    return 0.0 if p in (0.0, 1.0) else -(p * math.log2(p) + (1 - p) * math.log2(1 - p))


# -- the ticket: a mask relative to its base model ------------------------------------------------------------

def save_ticket(mask: masks.Mask, path: str | Path, info: dict) -> None:
    """`info`: what the ticket is (base model and its per-weight fingerprints, rule, task, level, metrics...)."""
    tensors, encodings = {}, {}
    for name, m in mask.items():
        tensors[name], encodings[name] = pack(m)
    meta = {"format": TICKET, "shapes": {n: list(m.shape) for n, m in mask.items()}, "encodings": encodings,
            "sparsity": masks.sparsity(mask), **info}
    save_tensors(tensors, path, {k: json.dumps(v) for k, v in meta.items()})


def read_meta(path: Path) -> dict:
    from .files import verify_tensors

    raw = verify_tensors(path)
    try:
        return {k: json.loads(v) for k, v in raw.items() if k != "lth_sha256"}
    except json.JSONDecodeError as exc:
        raise DamagedFile(path, f"its metadata is not JSON ({exc.msg})") from None


def load_ticket(path: str | Path) -> tuple[masks.Mask, dict]:
    """(mask, metadata) of a ticket file; a damaged or foreign file is one clear error."""
    path = ticket_file(path)
    tensors, _ = load_tensors(path)
    meta = read_meta(path)
    if meta.get("format") != TICKET:
        raise LthError(f"{path} is not an lth ticket (format {meta.get('format')!r}); export one with lth export, "
                       "or use a mask.safetensors with lth transfer")
    try:
        mask = {name: unpack(tensors[name], meta["encodings"][name], meta["shapes"][name]) for name in meta["shapes"]}
    except (KeyError, ValueError, lzma.LZMAError) as exc:
        raise DamagedFile(path, f"a packed mask does not decode ({exc})") from None
    return mask, meta


def ticket_file(path: str | Path) -> Path:
    path = Path(path).expanduser()
    if path.is_dir():
        path = path / "ticket.safetensors"
    if not path.is_file():
        raise LthError(f"no ticket at {path}; give a ticket.safetensors or the folder lth export wrote")
    return path


def apply_ticket(model: nn.Module, path: str | Path, check_base: bool = True) -> masks.Mask:
    """Zero the weights a ticket prunes, in place; returns the mask (keyed by the model's parameter names).

    Refused, with the reason, when the model is not the ticket's base model: other prunable weights, other
    shapes, or (with `check_base`) other pre-trained values. Apply it to the freshly loaded pre-trained model;
    `check_base=False` applies it to a model already trained from that base (only names and shapes checked)."""
    from .models import prunable_weights
    from .transfers import base_fingerprint

    mask, meta = load_ticket(path)
    rule = meta.get("rule", {})
    weights = _aligned(prunable_weights(model, rule.get("include", []), rule.get("exclude", [])), mask, model)
    masks.check(mask, weights, f"the ticket {path} (base {meta.get('base_model')})")
    if check_base:
        here, there = base_fingerprint(weights), meta.get("base_fingerprints", {})
        differ = [name for name in mask if there.get(name, here[name]) != here[name]]
        if differ:
            raise LthError(f"the ticket {path} was found on {meta.get('base_model')}, and this model's pre-trained "
                           f"values differ ({differ[0]} and {len(differ) - 1} more): apply it to that model freshly "
                           "loaded, or pass check_base=False for a model already fine-tuned from it")
    masks.apply_(weights, mask)
    return mask


def _aligned(weights: dict, mask: masks.Mask, model: nn.Module) -> dict:
    """The model's prunable weights under the ticket's names: a bare encoder (BertModel) lacks the head
    model's prefix ("bert.")."""
    prefix = getattr(model, "base_model_prefix", "") + "."
    if set(mask) <= set(weights) or not all(name.startswith(prefix) for name in mask):
        return weights
    return {prefix + name: w for name, w in weights.items()}


# -- the compact model: only the surviving weights --------------------------------------------------------------

def save_compact(model: nn.Module, mask: masks.Mask, path: str | Path, dtype: torch.dtype, info: dict) -> None:
    """The model's weights with each masked matrix as its kept values (row-major) and its bit mask."""
    tensors, tied, seen = {}, [], {}
    for name, tensor in model.state_dict().items():
        key = (tensor.data_ptr(), tuple(tensor.shape))
        if key in seen and tensor.numel():
            tied.append([name, seen[key]])
            continue
        seen[key] = name
        value = tensor.detach().to(dtype) if tensor.is_floating_point() else tensor.detach()
        if name in mask:
            tensors[f"{name}::values"] = value[mask[name]].contiguous()
            tensors[f"{name}::mask"], encoding = pack(mask[name])
            info.setdefault("encodings", {})[name] = encoding
        else:
            tensors[name] = value.contiguous()
    meta = {"format": COMPACT, "shapes": {n: list(m.shape) for n, m in mask.items()}, "tied": tied,
            "dtype": str(dtype).replace("torch.", ""), **info}
    save_tensors(tensors, path, {k: json.dumps(v) for k, v in meta.items()})


def load_compact(path: str | Path, dtype: torch.dtype = torch.float32) -> nn.Module:
    """The Hugging Face model stored in a compact folder (config.json and compact.safetensors), in `dtype`."""
    import transformers

    folder = Path(path).expanduser()
    folder = folder / "compact" if (folder / "compact" / "compact.safetensors").is_file() else folder
    file = folder / "compact.safetensors"
    if not file.is_file():
        raise LthError(f"no compact model at {folder}; give the compact/ folder that lth export wrote")
    tensors, _ = load_tensors(file)
    meta = read_meta(file)
    if meta.get("format") != COMPACT:
        raise LthError(f"{file} is not an lth compact model (format {meta.get('format')!r})")
    config = transformers.AutoConfig.from_pretrained(folder)
    model = getattr(transformers, config.architectures[0])(config)
    state = {}
    try:
        for name, shape in meta["shapes"].items():
            keep = unpack(tensors.pop(f"{name}::mask"), meta["encodings"][name], shape)
            values = tensors.pop(f"{name}::values")
            full = torch.zeros(shape, dtype=values.dtype)
            full[keep] = values
            state[name] = full
    except (KeyError, ValueError, RuntimeError, lzma.LZMAError) as exc:
        raise DamagedFile(file, f"a masked matrix does not decode ({exc})") from None
    state.update(tensors)
    result = model.load_state_dict({k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()},
                                   strict=False)
    missing = set(result.missing_keys) - {name for name, _ in meta["tied"]}
    if missing:
        raise DamagedFile(file, f"it has no values for {sorted(missing)[0]} (and {len(missing) - 1} more)")
    return model.to(dtype).eval()


# -- what a mask removes where ---------------------------------------------------------------------------------

def density_map(mask: masks.Mask) -> dict[str, dict[str, float]]:
    """{layer: {matrix: density}}: "0".."N-1" for the encoder's layers (matrix: the name inside the layer, e.g.
    attention.self.query), and one row per matrix outside the layers (e.g. pooler.dense)."""
    import re

    rows: dict[str, dict[str, float]] = {}
    for name, m in mask.items():
        found = re.search(r"\.(?:layer|layers|block)\.(\d+)\.(.+)\.weight$", name)
        row, column = (found[1], found[2]) if found else (name.removesuffix(".weight").split(".", 1)[-1], "")
        rows.setdefault(row, {})[column] = m.float().mean().item()
    return rows


def matrix_types(rows: dict[str, dict[str, float]]) -> list[str]:
    """The matrix names inside a layer, in BERT's order (query, key, value, attention output, FFN in, FFN out)."""
    order = ("query", "key", "value", "attention.output", "intermediate", "output")
    rank = lambda c: next((i for i, part in enumerate(order) if part in c), len(order))  # noqa: E731
    return sorted(dict.fromkeys(c for row in rows.values() for c in row if c), key=lambda c: (rank(c), c))


def short_column(name: str) -> str:
    return (name.replace("attention.self.", "").replace("attention.output.dense", "attn-out")
            .replace("intermediate.dense", "ffn-in").replace("output.dense", "ffn-out"))


def format_density(mask: masks.Mask) -> str:
    rows = density_map(mask)
    columns = matrix_types(rows)
    lines = [["layer", *map(short_column, columns)]]
    for row, cells in rows.items():
        if "" in cells:
            lines.append([row, f"{cells['']:.1%}"] + [""] * (len(columns) - 1))
        else:
            lines.append([row, *(f"{cells[c]:.1%}" if c in cells else "-" for c in columns)])
    widths = [max(len(line[i]) for line in lines) for i in range(len(lines[0]))]
    return "\n".join("  ".join(x.rjust(w) for x, w in zip(line, widths)) for line in lines)
