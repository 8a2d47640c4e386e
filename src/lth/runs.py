"""Run directories and atomic file writes: an interrupted run never leaves a half-file that looks finished."""
from __future__ import annotations

import fcntl
import json
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import torch

from .config import BASELINES


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success it replaces `path` in one step."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def save_json(obj, path: str | Path) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=False) + "\n")


def load_json(path: str | Path):
    return json.loads(Path(path).read_text())


def save_torch(obj, path: str | Path) -> None:
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def load_torch(path: str | Path):
    # Checkpoints hold RNG states and optimizer dicts we wrote ourselves.
    return torch.load(path, map_location="cpu", weights_only=False)


def level_dir(run_dir: Path, level: int) -> Path:
    return run_dir / f"level_{level:02d}"


class Claim:
    """An exclusive claim on a unit of work (a directory), so several `lth` processes can share one run.

    It is an flock on `where/lock`: the kernel drops it when the holder exits, even on SIGKILL, so a crashed
    worker never leaves a stale claim behind."""

    def __init__(self, where: Path):
        self.path = Path(where) / "lock"
        self._file = None

    def acquire(self) -> bool:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        handle = open(self.path, "a")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            return False
        self._file = handle
        return True

    def release(self) -> None:
        if self._file is not None:
            fcntl.flock(self._file, fcntl.LOCK_UN)
            self._file.close()
            self._file = None

    def held_elsewhere(self) -> bool:
        """True while another process holds the claim."""
        if not self.path.exists():
            return False
        if self.acquire():
            self.release()
            return False
        return True


def branch_dir(run_dir: Path, kind: str, seed: int, level: int) -> Path:
    """Where a seed or baseline of one level is trained: branches/<kind>/seed_<seed>/level_NN."""
    return run_dir / "branches" / kind / f"seed_{seed}" / f"level_{level:02d}"


def collect_results(run: Path, search_seed: int, levels: list[int] | None = None) -> dict:
    """The verdict's table from what is on disk: {"full": [metrics...], "levels": {sparsity: {kind: [metrics...]}}}.

    The full model is level 0 of the search plus the other seeds' dense runs; each judged level has IMP
    (the search's own level plus its other seeds) and every baseline trained there. Only finished units count."""
    trunk = {r["level"]: r for r in map(load_json, sorted(run.glob("level_*/metrics.json")))}
    branches = [load_json(p) for p in sorted(run.glob("branches/*/seed_*/level_*/metrics.json"))]
    full = [trunk[0]["metrics"]] if 0 in trunk else []
    full += [r["metrics"] for r in branches if r["kind"] == "full" and r["seed"] != search_seed]
    wanted = sorted(trunk.keys() - {0}) if levels is None else levels
    table: dict[str, dict[str, list]] = {}
    for level in wanted:
        if level not in trunk:
            continue
        row = table.setdefault(f"{trunk[level]['sparsity']:.6f}", {"imp": [trunk[level]["metrics"]]})
        for kind in ("imp", *BASELINES):  # columns in the order of the paper's baselines
            runs = [r["metrics"] for r in branches if r["level"] == level and r["kind"] == kind]
            if runs:
                row.setdefault(kind, []).extend(runs)
    return {"full": full, "levels": table}
