"""The one reader of a run's results: judged levels -> results -> verdict -> transfers, for `lth find`'s summary,
`lth verdict`, the report and the transfer matrix alike."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..core.errors import LthError
from ..core.files import load_json
from .costs import time_to_ticket
from .plan import Plan, planned_units
from .records import collect_results, collect_transfers, judged_on_disk, read_record
from .settings import FindSettings
from .verdict import verdict

SETTINGS_RECORD = {"settings": dict, "primary": str, "metrics": list}


@dataclass
class Results:
    """The verdict's table of a run, its verdict (None without a full model on disk) and every transfer onto it."""

    table: dict
    verdict: dict | None
    transfers: dict


def read_results(run: Path, metrics: list[str], primary: str, seed: int, judged: list[int]) -> Results:
    """What is on disk now. `judged`: the levels asked for; every level with seeds or baselines on disk is judged too,
    also when fewer were asked for this time."""
    table = collect_results(run, seed, sorted(set(judged) | judged_on_disk(run)))
    transfers = collect_transfers(run, seed)
    for entry in transfers.values():
        entry["verdict"] = verdict(entry["table"], metrics, primary) if entry["table"]["full"] else None
    return Results(table, verdict(table, metrics, primary) if table["full"] else None, transfers)


def read_settings(run: Path, required: dict | None = None) -> dict:
    """A run's settings.json (checked to hold `required`), refused with one line where `run` is no run."""
    if not (run / "settings.json").is_file():
        raise LthError(f"{run} is not a run directory (it has no settings.json); give a folder that lth find printed "
                       "as 'run directory', e.g. runs/mrpc-minilm-1a2b3c4d5e")
    return load_json(run / "settings.json", required or {"settings": dict})


@dataclass
class RunView:
    """Everything a report shows of one run, read from disk."""

    run: Path
    info: dict
    levels: list[dict]
    results: dict
    verdict: dict | None
    transfers: dict
    masks: dict[int, Path]
    missing: list[str]
    losses: dict[str, list[float]] = field(default_factory=dict)
    costs: list[dict] = field(default_factory=list)  # time to ticket (run.costs)

    @property
    def primary(self) -> str:
        return self.info["primary"]


def read_run(run: Path) -> RunView:
    info = read_settings(run, SETTINGS_RECORD)
    plan = Plan(FindSettings(**info["settings"]), run)
    found = read_results(run, info["metrics"], info["primary"], plan.seeds[0], info.get("judged_levels") or [])
    missing = [str(u) for u in planned_units(plan) if not u.done]
    missing += [f"transfer {folder} seed {seed}" for folder in found.transfers for seed in _unfinished(run, folder)]
    return RunView(run, info, [read_record(p) for p in sorted(run.glob("level_*/metrics.json"))], found.table,
                   found.verdict, found.transfers,
                   {int(p.parent.name[6:]): p for p in sorted(run.glob("level_*/mask.safetensors"))}, missing,
                   _losses(run), time_to_ticket(plan))


def _unfinished(run: Path, folder: str) -> list[int]:
    """The seeds of a transfer that have no result yet."""
    where = run / "branches" / "transfer" / folder
    seeds = load_json(where / "source.json", {"seeds": list})["seeds"]
    return [seed for seed in seeds if not (where / f"seed_{seed}" / "metrics.json").exists()]


def _losses(run: Path) -> dict[str, list[float]]:
    curves = {}
    for path in sorted(run.rglob("train_loss.json")):
        if (path.parent / "metrics.json").exists():
            record = read_record(path.parent / "metrics.json")
            at = f"level {record['level']}" if record["level"] is not None else f"{record['sparsity']:.0%}"
            curves[f"{record['kind']} {at} seed {record['seed']}"] = load_json(path, {"step_losses": list})["step_losses"]
    return curves
