"""Data files a user gives: .csv, .tsv, .jsonl or .json, read into records (column -> value) with every bad row
named by file and line."""
from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Iterator

from .errors import LthError

FORMATS = (".csv", ".tsv", ".jsonl", ".json")  # a --task with one of these is the user's own file
TSV_HINT = "the file is not plain tab-separated text (saved with quoting, or a field holds a tab or line break?)"
CSV_HINT = "quote fields that contain commas or line breaks"
JSON_EXAMPLE = 'one JSON object per line, e.g. {"text": "...", "label": "..."}'


def is_data_file(name: str) -> bool:
    """Whether `name` has the extension of a data file this module reads."""
    return Path(name).suffix.lower() in FORMATS


def _lines(path: Path, tab: bool) -> Iterator[tuple[int, list[str]]]:
    """Non-empty records with the 1-based file line each starts on."""
    dialect = {"delimiter": "\t", "quoting": csv.QUOTE_NONE} if tab else {}
    csv.field_size_limit(2**31 - 1)  # csv's default refuses a field over 128 KiB (a long document)
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


def records(path: Path) -> list[tuple[str, dict]]:
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


def existing(name: str) -> Path:
    path = Path(name).expanduser()
    if path.suffix.lower() not in FORMATS:
        raise LthError(f"cannot read '{name}': supported data files are {', '.join(FORMATS)}")
    if not path.is_file():
        raise LthError(f"data file {path} not found; check the path")
    return path


def field(record: dict, name: str, flag: str, where: str) -> str:
    if name not in record:
        columns = ", ".join(map(str, record))
        raise LthError(f"{where} has no column '{name}' (columns: {columns}); pass {flag} with the right name")
    if record[name] is None:
        raise LthError(f"{where}: '{name}' is empty; every example needs a value there")
    return str(record[name])
