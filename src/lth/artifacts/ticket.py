"""Portable tickets: a mask as a small file relative to its public base model (safetensors: loading never runs
code). The trained sparse model in compact form is in `compact.py`."""
from __future__ import annotations

import json
import lzma
import math
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..core import masks
from ..core.errors import LthError
from ..core.files import DamagedFile
from ..core.fingerprints import base_fingerprint
from ..core.models import prunable_weights
from ..core.tensors import load_tensors, save_tensors, verify_tensors
from .hub import REPO_ID, hub_file
from .manifest import check_inside

TICKET = "lth-ticket/1"


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
    """The metadata of an lth tensor file (ticket or compact model), each value decoded from JSON."""
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
    """A ticket's file: a ticket.safetensors, the export folder holding it, or a Hub repository id (owner/name)."""
    if not Path(path).expanduser().exists() and REPO_ID.fullmatch(str(path)):
        return hub_file(str(path), "ticket.safetensors")
    path = Path(path).expanduser()
    if path.is_dir():
        path = path / "ticket.safetensors"
    if not path.is_file():
        raise LthError(f"no ticket at {path}; give a ticket.safetensors or the folder lth export wrote")
    check_inside(path)
    return path


def apply_ticket(model: nn.Module, path: str | Path, check_base: bool = True) -> masks.Mask:
    """Zero the weights a ticket prunes, in place; returns the mask (keyed by the model's parameter names).

    Refused, with the reason, when the model is not the ticket's base model: other prunable weights, other
    shapes, or (with `check_base`) other pre-trained values. Apply it to the freshly loaded pre-trained model;
    `check_base=False` applies it to a model already trained from that base (only names and shapes checked)."""
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
