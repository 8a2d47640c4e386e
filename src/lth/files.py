"""The file layer: every file lth writes and reads back goes through here.

Writes are atomic (a temporary name, then one rename), the temporary file is locked by its writer for its
whole life (so a later run can tell a dead writer's leftover from a live one's work), and files get the
permissions the umask gives. Tensor files carry a checksum of their data and a canonical header (the same
tensors always give the same bytes). Reads are checked: a damaged file is reported with its path and what to
do, never as a traceback from deep inside a library.
"""
from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import os
import re
import shutil
import struct
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import torch

from .errors import LthError, first_line

TMP_SUFFIX = ".tmp"
CHECKSUM = "lth_sha256"  # metadata key of a tensor file: sha256 of its data section


def _current_umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def share(folder: Path) -> None:
    """Give the files in `folder` the permissions the umask gives: libraries that write through a temporary file
    (transformers' save_pretrained) leave their weights 0600, unreadable to whoever the folder is shared with."""
    mode = 0o666 & ~_current_umask()
    for path in Path(folder).iterdir():
        if path.is_file() and not path.is_symlink():
            path.chmod(mode)


class DamagedFile(LthError):
    """A file lth wrote earlier cannot be read back; the message says which and what to do."""

    def __init__(self, path: str | Path, reason: str):
        self.path = Path(path)
        super().__init__(f"{self.path} is damaged ({reason}); {advice(self.path)}")


def advice(path: Path) -> str:
    """What a user does about a damaged file, from where it sits in a run directory."""
    name, parent = path.name, path.parent
    level = re.fullmatch(r"level_(\d\d)", parent.name)
    if level and name == "mask.safetensors" and not _in_branch(parent):
        if int(level[1]) == 0:
            return f"delete {path} and rerun the same command: it is written again"
        before = parent.parent / f"level_{int(level[1]) - 1:02d}" / "metrics.json"
        return (f"delete {before} and rerun the same command: level {int(level[1]) - 1} is trained again "
                "and writes this mask anew")
    if level and name == "mask.safetensors":
        return f"delete the folder {parent} and rerun the same command: that unit is trained again"
    if level:  # the unit's other files are all written again when it is trained again
        return f"delete {parent / 'metrics.json'} and rerun the same command: that unit is trained again"
    if name == "settings.json":
        return f"delete {path} and rerun the same command that made the run: it is written again"
    if name.startswith("rewind_step_"):
        return f"delete {path} and {parent / 'level_00' / 'metrics.json'}, then rerun the same command"
    if (parent / "settings.json").exists():
        return f"delete {path} and rerun the same command"
    return "replace it with an intact copy"


def _in_branch(folder: Path) -> bool:
    return "branches" in folder.parts


def unwritable(path: Path, exc: BaseException) -> LthError:
    """One line for a failed write: the path, the system's reason, and what to do about it."""
    code = getattr(exc, "errno", None)
    reason = getattr(exc, "strerror", None) or first_line(exc)
    if code in (errno.EACCES, errno.EPERM, errno.EROFS):
        fix = "make the folder writable, or pass --runs-dir (or --to) with a folder you can write to"
    elif code in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG) or "unexpected pos" in str(exc):
        fix = (f"free some space (the disk has {_free(path)} free) or lift the file-size limit, then rerun the "
               "same command: finished work is kept and the interrupted unit resumes")
    else:
        fix = "check the path and the disk, then rerun the same command"
    return LthError(f"cannot write {path}: {reason}; {fix}")


def _free(path: Path) -> str:
    for folder in (path, *path.parents):
        if folder.exists():
            return f"{shutil.disk_usage(folder).free / 2**20:,.0f} MiB"
    return "an unknown amount"


_writes = True  # False in the other processes of a group: only the main process writes (see parallel.py)


def only_main_writes(main: bool) -> None:
    """In a group of processes training one unit together, the main process writes every file; the others
    compute the same things and write them nowhere."""
    global _writes
    _writes = main


def writing() -> bool:
    """Whether this process writes files (the main one of a group, or the only one)."""
    return _writes


def remove(path: str | Path) -> None:
    """Delete a file (if this process writes files)."""
    if _writes:
        Path(path).unlink(missing_ok=True)


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success it replaces `path` in one step.

    The temporary file is flock-ed until the write ends: `sweep` removes only files whose writer is gone."""
    path = Path(path)
    if not _writes:
        yield Path(os.devnull)
        return
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=TMP_SUFFIX)
    except OSError as exc:
        raise unwritable(path, exc) from None
    try:
        _lock(fd)
        os.fchmod(fd, 0o666 & ~_current_umask())  # mkstemp makes 0600: others sharing the run could not read it
        yield Path(tmp)
        os.replace(tmp, path)
    except Exception as exc:
        # torch's writer reports a full disk as a RuntimeError, safetensors' as its own error type
        if isinstance(exc, LthError) or not _is_io_error(exc):
            raise
        raise unwritable(path, exc) from None
    finally:
        os.close(fd)
        if os.path.exists(tmp):
            os.unlink(tmp)


def _lock(fd: int) -> None:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
    except OSError:  # a file system without locks: the write goes on; `sweep` then leaves the file alone
        pass


def _is_io_error(exc: BaseException) -> bool:
    text = str(exc)
    return isinstance(exc, OSError) or "unexpected pos" in text or "I/O error" in text or "os error" in text


def sweep(folder: str | Path) -> list[Path]:
    """Delete the temporary files under `folder` that an interrupted writer left; returns them.

    A live writer holds the lock on its temporary file, so its file is left alone."""
    removed = []
    if not _writes:
        return removed
    for tmp in Path(folder).rglob(f".*{TMP_SUFFIX}"):
        try:
            fd = os.open(tmp, os.O_RDONLY)
        except OSError:
            continue  # renamed or removed by its writer meanwhile
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:  # held by a live writer (or no locks here: whose it is cannot be told)
            continue
        else:
            tmp.unlink(missing_ok=True)
            removed.append(tmp)
        finally:
            os.close(fd)
    return removed


def fingerprint(obj) -> str:
    """A short content hash of plain data (lists, dicts, strings, numbers): equal content, equal name."""
    blob = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str, ensure_ascii=False)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


# --- JSON -------------------------------------------------------------------------------------------

def save_json(obj, path: str | Path) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2) + "\n")


def load_json(path: str | Path, required: dict[str, type | tuple] | None = None):
    """A JSON file lth wrote; `required` names keys that must be there, with their types."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DamagedFile(path, f"not readable JSON: {first_line(exc)}") from None
    for key, kind in (required or {}).items():
        if not isinstance(data, dict) or key not in data:
            raise DamagedFile(path, f"no '{key}' entry")
        if not isinstance(data[key], kind) or isinstance(data[key], bool) and bool not in _tuple(kind):
            raise DamagedFile(path, f"'{key}' is {type(data[key]).__name__}, not {_names(kind)}")
    return data


def _tuple(kind) -> tuple:
    return kind if isinstance(kind, tuple) else (kind,)


def _names(kind) -> str:
    return " or ".join(k.__name__ for k in _tuple(kind))


# --- tensor files (safetensors) ----------------------------------------------------------------------

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
    from safetensors.torch import load_file

    meta = verify_tensors(path)
    try:
        return load_file(str(path)), meta
    except Exception as exc:  # safetensors' own error type: a malformed header the checks above let through
        raise DamagedFile(path, first_line(exc)) from None


def load_into(model: torch.nn.Module, path: str | Path) -> None:
    """Load a verified weights file (written by `save_model`) into `model`, shared weights included."""
    from safetensors.torch import load_model

    verify_tensors(path)
    try:
        load_model(model, str(path))
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
        from tqdm.auto import tqdm

        tqdm.write(f"warning: {path} is damaged ({first_line(exc)[:120]}); deleted it, the unit starts over")
        path.unlink(missing_ok=True)
        return None
