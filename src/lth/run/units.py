"""A unit of work: one model to train and evaluate, in a folder of its own."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class Unit:
    """A level of the search itself ("trunk"), a seed or baseline of a level, or a transfer (`kind`: a key of
    kinds.KINDS). Done when where/metrics.json exists; ready to start when every file in `needs` exists."""

    kind: str
    level: int | None  # the level of the run it belongs to; None for a transfer or a mask at a given sparsity
    seed: int
    where: Path
    needs: tuple[Path, ...] = ()
    sparsity: float | None = None  # the target of a random mask that is no level of the run
    source: Path | None = None  # a transfer's mask file
    id: str = ""  # a stable name for --unit: the unit's folder inside the run
    label: str | None = None  # how it prints, when its level and kind do not say it (a transfer)
    claim: object = field(default=None, repr=False, compare=False)  # the queue's Claim while this process trains it

    @property
    def done(self) -> bool:
        return (self.where / "metrics.json").exists()

    def ready(self) -> bool:
        return all(p.exists() for p in self.needs)

    def __str__(self) -> str:
        if self.label is not None:
            return self.label
        where = f"level {self.level}" if self.level is not None else f"sparsity {self.sparsity:.1%}"
        return f"{where} {self.kind} seed {self.seed}"


def unique(units: list[Unit]) -> list[Unit]:
    """Units in order, each folder once (a transfer and a level may ask for the same random mask)."""
    seen, kept = set(), []
    for unit in units:
        if unit.where not in seen:
            seen.add(unit.where)
            kept.append(unit)
    return kept
