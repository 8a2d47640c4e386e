"""An export's files as ticket.json records them (size and sha256 of each), verified before anything reads them:
a truncated, flipped, deleted or swapped-in file is named with the fix, never served.

The full hash is cheap next to loading the model (sha256 reads a few hundred MB/s) and is done once per file
and process: a file is hashed again only when its size, inode or modification time changed."""
from __future__ import annotations

import hashlib
from pathlib import Path

from ..core.errors import LthError
from ..core.files import DamagedFile, load_json

RECORD = "ticket.json"  # written last: its presence means the export is complete
CHECKPOINT = ".lth-export.checkpoint.pt"  # a retraining's checkpoint, kept in the export folder while it runs
_hashed: dict[str, tuple[tuple, str]] = {}


def sha256(path: Path) -> str:
    stat = path.stat()
    key = (stat.st_ino, stat.st_size, stat.st_mtime_ns)
    known = _hashed.get(str(path))
    if known and known[0] == key:
        return known[1]
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 22):
            digest.update(chunk)
    _hashed[str(path)] = (key, digest.hexdigest())
    return digest.hexdigest()


def exported_files(folder: Path) -> list[Path]:
    """Every file an export holds, ticket.json and hidden files (a retraining's checkpoint) left out."""
    return [p for p in sorted(folder.rglob("*")) if p.is_file() and p.name != RECORD
            and not any(part.startswith(".") for part in p.relative_to(folder).parts)]


def checksums(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): sha256(p) for p in exported_files(folder)}


def export_folder(path: Path) -> Path | None:
    """The export a path is part of (the folder itself, or the folder above a file or sub-folder of it)."""
    for folder in (path, *path.parents)[:3]:
        if (folder / RECORD).is_file():
            return folder
    return None


def read_record(folder: Path) -> dict:
    info = load_json(folder / RECORD, {"files": dict, "level": int, "run": str})
    if not isinstance(info["files"].get("bytes"), dict):
        raise DamagedFile(folder / RECORD, "no 'files.bytes' entry")
    return info


def verify(folder: Path, under: str = "") -> dict:
    """Check the recorded files of an export that are `under` (a file, or a folder: every file by default) against
    their size and checksum; returns ticket.json's content. Raises LthError naming the file and the fix."""
    info = read_record(folder)
    listed = info["files"].get("sha256")
    if listed is None:  # written by an lth that recorded sizes only
        listed = {name: None for name in info["files"]["bytes"]}
    if under and under not in listed:
        under += "/"  # a folder of the export
    fix = (f"export it again: lth export RUN --level {info['level']} --to {folder} --force (RUN: the run folder of "
           f"{info['run']})")
    for name, expected in listed.items():
        if not name.startswith(under) or name == RECORD:  # an older lth listed ticket.json itself, as it was before
            continue
        path = folder / name
        if not path.is_file():
            raise LthError(f"{path} is missing from the export (ticket.json lists it); {fix}")
        size = path.stat().st_size
        if size != info["files"]["bytes"].get(name, size):
            raise LthError(f"{path} is damaged (it has {size:,} bytes, ticket.json records "
                           f"{info['files']['bytes'][name]:,}); {fix}")
        if expected is not None and sha256(path) != expected:
            raise LthError(f"{path} is damaged, or comes from another export (its checksum does not match "
                           f"ticket.json); {fix}")
    return info


def check_inside(path: Path) -> None:
    """Verify the files of the export `path` belongs to that are `path` or lie under it, present or not (nothing
    when `path` is no export's)."""
    folder = export_folder(path)
    if folder is None:
        return
    verify(folder, "" if path == folder else path.relative_to(folder).as_posix())
