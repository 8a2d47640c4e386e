"""Time to ticket: the training a run spent to draw each judged level's mask and to train its ticket, in steps (what
a recipe costs anywhere) and in wall time (what it cost here), beside what IMP spends for the same level.

IMP draws level L's mask from L fine-tunings (levels 0 .. L-1, each as long as one dense fine-tuning); early-bird
draws it at a step of the dense run (level 0); gradual at a step of its one pruning fine-tuning. Either way the
ticket itself is then trained once from the rewind point. Wall times are those of finished units (with their
evaluation); a unit resumed after an interruption counts from its resumption only."""
from __future__ import annotations

from pathlib import Path

from ..core.files import load_json
from .layout import DRAW_RECORD, level_dir
from .plan import Plan

DRAW = {"levels": list, "steps": int}


def _steps(where: Path) -> int | None:
    path = where / "train_loss.json"
    return len(load_json(path, {"step_losses": list})["step_losses"]) if path.exists() else None


def _seconds(where: Path) -> float | None:
    path = where / "metrics.json"
    return load_json(path, {"seconds": (int, float)})["seconds"] if path.exists() else None


def time_to_ticket(plan: Plan) -> list[dict]:
    """Per judged level with a finished ticket of the search's seed: its cost to draw and to train (see above).
    `dense_multiple`: the whole, in fine-tunings of the dense model."""
    run, dense = plan.run, _steps(level_dir(plan.run, 0))
    if dense is None:
        return []
    drawn = {}
    if plan.drawn and (run / DRAW_RECORD).exists():
        drawn = {r["level"]: r for r in load_json(run / DRAW_RECORD, DRAW)["levels"]}
    found = []
    for level in plan.judged:
        ticket = _steps(level_dir(run, level))
        if ticket is None or (plan.drawn and level not in drawn):
            continue
        if plan.drawn:
            draw_steps, draw_seconds = drawn[level]["step"], drawn[level]["seconds"]
        else:
            before = [level_dir(run, i) for i in range(level)]
            draw_steps = sum(_steps(w) or 0 for w in before)
            draw_seconds = round(sum(_seconds(w) or 0.0 for w in before), 1)
        steps = draw_steps + ticket
        found.append({"level": level, "sparsity": load_json(level_dir(run, level) / "metrics.json")["sparsity"],
                      "search": plan.s.search, "draw_steps": draw_steps, "draw_seconds": draw_seconds,
                      "ticket_steps": ticket, "ticket_seconds": _seconds(level_dir(run, level)), "steps": steps,
                      "dense_steps": dense, "dense_multiple": round(steps / dense, 3),
                      "imp_steps": level * dense + ticket})
    return found
