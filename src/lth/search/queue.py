"""The work queue: one folder per unit, claimed with a lock, done when its metrics.json exists, so several
processes (or machines on a shared file system) share one run."""
from __future__ import annotations

import fcntl
import time
from pathlib import Path
from typing import Callable

from ..core.console import say
from ..core.devices import Ranks
from ..core.errors import LthError
from ..core.files import sweep
from ..run.units import Unit


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
