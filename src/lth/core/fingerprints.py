"""Content fingerprints: of plain data (a task's examples), of pre-trained weights (which base model a mask was
found on) and of masks (a transfer's branch name)."""
from __future__ import annotations

import hashlib
import json

import torch

from .masks import Mask


def fingerprint(obj) -> str:
    """A short content hash of plain data (lists, dicts, strings, numbers): equal content, equal name."""
    blob = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str, ensure_ascii=False)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def base_fingerprint(weights: dict[str, torch.Tensor]) -> dict[str, str]:
    """Per weight, a hash of its values (as float32): equal only for the same pre-trained model."""
    return {name: hashlib.sha256(w.detach().float().cpu().contiguous().numpy().tobytes()).hexdigest()[:16]
            for name, w in weights.items()}


def combined(fingerprints: dict[str, str]) -> str:
    """One short hash of per-weight fingerprints."""
    return hashlib.sha256("".join(f"{k}={v};" for k, v in sorted(fingerprints.items())).encode()).hexdigest()[:16]


def mask_fingerprint(mask: Mask) -> str:
    digest = hashlib.sha256()
    for name in sorted(mask):
        digest.update(f"{name}{tuple(mask[name].shape)}".encode())
        digest.update(mask[name].contiguous().numpy().tobytes())
    return digest.hexdigest()[:12]
