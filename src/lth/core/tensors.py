"""Tensor files: safetensors with a canonical header (the same tensors always give the same bytes) and the sha256
of their data in the metadata, verified on every read; model weights and training checkpoints."""
from __future__ import annotations

import hashlib
import json
import struct
from pathlib import Path

import torch
from safetensors.torch import load_file
from safetensors.torch import load_model as _load_model
from tqdm.auto import tqdm

from .errors import first_line
from .files import DamagedFile, atomic_path

CHECKSUM = "lth_sha256"  # metadata key of a tensor file: sha256 of its data section

DTYPES = {torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16", torch.float64: "F64",
          torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8", torch.uint8: "U8",
          torch.bool: "BOOL"}


def _raw(tensor: torch.Tensor) -> memoryview:
    """The tensor's bytes, little-endian as safetensors stores them (lth runs on little-endian machines)."""
    flat = tensor.detach().cpu().contiguous().reshape(-1)
    return memoryview(flat.view(torch.uint8).numpy()) if flat.numel() else memoryview(b"")


def save_tensors(tensors: dict[str, torch.Tensor], path: str | Path, metadata: dict | None = None) -> str:
    """Write a safetensors file with a canonical header (sorted, so equal tensors give equal bytes) and the
    sha256 of its data section in the metadata; returns that checksum.

    Written here rather than by safetensors' writer, which makes its own hidden temporary file and mode-0600
    files, outside the locking and umask of `atomic_path`."""
    names = sorted(tensors)
    digest, header, offset = hashlib.sha256(), {}, 0
    for name in names:
        raw = _raw(tensors[name])
        digest.update(raw)
        header[name] = {"dtype": DTYPES[tensors[name].dtype], "shape": list(tensors[name].shape),
                        "data_offsets": [offset, offset + raw.nbytes]}
        offset += raw.nbytes
    checksum = digest.hexdigest()
    header["__metadata__"] = {**{k: str(v) for k, v in (metadata or {}).items()}, CHECKSUM: checksum}
    text = json.dumps(header, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    text = text.ljust(-(-len(text) // 8) * 8)  # data aligned to 8 bytes, padded with spaces as the format allows
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        handle.write(struct.pack("<Q", len(text)) + text)
        for name in names:
            handle.write(_raw(tensors[name]))
    return checksum


def _header(handle) -> tuple[int, dict]:
    raw = handle.read(8)
    if len(raw) < 8:
        raise ValueError("shorter than a safetensors header")
    (size,) = struct.unpack("<Q", raw)
    if size > 100_000_000:
        raise ValueError("its header length is implausible")
    text = handle.read(size)
    if len(text) < size:
        raise ValueError("truncated inside its header")
    header = json.loads(text)
    if not isinstance(header, dict):
        raise ValueError("its header is not a JSON object")
    return size, header


def _data_digest(handle, start: int) -> tuple[str, int]:
    handle.seek(start)
    digest, length = hashlib.sha256(), 0
    while chunk := handle.read(1 << 22):
        digest.update(chunk)
        length += len(chunk)
    return digest.hexdigest(), length


_verified: dict[str, tuple] = {}


def verify_tensors(path: str | Path) -> dict[str, str]:
    """Check a tensor file's header, size and checksum; returns its metadata. Raises DamagedFile."""
    path = Path(path)
    try:
        stat = path.stat()
        with open(path, "rb") as handle:
            size, header = _header(handle)
            meta = header.get("__metadata__") or {}
            key = (stat.st_ino, stat.st_size, stat.st_mtime_ns)
            if _verified.get(str(path)) == key:
                return meta
            checksum, length = _data_digest(handle, 8 + size)
    except FileNotFoundError:
        raise
    except (OSError, ValueError) as exc:
        raise DamagedFile(path, first_line(exc)) from None
    ends = [entry["data_offsets"][1] for name, entry in header.items()
            if name != "__metadata__" and isinstance(entry, dict) and "data_offsets" in entry]
    if length != max(ends, default=0):
        raise DamagedFile(path, f"its data section has {length:,} bytes, its header expects {max(ends, default=0):,}"
                          " (truncated?)")
    if CHECKSUM in meta and meta[CHECKSUM] != checksum:
        raise DamagedFile(path, "its checksum does not match its contents")
    _verified[str(path)] = key
    return meta


def load_tensors(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """(tensors, metadata) of a verified tensor file."""
    meta = verify_tensors(path)
    try:
        return load_file(str(path)), meta
    except Exception as exc:  # safetensors' own error type: a malformed header the checks above let through
        raise DamagedFile(path, first_line(exc)) from None


def load_into(model: torch.nn.Module, path: str | Path) -> None:
    """Load a verified weights file (written by `save_model`) into `model`, shared weights included."""
    verify_tensors(path)
    try:
        _load_model(model, str(path))
    except Exception as exc:
        raise DamagedFile(path, first_line(exc)) from None


def save_model(model: torch.nn.Module, path: str | Path, metadata: dict | None = None) -> str:
    """All of a model's weights as a tensor file, a weight shared by several names (tied embeddings) once under
    its first name, as safetensors' `load_model` expects; returns the checksum."""
    state, seen = {}, set()
    for name, tensor in model.state_dict().items():
        key = (tensor.data_ptr(), tuple(tensor.shape), tensor.stride(), tensor.dtype)
        if key not in seen or tensor.numel() == 0:
            seen.add(key)
            state[name] = tensor
    return save_tensors(state, path, metadata)


# --- checkpoints -------------------------------------------------------------------------------------

def save_checkpoint(state: dict, path: str | Path) -> None:
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def load_checkpoint(path: str | Path) -> dict | None:
    """A training checkpoint, or None when it is damaged (it is then deleted: the unit starts over).

    Loaded with weights_only: tensors, numbers and containers, never code."""
    path = Path(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(state, dict) or not {"model", "optimizer", "step", "rng"} <= state.keys():
            raise ValueError("not an lth checkpoint")
        return state
    except FileNotFoundError:
        return None
    except Exception as exc:  # torch raises many types for a truncated or foreign file
        tqdm.write(f"warning: {path} is damaged ({first_line(exc)[:120]}); deleted it, the unit starts over")
        path.unlink(missing_ok=True)
        return None
