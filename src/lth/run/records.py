"""What a run holds, read back from disk: every finished unit's record, checked, and the verdict's tables of
results (the search's levels with their seeds and baselines, and each transferred mask)."""
from __future__ import annotations

from pathlib import Path

from ..core.files import DamagedFile, load_json
from ..core.tensors import verify_tensors
from .kinds import COLUMNS, KINDS
from .layout import DRAW_RECORD, level_dir, random_dir

# What a finished unit records; checked whenever a metrics.json is read back.
RECORD = {"level": (int, type(None)), "kind": str, "seed": int, "sparsity": (int, float), "metrics": dict}


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
        for column in COLUMNS:  # IMP, then the baselines in the paper's order
            runs = [r["metrics"] for r in branches if r["level"] == level and KINDS[r["kind"]].column == column]
            if runs:
                row.setdefault(column, []).extend(runs)
    return {"full": full, "levels": table}


def _records(run: Path) -> tuple[dict[int, dict], list[dict]]:
    trunk = {r["level"]: r for r in map(read_record, sorted(run.glob("level_*/metrics.json")))}
    return trunk, [read_record(p) for p in sorted(run.glob("branches/*/seed_*/level_*/metrics.json"))]


def _full(trunk: dict[int, dict], branches: list[dict], search_seed: int) -> list[dict]:
    full = [trunk[0]["metrics"]] if 0 in trunk else []
    return full + [r["metrics"] for r in branches if KINDS[r["kind"]].column == "full" and r["seed"] != search_seed]


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
                r["metrics"] for r in branches if KINDS[r["kind"]].column == "imp" and r["level"] == level]
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
    if record["kind"] not in KINDS:
        raise DamagedFile(path, f"its kind {record['kind']!r} is none of {', '.join(KINDS)}")
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
    drawn = _drawn(run)
    for path in sorted(run.rglob("*.safetensors")):
        if not _pending(run, path, drawn):
            verify_tensors(path)


def _drawn(run: Path) -> bool:
    """Whether the run's masks are drawn by one unit (--search early-bird or gradual), as its settings say."""
    path = run / "settings.json"
    return path.exists() and load_json(path, {"settings": dict})["settings"].get("search", "imp") != "imp"


def _pending(run: Path, path: Path, drawn: bool = False) -> bool:
    """True for a file that the unfinished unit writing it will write again."""
    if path.parent == run:
        return False
    writer = path.parent
    if path.name == "mask.safetensors" and writer.parent == run and writer.name != "level_00":
        if drawn:  # every level's mask is written by the drawing unit, which then writes the draw record
            return not (run / DRAW_RECORD).exists()
        writer = level_dir(run, int(writer.name.split("_")[1]) - 1)  # the trunk's level N-1 prunes to mask N
    return not (writer / "metrics.json").exists()
