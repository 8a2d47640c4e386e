"""Units of work and the queue that trains them: one folder per unit, claimed with a lock, done when its
metrics.json exists, so several processes (or machines on a shared file system) share one run."""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from tqdm.auto import tqdm

from .errors import LthError
from .files import sweep
from .runs import Claim


@dataclass
class Unit:
    """One model to train and evaluate: a level of the search itself ("trunk"), a seed or baseline of a level,
    or a transfer. Done when where/metrics.json exists; ready to start when every file in `needs` exists."""

    kind: str
    level: int | None  # the level of the run it belongs to; None for a transfer or a mask at a given sparsity
    seed: int
    where: Path
    needs: tuple[Path, ...] = ()
    sparsity: float | None = None  # the target of a random mask that is no level of the run
    source: Path | None = None  # a transfer's mask file

    @property
    def done(self) -> bool:
        return (self.where / "metrics.json").exists()

    def ready(self) -> bool:
        return all(p.exists() for p in self.needs)

    def __str__(self) -> str:
        if self.kind == "transfer":
            return f"transfer {self.where.parent.name} seed {self.seed}"
        at = f"level {self.level}" if self.level is not None else f"sparsity {self.sparsity:.1%}"
        return f"{at} {self.kind} seed {self.seed}"


def unique(units: list[Unit]) -> list[Unit]:
    """Units in order, each folder once (a transfer and a level may ask for the same random mask)."""
    seen, kept = set(), []
    for unit in units:
        if unit.where not in seen:
            seen.add(unit.where)
            kept.append(unit)
    return kept


def work(units: list[Unit], train: Callable[[Unit], None], poll_seconds: float = 10.0) -> None:
    """Train every unit not done yet. A unit another process is training is left to it; when nothing
    can start, wait for the others. A finished unit is never trained again."""
    said = None
    while todo := [u for u in units if not u.done]:
        for unit in todo:
            claim = Claim(unit.where)
            if unit.ready() and claim.acquire():
                try:
                    if not unit.done:  # finished by another process between the check and the claim
                        sweep(unit.where)  # what a killed writer of this unit left (we hold its claim)
                        say(f"{unit}: training ({len(units) - len(todo)} of {len(units)} units done)")
                        train(unit)
                finally:
                    claim.release()
                break
        else:
            busy = [u for u in todo if Claim(u.where).held_elsewhere()]
            if not busy and any(u.ready() and not u.done for u in todo):
                continue  # another process finished what these waited for since we looked: look again
            if not busy:
                missing = [str(p) for u in todo for p in u.needs if not p.exists()]
                raise LthError(f"cannot start {todo[0]}: {missing[0] if missing else 'its input'} is missing "
                               "and nothing will produce it; delete that unit's folder and rerun")
            if said != str(busy[0]):
                said = str(busy[0])
                say(f"waiting for another lth process ({said} and {len(busy) - 1} more)")
            time.sleep(poll_seconds)


def say(line: str) -> None:
    tqdm.write(line)
