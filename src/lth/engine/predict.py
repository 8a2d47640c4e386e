"""`lth predict`: label a data file with an exported classifier on the fast engine."""
from __future__ import annotations

import csv
import os
from pathlib import Path

from tqdm.auto import tqdm
from transformers import AutoTokenizer

from ..artifacts.manifest import RECORD, export_folder
from ..core.batches import collate, evaluation_order
from ..core.console import say
from ..core.datafiles import existing, field, records
from ..core.errors import LthError
from ..core.files import atomic_path, load_json
from ..core.models import position_limit
from .engine import load_fast


def trained_length(model_folder: Path, limit: int) -> int:
    """The --max-length an export was trained and evaluated with (ticket.json's recipe), else the model's limit."""
    folder = export_folder(model_folder)
    recorded = load_json(folder / RECORD).get("recipe", {}).get("max_length") if folder else None
    return min(limit, recorded) if isinstance(recorded, int) and recorded > 0 else limit


def predict_file(path: str | Path, source: str, target: str, text_column: str = "text",
                 pair_column: str | None = None, batch_size: int = 64, precision: str = "auto",
                 max_length: int | None = None) -> int:
    """Label every row of a .csv/.tsv/.jsonl file with an exported classifier on the fast engine (`precision` as
    in load_fast); writes a TSV of row, label and the scores; returns the rows written."""
    if Path(target).exists() and Path(source).exists() and os.path.samefile(target, Path(source).expanduser()):
        raise LthError(f"--output {target} is the --input file itself (through a link or not): it would be overwritten; "
                       "write the labels to another file")
    fast = load_fast(path, precision)
    if not hasattr(fast.model, "num_labels") or "ForSequenceClassification" not in type(fast.model).__name__:
        raise LthError(f"lth predict labels text with a classifier; {path} holds a {type(fast.model).__name__}")
    tokenizer = AutoTokenizer.from_pretrained(fast.model.name_or_path)  # the folder load_fast found
    rows = records(existing(source))
    texts = [field(r, text_column, "--text-column", where) for where, r in rows]
    pairs = None if pair_column is None else [field(r, pair_column, "--text-pair-column", w) for w, r in rows]
    limit = position_limit(fast.model, tokenizer)
    if max_length is not None and max_length > limit:
        raise LthError(f"--max-length {max_length} is beyond what {path} takes ({limit} tokens); use {limit} or less")
    length = max_length or trained_length(Path(fast.model.name_or_path), limit)
    say(f"inputs truncated at {length} tokens" + ("" if max_length else " (the length the ticket was trained and "
                                                    "evaluated with; --max-length to change it)"))
    encoded = tokenizer(texts, pairs, truncation=True, max_length=length, padding=False)
    features = [{k: encoded[k][i] for k in ("input_ids", "token_type_ids") if k in encoded} for i in range(len(texts))]
    labels = fast.config.id2label
    scores: list = [None] * len(features)
    with tqdm(total=len(features), desc="predict", unit="ex", dynamic_ncols=True) as bar:
        for ids in evaluation_order([len(f["input_ids"]) for f in features], batch_size):
            logits = fast(**collate([features[i] for i in ids], tokenizer.pad_token_id or 0)).logits.float()
            for i, row in zip(ids, logits.tolist()):
                scores[i] = row
            bar.update(len(ids))
    with atomic_path(target) as tmp, open(tmp, "w", newline="") as handle:
        out = csv.writer(handle, delimiter="\t")
        regression = len(scores[0]) == 1
        out.writerow(["row", "score" if regression else "label", *([] if regression else [f"score_{labels[i]}"
                                                                                         for i in range(len(labels))])])
        for row, values in enumerate(scores):
            best = max(range(len(values)), key=values.__getitem__)
            out.writerow([row, f"{values[0]:.6f}"] if regression else [row, labels[best], *(f"{v:.6f}" for v in values)])
    return len(scores)
