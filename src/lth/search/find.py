"""`lth find`: run (or resume) a ticket search and its seeds and baselines, or one unit of it."""
from __future__ import annotations

from pathlib import Path

from ..core.errors import LthError
from ..report.tables import cost_table, levels_table, number, verdict_table
from ..run.plan import planned_units
from ..run.settings import FindSettings, find_settings
from ..run.units import Unit, unique
from .queue import work_one
from .search import open_search


def find(settings: FindSettings | None = None, unit: str | None = None, list_units: bool = False,
         **overrides) -> dict:
    """Run (or resume) a ticket search, and its seeds and baselines when asked for.

    Returns the summary also written to the run's summary.json. Several processes given the same settings
    share the work: each trains what nobody else is training (see `queue.work`). `list_units` prints every unit
    of the run with its state; `unit` trains that one unit only (for a scheduler's job array)."""
    search = open_search(settings or find_settings(**overrides))
    units = unique(planned_units(search))
    if list_units:
        print(format_units(units, search.run))
        return {"units": [{"id": u.id, "done": u.done, "ready": u.ready()} for u in units]}
    if unit is not None:
        work_one(one_unit(units, unit, search.run), search.run_unit, ranks=search.ranks)
        return search.write_summary() if search.ranks.main else {}
    search.work(units)
    summary = search.write_summary()
    print(levels_table(summary))
    if "verdict" in summary and (len(search.seeds) > 1 or search.baselines):
        print()
        print(verdict_table(summary["results"], search.task.metric_names, search.task.primary, search.s.search))
    if summary["time_to_ticket"]:
        print()
        print(cost_table(summary["time_to_ticket"], summary.get("results"), search.task.primary))
    if "teacher" in summary:
        teacher = summary["teacher"]
        print(f"teacher (level 0, seed {teacher['seed']}; every pruned unit learned from it): "
              + ", ".join(f"{k} {number(v)}" for k, v in teacher["metrics"].items()))
    print(f"run directory: {search.run}")
    return summary


def format_units(units: list[Unit], run: Path) -> str:
    """One line per unit: its id (for --unit), and whether it is done, ready to start, or waiting for inputs."""
    state = lambda u: "done" if u.done else "ready" if u.ready() else "waits for " + ", ".join(  # noqa: E731
        p.relative_to(run).as_posix() for p in u.needs if not p.exists())
    width = max(len(u.id) for u in units)
    return "\n".join(f"{u.id:<{width}}  {state(u)}" for u in units)


def one_unit(units: list[Unit], wanted: str, run: Path) -> Unit:
    """The unit named by --unit (its folder inside the run, as --list-units prints it)."""
    for unit in units:
        if unit.id == wanted.strip("/"):
            return unit
    raise LthError(f"--unit {wanted}: {run.name} has no such unit; the same command with --list-units prints "
                   "every unit's id")
