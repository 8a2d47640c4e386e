"""SQuAD v1.1 answers and scores: the best span of every question over its windows, and the official exact match
and F1 (the v1.1 evaluation script's normalisation)."""
from __future__ import annotations

import re
import string
from collections import Counter

import numpy as np

from ..core.errors import LthError


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
