"""Evaluation metrics for classification and regression, each `(predictions, labels) -> float`."""
from __future__ import annotations

from typing import Callable

import numpy as np
from scipy.stats import pearsonr, spearmanr
from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef


def accuracy(predictions: np.ndarray, labels: np.ndarray) -> float:
    """Fraction of predictions equal to the label."""
    return float(accuracy_score(labels, predictions))


def f1(predictions: np.ndarray, labels: np.ndarray) -> float:
    """Binary F1 with class 1 as the positive class."""
    return float(f1_score(labels, predictions, pos_label=1, average="binary", zero_division=0))


def mcc(predictions: np.ndarray, labels: np.ndarray) -> float:
    """Matthews correlation coefficient."""
    return float(matthews_corrcoef(labels, predictions))


def _constant(*arrays: np.ndarray) -> bool:
    return any(np.ptp(np.asarray(a, dtype=float)) == 0 for a in arrays)


def pearson(predictions: np.ndarray, labels: np.ndarray) -> float | None:
    """Pearson correlation; None (undefined) when either side is constant."""
    # A collapsed model predicts a constant. Scoring it 0.0 would let it pass for a weak model (and, next to
    # a full model near 0, "win"); None is recorded as undefined and never wins a verdict.
    if _constant(predictions, labels):
        return None
    return float(pearsonr(predictions, labels)[0])


def spearman(predictions: np.ndarray, labels: np.ndarray) -> float | None:
    """Spearman rank correlation; None (undefined) when either side is constant."""
    if _constant(predictions, labels):
        return None
    return float(spearmanr(predictions, labels)[0])


def undefined_note(metrics: dict[str, float | None]) -> str | None:
    """Why some metrics of a unit have no value, for its record."""
    missing = [name for name, value in metrics.items() if value is None]
    if not missing:
        return None
    return (f"{', '.join(missing)} undefined: the model gives the same output for every example (collapsed), "
            "or every label is the same; such a unit never counts as winning")


METRICS: dict[str, Callable[[np.ndarray, np.ndarray], float | None]] = {
    "accuracy": accuracy,
    "f1": f1,
    "mcc": mcc,
    "pearson": pearson,
    "spearman": spearman,
}


def score_classification(logits: np.ndarray, labels: np.ndarray, metrics: tuple[str, ...],
                         regression: bool) -> dict[str, float | None]:
    """The requested metrics, in order, for model outputs (class logits, or one score per example)."""
    logits = np.asarray(logits)
    predictions = logits.reshape(-1) if regression else logits.argmax(axis=-1)
    labels = np.asarray(labels).reshape(-1)
    return {name: METRICS[name](predictions, labels) for name in metrics}
