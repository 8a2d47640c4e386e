"""Sentence(-pair) classification and regression: tokenise once, score logits with the task's metrics."""
from __future__ import annotations

import numpy as np

from ..core.fingerprints import fingerprint
from ..core.metrics import score_classification
from ..core.models import load_model
from .base import Task
from .examples import ClassificationData, Examples


def logits_rows(batch: dict, output) -> list[np.ndarray]:
    """Classification: one row of logits per example."""
    return list(output.logits.float().numpy())


class ClassificationTask(Task):
    """Sentence(-pair) classification or regression on a GLUE task, the demo or the user's own files."""

    head = "classification"

    def __init__(self, data: ClassificationData):
        self.data = data
        self.name = data.name

    def load_model(self, name: str, seed: int):
        if self.data.regression:
            return load_model(name, "classification", seed, num_labels=1, problem_type="regression")
        return load_model(name, "classification", seed, num_labels=len(self.data.label_names),
                          problem_type="single_label_classification")

    @property
    def metric_names(self) -> list[str]:
        splits = list(self.data.evals)
        if len(splits) == 1:
            return list(self.data.metrics)
        return [f"{split}/{m}" for split in splits for m in self.data.metrics]

    @property
    def primary(self) -> str:
        return self.metric_names[0]

    @property
    def notes(self) -> list[str]:
        return self.data.notes

    @property
    def label_names(self) -> list[str]:
        return self.data.label_names

    @property
    def regression(self) -> bool:
        return self.data.regression

    def fingerprint(self) -> str:
        """The content of every example and label: a run continues only on the data it began with."""
        splits = {"train": self.data.train, **self.data.evals}
        return fingerprint({"labels": self.data.label_names, "splits": {
            name: [ex.texts, ex.pairs, ex.labels] for name, ex in splits.items()}})

    def sizes(self) -> dict[str, int]:
        return {"train": len(self.data.train), **{k: len(v) for k, v in self.data.evals.items()}}

    def train_features(self, tokenizer, max_length: int) -> list[dict]:
        return encode(self.data.train, tokenizer, max_length)

    def eval_features(self, tokenizer, max_length: int) -> dict[str, list[dict]]:
        return {split: encode(ex, tokenizer, max_length) for split, ex in self.data.evals.items()}

    collect = staticmethod(logits_rows)

    def score(self, split: str, rows: list[np.ndarray]) -> dict[str, float]:
        labels = np.asarray(self.data.evals[split].labels)
        scores = score_classification(np.stack(rows), labels, self.data.metrics, self.data.regression)
        prefix = "" if len(self.data.evals) == 1 else f"{split}/"
        return {prefix + k: v for k, v in scores.items()}


def encode(examples: Examples, tokenizer, max_length: int) -> list[dict]:
    """Token ids (no padding) and label per example, in one batched tokenizer call."""
    args = (examples.texts,) if examples.pairs is None else (examples.texts, examples.pairs)
    enc = tokenizer(*args, truncation=True, max_length=max_length, padding=False)
    keys = [k for k in ("input_ids", "token_type_ids") if k in enc]
    return [{**{k: enc[k][i] for k in keys}, "labels": examples.labels[i]} for i in range(len(examples))]
