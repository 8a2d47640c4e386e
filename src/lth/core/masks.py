"""A mask is data: a dict from Hugging Face parameter name to a boolean tensor (True = kept)."""
from __future__ import annotations

import json
import re
from pathlib import Path

import torch

from .errors import LthError
from .tensors import load_tensors, save_tensors

Mask = dict[str, torch.Tensor]


def ones(weights: dict[str, torch.Tensor]) -> Mask:
    return {name: torch.ones_like(w, dtype=torch.bool) for name, w in weights.items()}


def count(mask: Mask) -> tuple[int, int]:
    """(kept, total) weights."""
    kept = sum(int(torch.count_nonzero(m)) for m in mask.values())  # .sum() would make an int64 copy
    return kept, sum(m.numel() for m in mask.values())


def sparsity(mask: Mask) -> float:
    kept, total = count(mask)
    return 1.0 - kept / total


def distance(a: Mask, b: Mask) -> float:
    """The normalised Hamming distance of two masks of the same weights: the fraction of weights kept by one and
    pruned by the other (early-bird's measure of a mask that has stopped changing)."""
    differ = sum(int(torch.count_nonzero(a[name] ^ b[name])) for name in a)
    return differ / sum(m.numel() for m in a.values())


def nearly_empty(mask: Mask, below: float = 0.01) -> dict[str, float]:
    """Matrices keeping less than `below` of their weights: a layer that is effectively gone."""
    densities = {name: m.float().mean().item() for name, m in mask.items()}
    return {name: d for name, d in densities.items() if d < below}


@torch.no_grad()
def apply_(weights: dict[str, torch.Tensor], mask: Mask) -> None:
    """Zero the pruned weights in place."""
    for name, m in mask.items():
        weights[name].mul_(m.to(weights[name].device))


def check(mask: Mask, weights: dict[str, torch.Tensor], source: str = "the mask") -> None:
    """Fail clearly when a mask was made for another model or another prunable set."""
    missing = sorted(set(weights) - set(mask))
    extra = sorted(set(mask) - set(weights))
    if missing or extra:
        sample = (extra or missing)[0]
        raise LthError(f"{source} does not fit this model: {len(extra)} of its weights are not prunable here and "
                       f"{len(missing)} prunable weights have no entry (e.g. {sample}); "
                       "use a mask made for the same base model and the same --include/--exclude")
    for name, m in mask.items():
        if m.shape != weights[name].shape:
            raise LthError(f"{source} does not fit this model: {name} is {tuple(m.shape)} in the mask but "
                           f"{tuple(weights[name].shape)} in the model; use a mask made for the same base model")


def save(mask: Mask, path: str | Path, metadata: dict | None = None) -> str:
    """Write a mask (sealed with a checksum, canonical bytes); returns the checksum."""
    meta = {"sparsity": f"{sparsity(mask):.6f}", **{k: json.dumps(v) for k, v in (metadata or {}).items()}}
    return save_tensors(mask, path, meta)


def load(path: str | Path) -> Mask:
    """A mask file, verified against its checksum: booleans, or numbers that are exactly 0 or 1 (anything else is
    no mask, and a float in (0, 1) must not silently read as "kept")."""
    try:
        tensors, _ = load_tensors(path)
    except FileNotFoundError:
        raise LthError(f"no mask file at {path}; give the path of a mask.safetensors written by lth") from None
    if not tensors:
        raise LthError(f"{path} holds no tensors, so it is no mask; give a mask.safetensors written by lth")
    for name, tensor in tensors.items():
        if tensor.dtype != torch.bool and not bool(((tensor == 0) | (tensor == 1)).all()):
            raise LthError(f"{path} is not a mask: {name} holds values other than 0 and 1 ({tensor.dtype}); a mask "
                           "is booleans (or exactly 0 and 1), one per weight")
    return {k: v.bool() for k, v in tensors.items()}


# -- what a mask removes where ---------------------------------------------------------------------------

def density_map(mask: Mask) -> dict[str, dict[str, float]]:
    """{layer: {matrix: density}}: "0".."N-1" for the encoder's layers (matrix: the name inside the layer, e.g.
    attention.self.query), and one row per matrix outside the layers (e.g. pooler.dense)."""
    rows: dict[str, dict[str, float]] = {}
    for name, m in mask.items():
        row, column = place(name)
        rows.setdefault(row, {})[column] = m.float().mean().item()
    return rows


def place(name: str) -> tuple[str, str]:
    """A weight's (layer, matrix inside it): ("3", "attention.self.query"); outside the layers (name, "")."""
    found = re.search(r"\.(?:layer|layers|block)\.(\d+)\.(.+)\.weight$", name)
    return (found[1], found[2]) if found else (name.removesuffix(".weight").split(".", 1)[-1], "")


def type_density(mask: Mask) -> dict[str, float]:
    """The share of weights kept in each matrix type over all layers (query, ..., ffn-out; pooler.dense)."""
    counts: dict[str, list[int]] = {}
    for name, m in mask.items():
        row, column = place(name)
        kept = counts.setdefault(short_column(column) if column else row, [0, 0])
        kept[0] += int(torch.count_nonzero(m))
        kept[1] += m.numel()
    return {name: kept / total for name, (kept, total) in counts.items()}


def matrix_types(rows: dict[str, dict[str, float]]) -> list[str]:
    """The matrix names inside a layer, in BERT's order (query, key, value, attention output, FFN in, FFN out)."""
    order = ("query", "key", "value", "attention.output", "intermediate", "output")
    rank = lambda c: next((i for i, part in enumerate(order) if part in c), len(order))  # noqa: E731
    return sorted(dict.fromkeys(c for row in rows.values() for c in row if c), key=lambda c: (rank(c), c))


def short_column(name: str) -> str:
    return (name.replace("attention.self.", "").replace("attention.output.dense", "attn-out")
            .replace("intermediate.dense", "ffn-in").replace("output.dense", "ffn-out"))
