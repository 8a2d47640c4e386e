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


def pearson(predictions: np.ndarray, labels: np.ndarray) -> float:
    """Pearson correlation; 0.0 when either side is constant."""
    # A collapsed model predicts a constant; scipy would warn and return nan, which breaks
    # "best so far" comparisons. 0.0 matches sklearn's MCC convention for the same case.
    if _constant(predictions, labels):
        return 0.0
    return float(pearsonr(predictions, labels)[0])


def spearman(predictions: np.ndarray, labels: np.ndarray) -> float:
    """Spearman rank correlation; 0.0 when either side is constant."""
    if _constant(predictions, labels):
        return 0.0
    return float(spearmanr(predictions, labels)[0])


METRICS: dict[str, Callable[[np.ndarray, np.ndarray], float]] = {
    "accuracy": accuracy,
    "f1": f1,
    "mcc": mcc,
    "pearson": pearson,
    "spearman": spearman,
}


def score_classification(logits: np.ndarray, labels: np.ndarray, metrics: tuple[str, ...],
                         regression: bool) -> dict[str, float]:
    """The requested metrics, in order, for model outputs (class logits, or one score per example)."""
    logits = np.asarray(logits)
    predictions = logits.reshape(-1) if regression else logits.argmax(axis=-1)
    labels = np.asarray(labels).reshape(-1)
    return {name: METRICS[name](predictions, labels) for name in metrics}
