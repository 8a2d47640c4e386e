"""Run directories: where each unit of work lives, claims on units, and the results table read from disk."""
from __future__ import annotations

import fcntl
from pathlib import Path

from .config import BASELINES
from .errors import LthError
from .files import DamagedFile, load_json, verify_tensors

# What a finished unit records; checked whenever a metrics.json is read back.
RECORD = {"level": (int, type(None)), "kind": str, "seed": int, "sparsity": (int, float), "metrics": dict}


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
        except OSError as exc:  # ENOLCK, EOPNOTSUPP: a file system without locks (sshfs, NFS without lockd)
            handle.close()
            raise LthError(f"the file system of {self.path.parent} does not support file locks ({exc.strerror}), which "
                           "lth needs to share a run between processes; put --runs-dir on a local disk or on a "
                           "file system with flock (NFSv4, Lustre mounted with -o flock, BeeGFS, GPFS)") from None
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
    trunk, branches = _records(run)
    full = _full(trunk, branches, search_seed)
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


def _records(run: Path) -> tuple[dict[int, dict], list[dict]]:
    trunk = {r["level"]: r for r in map(read_record, sorted(run.glob("level_*/metrics.json")))}
    return trunk, [read_record(p) for p in sorted(run.glob("branches/*/seed_*/level_*/metrics.json"))]


def _full(trunk: dict[int, dict], branches: list[dict], search_seed: int) -> list[dict]:
    full = [trunk[0]["metrics"]] if 0 in trunk else []
    return full + [r["metrics"] for r in branches if r["kind"] == "full" and r["seed"] != search_seed]


def transfer_dir(run: Path, fingerprint: str) -> Path:
    return run / "branches" / "transfer" / fingerprint


def random_dir(run: Path, seed: int, level: int | None, sparsity: float) -> Path:
    """A random mask's unit: the level's own when the sparsity is a level of the run, else one at the sparsity."""
    if level is not None:
        return branch_dir(run, "random-prune", seed, level)
    return run / "branches" / "random-prune" / f"seed_{seed}" / f"at_{sparsity:.6f}"


SOURCE = {"sparsity": float, "sources": list, "seeds": list}


def collect_transfers(run: Path, search_seed: int) -> dict[str, dict]:
    """Per transferred mask (by fingerprint): where it came from, and the verdict's table at its sparsity, with
    the transfer as the judged column, the run's own ticket at that sparsity (when the search has it) and
    random masks of the same sparsity."""
    trunk, branches = _records(run)
    full, found = _full(trunk, branches, search_seed), {}
    for info_path in sorted(run.glob("branches/transfer/*/source.json")):
        info = load_json(info_path, SOURCE)
        level, sparsity = info.get("level"), info["sparsity"]
        runs = [read_record(p)["metrics"] for p in sorted(info_path.parent.glob("seed_*/metrics.json"))]
        row: dict[str, list] = {"imp": runs}
        if level is not None and level in trunk:
            row["own-ticket"] = [trunk[level]["metrics"]] + [
                r["metrics"] for r in branches if r["kind"] == "imp" and r["level"] == level]
        randoms = [random_dir(run, seed, level, sparsity) / "metrics.json" for seed in info["seeds"]]
        row["random-prune"] = [read_record(p)["metrics"] for p in randoms if p.exists()]
        found[info_path.parent.name] = {"sources": info["sources"], "sparsity": sparsity, "level": level,
                                        "notes": info.get("notes", []),
                                        "table": {"full": full, "levels": {f"{sparsity:.6f}": row}}}
    return found


def judged_on_disk(run: Path) -> set[int]:
    """Levels that have a finished seed or baseline on disk (the dense full-model seeds are level 0)."""
    return {read_record(p)["level"] for p in run.glob("branches/*/seed_*/level_*/metrics.json")} - {0}


def read_record(path: Path) -> dict:
    """A finished unit's metrics.json, checked."""
    record = load_json(path, RECORD)
    wrong = [k for k, v in record["metrics"].items() if v is not None and not isinstance(v, (int, float))]
    if wrong:
        raise DamagedFile(path, f"metric '{wrong[0]}' is not a number")
    return record


def check_run(run: Path) -> None:
    """Read back every finished record and tensor file of a run, so damage is reported now, with what to do,
    and not when a later unit or report needs the file."""
    for path in sorted(run.rglob("metrics.json")):
        read_record(path)
        if (path.parent / "train_loss.json").exists():
            load_json(path.parent / "train_loss.json", {"step_losses": list})
    for path in sorted(run.rglob("*.safetensors")):
        if not _pending(run, path):
            verify_tensors(path)


def _pending(run: Path, path: Path) -> bool:
    """True for a file that the unfinished unit writing it will write again."""
    if path.parent == run:
        return False
    writer = path.parent
    if path.name == "mask.safetensors" and writer.parent == run and writer.name != "level_00":
        writer = level_dir(run, int(writer.name.split("_")[1]) - 1)  # the trunk's level N-1 prunes to mask N
    return not (writer / "metrics.json").exists()
