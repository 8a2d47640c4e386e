"""The file layer: every file lth writes and reads back goes through here.

Writes are atomic (a temporary name, then one rename), the temporary file is locked by its writer for its
whole life (so a later run can tell a dead writer's leftover from a live one's work), and files get the
permissions the umask gives. Reads are checked: a damaged file is reported with its path and what to do, never
as a traceback from deep inside a library. Tensor files (safetensors with a checksum) are in `tensors.py`.
"""
from __future__ import annotations

import errno
import fcntl
import json
import os
import re
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from .errors import LthError, first_line

TMP_SUFFIX = ".tmp"


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
        fix = ("make the folder writable, or write somewhere else (lth find --runs-dir, lth export and lth report --to, "
               "lth predict --output)")
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


_writes = True  # False in the other processes of a group: only the main process writes (see devices.py)


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
