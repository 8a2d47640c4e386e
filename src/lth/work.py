"""Units of work and the queue that trains them: one folder per unit, claimed with a lock, done when its
metrics.json exists, so several processes (or machines on a shared file system) share one run."""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from tqdm.auto import tqdm

from .errors import LthError
from .files import sweep
from .parallel import Ranks
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
    id: str = ""  # a stable name for --unit: the unit's folder inside the run
    claim: Claim | None = field(default=None, repr=False, compare=False)  # held while this process trains it

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


WAIT, DONE = "wait", "done"


def work(units: list[Unit], train: Callable[[Unit], None], poll_seconds: float = 10.0, ranks: Ranks | None = None) -> None:
    """Train every unit not done yet. A unit another process is training is left to it; when nothing
    can start, wait for the others. A finished unit is never trained again.

    In a group of processes (accelerate launch), the main process claims each unit and tells the others which
    one it is: every process trains the same unit at the same time."""
    ranks = ranks or Ranks()
    said = None
    while True:
        choice = _next(units, ranks) if ranks.main else None
        choice = ranks.broadcast(choice)
        if choice == DONE:
            return
        if isinstance(choice, tuple):  # (WAIT, who) or (error message,)
            if choice[0] != WAIT:
                raise LthError(choice[0])
            if said != choice[1]:
                said = choice[1]
                say(f"waiting for another lth process ({said})")
            time.sleep(poll_seconds)
            continue
        unit = units[choice]
        try:
            if ranks.main:
                sweep(unit.where)  # what a killed writer of this unit left (we hold its claim)
                say(f"{unit}: training ({sum(u.done for u in units)} of {len(units)} units done)")
            train(unit)
        finally:
            if ranks.main:
                unit.claim.release()


def work_one(unit: Unit, train: Callable[[Unit], None], poll_seconds: float = 10.0, ranks: Ranks | None = None) -> None:
    """Train this one unit (--unit): wait for its inputs, leave it if done or held by another process."""
    ranks = ranks or Ranks()
    while True:
        choice = _one(unit) if ranks.main else None
        choice = ranks.broadcast(choice)
        if choice != WAIT:
            break
        time.sleep(poll_seconds)
    if choice != "train":
        say(f"{unit}: {choice}; nothing to train")
        return
    try:
        if ranks.main:
            sweep(unit.where)
            say(f"{unit}: training")
        train(unit)
    finally:
        if ranks.main:
            unit.claim.release()


def _one(unit: Unit) -> str:
    if unit.done:
        return "already done"
    if not unit.ready():
        say(f"{unit}: waiting for its inputs ({', '.join(str(p) for p in unit.needs if not p.exists())})")
        return WAIT
    claim = Claim(unit.where)
    if not claim.acquire():
        return "another process is training it"
    if unit.done:
        claim.release()
        return "already done"
    unit.claim = claim
    return "train"


def _next(units: list[Unit], ranks: Ranks):
    """The index of a unit this process has claimed, DONE, (WAIT, what is busy) or (an error message,)."""
    while todo := [u for u in units if not u.done]:
        for unit in todo:
            claim = Claim(unit.where)
            if unit.ready() and claim.acquire():
                if unit.done:  # finished by another process between the check and the claim
                    claim.release()
                    break
                unit.claim = claim
                return units.index(unit)
        else:
            busy = [u for u in todo if Claim(u.where).held_elsewhere()]
            if not busy and any(u.ready() and not u.done for u in todo):
                continue  # another process finished what these waited for since we looked: look again
            if not busy:
                missing = [str(p) for u in todo for p in u.needs if not p.exists()]
                return (f"cannot start {todo[0]}: {missing[0] if missing else 'its input'} is missing and nothing "
                        "will produce it; delete that unit's folder and rerun",)
            return WAIT, f"{busy[0]} and {len(busy) - 1} more"
    return DONE


def say(line: str) -> None:
    tqdm.write(line)
