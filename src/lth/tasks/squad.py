"""SQuAD v1.1 extractive QA: load, split by article, build sliding-window features, decode spans, score."""
from __future__ import annotations

import json
import re
import string
from collections import Counter
from itertools import groupby
from pathlib import Path

import numpy as np

from ..errors import LthError, short_reason
from ..files import fingerprint
from ..models import load_model

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

def postprocess(examples: list[dict], features: list[dict], start_logits: list[np.ndarray],
                end_logits: list[np.ndarray], n_best: int = 20, max_answer_length: int = 30) -> dict[str, str]:
    """{example id: best answer text over all its windows} ("" when no window has a valid span)."""
    best: dict[int, tuple[float, str]] = {}
    for feature, starts, ends in zip(features, start_logits, end_logits, strict=True):
        index = feature["example_index"]
        span = _best_span(feature["offsets"], np.asarray(starts), np.asarray(ends), n_best, max_answer_length)
        if span and (index not in best or span[0] > best[index][0]):
            context = examples[index]["context"]
            best[index] = (span[0], context[span[1]:span[2]])
    return {e["id"]: best[i][1] if i in best else "" for i, e in enumerate(examples)}


def _best_span(offsets: list, starts: np.ndarray, ends: np.ndarray, n_best: int,
               max_answer_length: int) -> tuple[float, int, int] | None:
    """(score, first char, end char) of the best valid span in one window, or None."""
    n = len(offsets)
    top_s = np.argsort(-starts[:n], kind="stable")[:n_best]
    top_e = np.argsort(-ends[:n], kind="stable")[:n_best]
    top_s = top_s[np.array([offsets[i] is not None for i in top_s], dtype=bool)]
    top_e = top_e[np.array([offsets[i] is not None for i in top_e], dtype=bool)]
    length = top_e[None, :] - top_s[:, None] + 1
    valid = (length >= 1) & (length <= max_answer_length)
    if not valid.any():
        return None
    scores = np.where(valid, starts[top_s][:, None] + ends[top_e][None, :], -np.inf)
    i, j = np.unravel_index(np.argmax(scores), scores.shape)
    if not valid[i, j]:  # every valid pair scored -inf
        return None
    return float(scores[i, j]), offsets[top_s[i]][0], offsets[top_e[j]][1]


# --- the official SQuAD v1.1 metric ----------------------------------------------------------------

PUNCTUATION = set(string.punctuation)


def normalize_answer(s: str) -> str:
    """Lower case, drop punctuation, drop articles, collapse whitespace (the official script's order)."""
    s = "".join(ch for ch in s.lower() if ch not in PUNCTUATION)
    s = re.sub(r"\b(a|an|the)\b", " ", s)
    return " ".join(s.split())


def exact_match(prediction: str, gold: str) -> float:
    """1.0 when the normalized strings are equal, else 0.0."""
    return float(normalize_answer(prediction) == normalize_answer(gold))


def f1(prediction: str, gold: str) -> float:
    """Harmonic mean of precision and recall over normalized tokens (bag overlap); 0.0 with none in common."""
    pred, ref = normalize_answer(prediction).split(), normalize_answer(gold).split()
    common = sum((Counter(pred) & Counter(ref)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(pred), common / len(ref)
    return 2 * precision * recall / (precision + recall)


def squad_scores(predictions: dict[str, str], examples: list[dict]) -> dict[str, float]:
    """{"f1", "exact_match"} in percent: best over gold answers, mean over questions (unanswered = 0)."""
    if not examples:
        raise LthError("no SQuAD questions to score; the evaluation split is empty (check the article split)")
    totals = {"f1": 0.0, "exact_match": 0.0}
    for example in examples:
        if example["id"] not in predictions:
            continue  # as in the official script: a missing prediction scores 0 but still counts
        golds = example["answers"]["text"]
        for name, metric in (("f1", f1), ("exact_match", exact_match)):
            totals[name] += max(metric(predictions[example["id"]], g) for g in golds)
    return {name: 100.0 * total / len(examples) for name, total in totals.items()}


class SquadTask:
    """Extractive QA for the trunk: span features with overflow windows, scored by the official v1.1 F1/EM."""

    metric_names = ["f1", "exact_match"]
    primary = "f1"
    name = "squad"
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
