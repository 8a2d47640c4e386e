"""Metrics against values computed by hand, not by the library under test."""
import math

import numpy as np
import pytest

from lth.core.metrics import METRICS, score_classification

PRED = np.array([1, 1, 0, 0, 1])
GOLD = np.array([1, 0, 0, 1, 1])
# TP = 2 (idx 0, 4), FP = 1 (idx 1), TN = 1 (idx 2), FN = 1 (idx 3)
TP, FP, TN, FN = 2, 1, 1, 1


def test_accuracy_is_matches_over_total():
    assert METRICS["accuracy"](PRED, GOLD) == pytest.approx(3 / 5)


def test_f1_from_precision_and_recall():
    precision, recall = TP / (TP + FP), TP / (TP + FN)
    assert METRICS["f1"](PRED, GOLD) == pytest.approx(2 * precision * recall / (precision + recall))


def test_f1_uses_class_1_as_positive():
    # class 1: TP=1, FP=1, FN=0 -> 2/3; class 0 as positive would give TP=3, FN=1 -> 6/7
    assert METRICS["f1"](np.array([1, 1, 0, 0, 0]), np.array([1, 0, 0, 0, 0])) == pytest.approx(2 / 3)


def test_mcc_from_confusion_matrix():
    expected = (TP * TN - FP * FN) / math.sqrt((TP + FP) * (TP + FN) * (TN + FP) * (TN + FN))
    assert METRICS["mcc"](PRED, GOLD) == pytest.approx(expected)
    assert METRICS["mcc"](GOLD, GOLD) == pytest.approx(1.0)


def _pearson(x, y):
    dx, dy = x - x.mean(), y - y.mean()
    return float((dx * dy).sum() / math.sqrt((dx**2).sum() * (dy**2).sum()))


def test_pearson_by_formula():
    x, y = np.array([1.0, 2.0, 4.0, 7.0]), np.array([2.0, 1.0, 5.0, 6.0])
    assert METRICS["pearson"](x, y) == pytest.approx(_pearson(x, y))


def test_spearman_is_pearson_of_hand_ranks():
    x = np.array([10.0, 30.0, 20.0, 50.0, 40.0])
    y = np.array([1.0, 2.0, 3.0, 5.0, 4.0])
    rank_x, rank_y = np.array([1, 3, 2, 5, 4.0]), np.array([1, 2, 3, 5, 4.0])
    d = rank_x - rank_y
    expected = 1 - 6 * (d**2).sum() / (5 * (5**2 - 1))  # no ties: the closed form holds
    assert expected == pytest.approx(0.9)
    assert METRICS["spearman"](x, y) == pytest.approx(expected)


def test_correlations_of_constant_predictions_are_undefined_and_say_so():
    from lth.core.metrics import undefined_note

    assert METRICS["pearson"](np.ones(4), np.arange(4.0)) is None
    assert METRICS["spearman"](np.arange(4.0), np.ones(4)) is None
    assert undefined_note({"pearson": None, "spearman": None}).startswith("pearson, spearman undefined")
    assert undefined_note({"pearson": 0.5}) is None


def test_metrics_return_plain_floats():
    for name, metric in METRICS.items():
        assert type(metric(PRED, GOLD)) is float, name


def test_score_classification_takes_argmax_of_logits():
    logits = np.array([[0.1, 2.0], [3.0, -1.0], [0.0, 0.5], [-2.0, -1.0], [5.0, 4.0]])  # argmax 1,0,1,1,0
    labels = np.array([1, 0, 0, 1, 1])  # 3 of 5 right
    scores = score_classification(logits, labels, ("f1", "accuracy"), regression=False)
    assert list(scores) == ["f1", "accuracy"]
    assert scores["accuracy"] == pytest.approx(3 / 5)
    assert scores["f1"] == pytest.approx(2 * 2 / (2 * 2 + 1 + 1))  # TP=2, FP=1, FN=1


def test_score_classification_three_classes():
    logits = np.array([[0, 0, 9], [9, 0, 0], [0, 9, 0]])
    assert score_classification(logits, np.array([2, 1, 1]), ("accuracy",), False) == {"accuracy": 2 / 3}


def test_score_regression_squeezes_outputs():
    outputs = np.array([[1.0], [2.0], [4.0], [7.0]])
    labels = np.array([2.0, 1.0, 5.0, 6.0])
    scores = score_classification(outputs, labels, ("pearson", "spearman"), regression=True)
    assert scores["pearson"] == pytest.approx(_pearson(outputs.reshape(-1), labels))
    # ranks 1,2,3,4 vs 2,1,3,4: d^2 sum = 2 -> 1 - 6*2/(4*15) = 0.8
    assert scores["spearman"] == pytest.approx(0.8)
