"""SQuAD v1.1 extractive QA: load, split by article, build sliding-window features; answers and scores are in
`squadeval.py`."""
from __future__ import annotations

import json
import re
from itertools import groupby
from pathlib import Path

import numpy as np

from ..core.errors import LthError, short_reason
from ..core.fingerprints import fingerprint
from ..core.models import load_model
from .base import Task
from .squadeval import postprocess, squad_scores

LAYOUT = ('expected the official layout {"data": [{"title": ..., "paragraphs": [{"context": ..., '
          '"qas": [{"id": ..., "question": ..., "answers": [{"text": ..., "answer_start": ...}]}]}]}]}')
SPLIT_HINT = "use TRAIN:EVAL article counts, e.g. 40:8 = the first 40 articles to train, the next 8 to evaluate"


# --- loading ---------------------------------------------------------------------------------------

def load_squad(path: str, articles: slice | None = None) -> tuple[list[dict], int]:
    """(examples in file order, number of answers dropped because answer_start does not match the context)."""
    data = _read_data(Path(path).expanduser())
    examples, skipped = [], 0
    for number in range(len(data))[articles] if articles else range(len(data)):
        article = data[number]
        paragraphs = article.get("paragraphs") if isinstance(article, dict) else None
        if not isinstance(paragraphs, list):
            raise LthError(f"{path} is not a SQuAD v1.1 file: no 'data'/'paragraphs' "
                           f"(article {number + 1} has no 'paragraphs' list); {LAYOUT}")
        for paragraph in paragraphs:
            skipped += _add_questions(examples, str(article.get("title", "")), paragraph, path)
    return examples, skipped


def _read_data(path: Path) -> list:
    if not path.is_file():
        raise LthError(f"SQuAD file {path} not found; pass the path to a SQuAD v1.1 JSON file such as dev-v1.1.json")
    try:
        content = json.loads(path.read_text(encoding="utf-8-sig"))
    except UnicodeDecodeError as exc:
        raise LthError(f"{path} is not UTF-8 text ({exc.reason}); pass the SQuAD v1.1 JSON file unchanged") from None
    except json.JSONDecodeError as exc:
        raise LthError(f"{path}:{exc.lineno}: not valid JSON ({exc.msg}); pass a SQuAD v1.1 JSON file") from None
    data = content.get("data") if isinstance(content, dict) else None
    if not isinstance(data, list):
        raise LthError(f"{path} is not a SQuAD v1.1 file: no 'data'/'paragraphs' (no top-level 'data' list); {LAYOUT}")
    return data


def _add_questions(examples: list[dict], title: str, paragraph: dict, path: str) -> int:
    """Append the paragraph's answerable questions; return how many answers were dropped."""
    try:
        context, qas = paragraph["context"], paragraph["qas"]
        skipped = 0
        for qa in qas:
            if not isinstance(qa["question"], str) or not isinstance(context, str):
                raise TypeError(f"question {qa.get('id')!r} has no text")
            answers = [a for a in qa["answers"] if _matches(context, a)]
            skipped += len(qa["answers"]) - len(answers)
            if answers:
                examples.append({"id": qa["id"], "title": title, "context": context, "question": qa["question"],
                                 "answers": {"text": [a["text"] for a in answers],
                                             "answer_start": [a["answer_start"] for a in answers]}})
        return skipped
    except (KeyError, TypeError, AttributeError) as exc:
        raise LthError(f"{path} is not a SQuAD v1.1 file: a paragraph of article '{title}' is malformed "
                       f"({type(exc).__name__}: {exc}); {LAYOUT}") from None


def _matches(context: str, answer: dict) -> bool:
    text, start = answer.get("text"), answer.get("answer_start")
    return isinstance(text, str) and isinstance(start, int) and bool(text) \
        and context[start:start + len(text)] == text


# --- splitting -------------------------------------------------------------------------------------

def split_articles(examples: list[dict], spec: str, source: str | None = None,
                   dropped: int = 0) -> tuple[list[dict], list[dict], str]:
    """(train, eval, description): the first TRAIN articles in file order to train, the next EVAL to evaluate.

    `dropped`: answers the loader dropped as misaligned, which can leave an article without questions."""
    n_train, n_eval = _parse_spec(spec)
    # consecutive titles: one article's questions are contiguous in file order
    groups = [list(g) for _, g in groupby(examples, key=lambda e: e["title"])]
    if n_train + n_eval > len(groups):
        why = (f" ({dropped} answers were dropped because their answer_start does not match the context, which "
               "leaves an article with none of them without questions: check that the file is unedited)"
               if dropped else "")
        raise LthError(f"SQuAD split '{spec}' needs {n_train + n_eval} articles but only {len(groups)} have "
                       f"answerable questions{why}; use counts that add up to at most {len(groups)}")
    train = [e for g in groups[:n_train] for e in g]
    evals = [e for g in groups[n_train:n_train + n_eval] for e in g]
    description = (f"SQuAD split by article: train = {_span(1, n_train)} ({len(train)} questions), "
                   f"eval = {_span(n_train + 1, n_train + n_eval)} ({len(evals)} questions)")
    return train, evals, description + (f" of {Path(source).name}" if source else "")


def _parse_spec(spec: str) -> tuple[int, int]:
    match = re.fullmatch(r"\s*(\d+)\s*:\s*(\d+)\s*", str(spec))
    if not match:
        raise LthError(f"SQuAD split '{spec}' is not TRAIN:EVAL; {SPLIT_HINT}")
    n_train, n_eval = int(match[1]), int(match[2])
    if n_train < 1 or n_eval < 1:
        raise LthError(f"SQuAD split '{spec}' has a zero count; both must be at least 1; {SPLIT_HINT}")
    return n_train, n_eval


def _span(first: int, last: int) -> str:
    return f"article {first}" if first == last else f"articles {first}-{last}"


# --- features --------------------------------------------------------------------------------------

def train_features(examples: list[dict], tokenizer, max_length: int = 384, stride: int = 128) -> list[dict]:
    """One feature per window, with start/end_positions of the first gold answer ((0, 0) = not in window)."""
    enc = _encode(examples, tokenizer, max_length, stride)
    features = []
    for i, example_index in enumerate(enc["overflow_to_sample_mapping"]):
        answers = examples[example_index]["answers"]
        start = answers["answer_start"][0]
        start_pos, end_pos = _positions(enc["offset_mapping"][i], enc.sequence_ids(i),
                                        start, start + len(answers["text"][0]))
        features.append({**_ids(enc, i), "start_positions": start_pos, "end_positions": end_pos})
    return features


def eval_features(examples: list[dict], tokenizer, max_length: int = 384, stride: int = 128) -> list[dict]:
    """One feature per window, with its example_index and context-only offsets (None elsewhere)."""
    enc = _encode(examples, tokenizer, max_length, stride)
    features = []
    for i, example_index in enumerate(enc["overflow_to_sample_mapping"]):
        offsets = [list(o) if s == 1 else None for o, s in zip(enc["offset_mapping"][i], enc.sequence_ids(i))]
        features.append({**_ids(enc, i), "example_index": example_index, "offsets": offsets})
    return features


def _encode(examples: list[dict], tokenizer, max_length: int, stride: int):
    if not getattr(tokenizer, "is_fast", False):
        raise LthError(f"SQuAD needs a fast tokenizer (for offsets and sliding windows), got "
                       f"{type(tokenizer).__name__}; use a model whose tokenizer has a tokenizer.json")
    # a few SQuAD questions start with spaces that only waste window room; no context offset moves
    questions = [e["question"].lstrip() for e in examples]
    try:
        return tokenizer(questions, [e["context"] for e in examples], truncation="only_second",
                         max_length=max_length, stride=stride, return_overflowing_tokens=True,
                         return_offsets_mapping=True, padding=False)
    except Exception as exc:  # the Rust tokenizer raises a bare Exception on truncation errors
        if "truncat" not in str(exc).lower():
            raise
        raise LthError(f"cannot fit a question and a context window into max_length {max_length} with stride "
                       f"{stride} ({exc}); raise max_length or lower stride") from None


def _ids(enc, i: int) -> dict:
    return {k: list(enc[k][i]) for k in ("input_ids", "token_type_ids") if k in enc}


def _positions(offsets, sequence_ids, start_char: int, end_char: int) -> tuple[int, int]:
    """Token indices of the answer's first and last tokens, or (0, 0) when the window does not hold it all."""
    first = sequence_ids.index(1)
    last = len(sequence_ids) - 1 - sequence_ids[::-1].index(1)
    if offsets[first][0] > start_char or offsets[last][1] < end_char:
        return 0, 0
    start = first
    while start <= last and offsets[start][0] <= start_char:
        start += 1
    end = last
    while end >= first and offsets[end][1] >= end_char:
        end -= 1
    return start - 1, end + 1


# --- post-processing -------------------------------------------------------------------------------

class SquadTask(Task):
    """Extractive QA for the trunk: span features with overflow windows, scored by the official v1.1 F1/EM."""

    metric_names = ["f1", "exact_match"]
    primary = "f1"
    name = "squad"
    head = "question-answering"
    distilled = ("start_logits", "end_logits")
    distilled_per_token = True
    percent = True  # its metrics are percentages already (the official script's scale)

    def __init__(self, data: str | None, eval: str | None, split: str, stride: int,
                 train_limit: int | None = None, eval_limit: int | None = None):
        self.stride, self.notes, self.dropped = stride, [], 0
        if data is None:
            train, dev = _from_hub()
        elif eval is None:
            examples = self._load(data)
            train, dev, description = split_articles(examples, split, Path(data).name, self.dropped)
            self.notes.append(description)
        else:
            train, dev = self._load(data), self._load(eval)
        self.train, self.dev = train[:train_limit], dev[:eval_limit]
        self.features: list[dict] = []

    def _load(self, path: str) -> list[dict]:
        examples, skipped = load_squad(path)
        self.dropped += skipped
        if skipped:
            self.notes.append(f"{path}: skipped {skipped} answers whose answer_start does not match the context")
        return examples

    def load_model(self, name: str, seed: int):
        return load_model(name, "question-answering", seed)

    def sizes(self) -> dict[str, int]:
        return {"train": len(self.train), "dev": len(self.dev)}

    def fingerprint(self) -> str:
        return fingerprint([self.train, self.dev])

    def train_features(self, tokenizer, max_length: int) -> list[dict]:
        return train_features(self.train, tokenizer, max_length, self.stride)

    def eval_features(self, tokenizer, max_length: int) -> dict[str, list[dict]]:
        self.features = eval_features(self.dev, tokenizer, max_length, self.stride)
        return {"dev": self.features}

    @staticmethod
    def collect(batch: dict, output) -> list[tuple[np.ndarray, np.ndarray]]:
        lengths = batch["attention_mask"].sum(1).tolist()
        starts, ends = output.start_logits.float().numpy(), output.end_logits.float().numpy()
        return [(s[:n], e[:n]) for s, e, n in zip(starts, ends, lengths)]

    def score(self, split: str, outputs: list) -> dict[str, float]:
        answers = postprocess(self.dev, self.features, [s for s, _ in outputs], [e for _, e in outputs])
        return squad_scores(answers, self.dev)


def _from_hub() -> tuple[list[dict], list[dict]]:
    try:
        import datasets

        squad = datasets.load_dataset("rajpurkar/squad")
    except Exception as e:  # offline, or the hub refused: say what to pass instead
        raise LthError(f"could not download SQuAD from the Hugging Face hub ({short_reason(e)}); pass --data with a "
                       "local SQuAD v1.1 JSON file") from None
    return [dict(r) for r in squad["train"]], [dict(r) for r in squad["validation"]]
