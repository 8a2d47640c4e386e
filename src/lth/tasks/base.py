"""The one protocol every task follows: what the search, the evaluation and an export need from it.

A task gives its model (encoder plus its head), the features to train and evaluate on, what to keep of the
model's output and how to score it. The optional steps have their defaults here, so no caller probes for them:
`prepare` changes a training batch before the model sees it (masked-LM masks tokens there), `forward` replaces
the model's own forward (masked-LM runs its head on the masked positions only)."""
from __future__ import annotations

from typing import Callable, ClassVar

from torch import nn


class Task:
    name: str
    metric_names: list[str]
    primary: str  # the metric that decides
    head: ClassVar[str]  # a key of lth.core.models.HEADS: the Auto class its model (and an export) loads with
    percent: ClassVar[bool] = False  # metrics already in percent (SQuAD): one point is 1.0, not 0.01
    forward: ClassVar[Callable | None] = None  # (model, batch, train) -> output with .loss; None: the model's own
    distilled: ClassVar[tuple[str, ...]] = ("logits",)  # the outputs a student matches to its teacher's
    distilled_per_token: ClassVar[bool] = False  # those outputs have one value per token (SQuAD's start and end)
    fixed_inputs: ClassVar[bool] = True  # a training example is the same every epoch: its teacher outputs are stored
    notes: list[str]
    new_head = False  # load_model made the task head afresh (masked-LM: the checkpoint had none)

    @property
    def regression(self) -> bool:
        """One score per example (distilled by squared error, not by a softmax)."""
        return False

    @property
    def label_names(self) -> list[str]:
        """Class names in id order (classification); an export writes them into its config."""
        return []

    def load_model(self, name: str, seed: int) -> nn.Module:
        raise NotImplementedError

    def fingerprint(self) -> str:
        """The content of every example: a run continues only on the data it began with."""
        raise NotImplementedError

    def sizes(self) -> dict[str, int]:
        raise NotImplementedError

    def train_features(self, tokenizer, max_length: int) -> list[dict]:
        raise NotImplementedError

    def eval_features(self, tokenizer, max_length: int) -> dict[str, list[dict]]:
        raise NotImplementedError

    @staticmethod
    def collect(batch: dict, output) -> list:
        """What evaluation keeps of one batch's output, one entry per row."""
        raise NotImplementedError

    def score(self, split: str, outputs: list) -> dict[str, float | None]:
        raise NotImplementedError

    def prepare(self, batch: dict, step: int) -> dict:
        """A training batch as the model sees it at `step` (unchanged unless the task says otherwise)."""
        return batch
