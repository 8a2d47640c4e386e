"""Raw labelled text, as read from disk, before tokenisation."""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Examples:
    """Parallel lists: one text (and optional second text) and one label per example."""

    texts: list[str]
    labels: list  # int class ids for classification, floats for regression
    pairs: list[str] | None = None

    def __len__(self) -> int:
        return len(self.texts)

    def head(self, limit: int | None) -> "Examples":
        """The first `limit` examples (all when limit is None)."""
        if limit is None or limit >= len(self):
            return self
        pairs = None if self.pairs is None else self.pairs[:limit]
        return Examples(self.texts[:limit], self.labels[:limit], pairs)


@dataclass
class ClassificationData:
    """A sentence(-pair) classification or regression task read from disk."""

    name: str
    train: Examples
    evals: dict[str, Examples]          # split name -> examples, e.g. {"dev": ...}
    label_names: list[str]              # class names in id order; [] for regression
    metrics: tuple[str, ...]            # keys of lth.metrics.METRICS, first is the primary
    notes: list[str] = field(default_factory=list)  # what a user should know (splits made, rows skipped)

    @property
    def regression(self) -> bool:
        return not self.label_names
