"""The user's own labelled text: .csv, .tsv or .jsonl files with a text column and a label column."""
from __future__ import annotations

import math
import random
from pathlib import Path
from typing import NamedTuple

from ..core.datafiles import existing, field, records
from ..core.errors import LthError
from .examples import ClassificationData, Examples


class Row(NamedTuple):
    where: str  # "file:line", for messages
    text: str
    pair: str | None
    label: str


def _rows(path: Path, text: str, pair: str | None, label: str) -> list[Row]:
    rows = []
    for i, (where, rec) in enumerate(records(path)):
        source = str(path) if i == 0 else where  # a missing column is a file problem, unless rows differ
        row = Row(where, field(rec, text, "--text-column", source),
                  None if pair is None else field(rec, pair, "--text-pair-column", source),
                  field(rec, label, "--label-column", source).strip())
        if not row.label:
            raise LthError(f"{where}: the label ('{label}') is empty; every example needs a label")
        rows.append(row)
    return rows


def _number(value: str) -> float | None:
    try:
        number = float(value)
    except ValueError:
        return None
    return number if math.isfinite(number) else None


def _integral(value: str) -> str:
    """'3.0' and '3' name the same class when labels are integers."""
    number = _number(value)
    return str(int(number)) if number is not None and number.is_integer() else value


def _label_names(rows: list[Row], path: Path, mixed: list[str]) -> list[str]:
    """Sorted class names, or [] when the labels are real numbers (regression); a note on `mixed` when
    numbers and text are mixed."""
    numbers = [_number(row.label) for row in rows]
    if all(n is not None for n in numbers):
        if not all(n.is_integer() for n in numbers):
            return []
        names = sorted({int(n) for n in numbers})
        names = [str(n) for n in names]
    else:
        names = sorted({row.label for row in rows})
        numeric = sum(n is not None for n in numbers)
        if numeric:
            mixed.append(f"{path}: the labels mix numbers ({numeric} rows) and text ({len(rows) - numeric} rows), "
                         f"so every distinct value is a class ({len(names)} classes); if the labels are scores, "
                         "fix the rows that are not numbers")
    if len(names) < 2:
        raise LthError(f"{path} has only one label ({names[0]}); a classifier needs at least two classes")
    return names


def _label_id(row: Row, names: list[str], integer: bool, train: Path) -> int | float:
    if not names:
        number = _number(row.label)
        if number is None:
            raise LthError(f"{row.where}: label '{row.label}' is not a number; the training labels "
                           f"are real numbers (regression), so every label must be one")
        return number
    name = _integral(row.label) if integer else row.label
    if name not in names:
        raise LthError(f"{row.where}: label '{row.label}' does not occur in {train} "
                       f"(labels: {', '.join(names)}); evaluate only on labels the model is trained on")
    return names.index(name)


def _examples(rows: list[Row], names: list[str], train: Path) -> Examples:
    pairs = None if rows[0].pair is None else [row.pair for row in rows]
    integer = all(_number(name) is not None for name in names)
    labels = [_label_id(row, names, integer, train) for row in rows]
    return Examples([row.text for row in rows], labels, pairs)


def _subset(examples: Examples, indices: list[int]) -> Examples:
    pairs = None if examples.pairs is None else [examples.pairs[i] for i in indices]
    return Examples([examples.texts[i] for i in indices], [examples.labels[i] for i in indices], pairs)


def _hold_out(examples: Examples, seed: int) -> tuple[Examples, Examples]:
    """A seeded 10% (at least one example) for evaluation; both parts keep file order."""
    if len(examples) < 2:
        raise LthError("a single example cannot be split into train and evaluation; add rows or pass --eval")
    order = list(range(len(examples)))
    random.Random(seed).shuffle(order)
    held = sorted(order[: max(1, len(order) // 10)])
    kept = sorted(order[len(held):])
    return _subset(examples, kept), _subset(examples, held)


def load_text_files(train: str, eval: str | None = None, text_column: str = "text",
                    pair_column: str | None = None, label_column: str = "label",
                    train_limit: int | None = None, eval_limit: int | None = None,
                    seed: int = 0) -> ClassificationData:
    """Read the user's own train (and optional eval) file into classification or regression data."""
    train_path = existing(train)
    train_rows = _rows(train_path, text_column, pair_column, label_column)
    notes: list[str] = []
    names = _label_names(train_rows, train_path, notes)
    train_set = _examples(train_rows, names, train_path)
    if eval is None:
        train_set, dev = _hold_out(train_set, seed)
        notes.append(f"no --eval given: held out 10% of {train_path} ({len(dev)} examples, seed {seed}) "
                     f"for evaluation")
    else:
        dev = _examples(_rows(existing(eval), text_column, pair_column, label_column), names, train_path)
    metrics = ("pearson", "spearman") if not names else ("accuracy", "f1") if len(names) == 2 else ("accuracy",)
    return ClassificationData(train_path.stem, train_set.head(train_limit), {"dev": dev.head(eval_limit)},
                              names, metrics, notes)
