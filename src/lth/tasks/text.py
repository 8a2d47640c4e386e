"""The user's own labelled text: .csv, .tsv or .jsonl files with a text column and a label column."""
from __future__ import annotations

import csv
import json
import math
import random
from pathlib import Path
from typing import Iterator, NamedTuple

from ..config import DATA_FILES
from ..errors import LthError
from .examples import ClassificationData, Examples

FORMATS = DATA_FILES
TSV_HINT = "the file is not plain tab-separated text (saved with quoting, or a field holds a tab or line break?)"
CSV_HINT = "quote fields that contain commas or line breaks"
JSON_EXAMPLE = 'one JSON object per line, e.g. {"text": "...", "label": "..."}'


class Row(NamedTuple):
    where: str  # "file:line", for messages
    text: str
    pair: str | None
    label: str


def is_data_file(name: str) -> bool:
    """Whether `name` has the extension of a data file this module reads."""
    return Path(name).suffix.lower() in FORMATS


def _lines(path: Path, tab: bool) -> Iterator[tuple[int, list[str]]]:
    """Non-empty records with the 1-based file line each starts on."""
    dialect = {"delimiter": "\t", "quoting": csv.QUOTE_NONE} if tab else {}
    with open(path, encoding="utf-8-sig", newline="") as handle:
        reader = csv.reader(handle, **dialect)
        start = 1
        try:
            for row in reader:
                if row:
                    yield start, row
                start = reader.line_num + 1
        except csv.Error as exc:
            raise LthError(f"{path}:{reader.line_num}: {exc}; {TSV_HINT if tab else CSV_HINT}") from None
        except UnicodeDecodeError as exc:
            raise LthError(f"{path} is not UTF-8 text ({exc.reason}); save it as UTF-8") from None


def read_table(path: Path, tab: bool, hint: str, width: int | None = None
               ) -> tuple[list[str], list[tuple[int, list[str]]]]:
    """Header (empty when `width` is given: no header) and rows, each checked to have the same width."""
    rows = list(_lines(path, tab))
    header = rows.pop(0)[1] if width is None and rows else []
    expected = width if width is not None else len(header)
    separator = "tab" if tab else "comma"
    for line, row in rows:
        if len(row) != expected:
            raise LthError(f"{path}:{line}: expected {expected} {separator}-separated fields, "
                           f"found {len(row)}; {hint}")
    return header, rows


def _read_json(path: Path) -> list[tuple[str, dict]]:
    """(location, object) for each JSON line, or for each item of a whole-file JSON array."""
    text = _read_text(path)
    if path.suffix.lower() == ".json" and text.lstrip().startswith("["):
        try:
            items = json.loads(text)
        except json.JSONDecodeError as exc:
            raise LthError(f"{path}:{exc.lineno}: not valid JSON ({exc.msg}); use {JSON_EXAMPLE}") from None
        return [(f"{path} item {i}", item) for i, item in enumerate(items, 1)]
    records = []
    # not splitlines(): a JSON string may contain U+2028, which splitlines() treats as a line break
    for number, line in enumerate(text.split("\n"), 1):
        if line.strip():
            try:
                records.append((f"{path}:{number}", json.loads(line)))
            except json.JSONDecodeError as exc:
                raise LthError(f"{path}:{number}: not valid JSON ({exc.msg}); use {JSON_EXAMPLE}") from None
    return records


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise LthError(f"{path} is not UTF-8 text ({exc.reason}); save it as UTF-8") from None


def _records(path: Path) -> list[tuple[str, dict]]:
    """(location, column -> value) for every example in a .csv, .tsv, .jsonl or .json file."""
    if path.suffix.lower() in (".jsonl", ".json"):
        records = _read_json(path)
    else:
        tab = path.suffix.lower() == ".tsv"
        header, rows = read_table(path, tab, TSV_HINT if tab else CSV_HINT)
        records = [(f"{path}:{line}", dict(zip(header, row))) for line, row in rows]
    if not records:
        raise LthError(f"{path} has no examples; it needs a header line and one row per example")
    for where, record in records:
        if not isinstance(record, dict):
            raise LthError(f"{where}: expected a JSON object, found {type(record).__name__}; use {JSON_EXAMPLE}")
    return records


def _existing(name: str) -> Path:
    path = Path(name).expanduser()
    if path.suffix.lower() not in FORMATS:
        raise LthError(f"cannot read '{name}': supported data files are {', '.join(FORMATS)}")
    if not path.is_file():
        raise LthError(f"data file {path} not found; check the path")
    return path


def _field(record: dict, name: str, flag: str, where: str) -> str:
    if name not in record:
        columns = ", ".join(map(str, record))
        raise LthError(f"{where} has no column '{name}' (columns: {columns}); pass {flag} with the right name")
    if record[name] is None:
        raise LthError(f"{where}: '{name}' is empty; every example needs a value there")
    return str(record[name])


def _rows(path: Path, text: str, pair: str | None, label: str) -> list[Row]:
    rows = []
    for i, (where, rec) in enumerate(_records(path)):
        source = str(path) if i == 0 else where  # a missing column is a file problem, unless rows differ
        row = Row(where, _field(rec, text, "--text-column", source),
                  None if pair is None else _field(rec, pair, "--text-pair-column", source),
                  _field(rec, label, "--label-column", source).strip())
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
    train_path = _existing(train)
    train_rows = _rows(train_path, text_column, pair_column, label_column)
    notes: list[str] = []
    names = _label_names(train_rows, train_path, notes)
    train_set = _examples(train_rows, names, train_path)
    if eval is None:
        train_set, dev = _hold_out(train_set, seed)
        notes.append(f"no --eval given: held out 10% of {train_path} ({len(dev)} examples, seed {seed}) "
                     f"for evaluation")
    else:
        dev = _examples(_rows(_existing(eval), text_column, pair_column, label_column), names, train_path)
    metrics = ("pearson", "spearman") if not names else ("accuracy", "f1") if len(names) == 2 else ("accuracy",)
    return ClassificationData(train_path.stem, train_set.head(train_limit), {"dev": dev.head(eval_limit)},
                              names, metrics, notes)
