"""Dynamic padding and length-grouped batch orders: compute scales with real tokens, not padding."""
from __future__ import annotations

import torch

Feature = dict  # "input_ids" (list[int]), optional "token_type_ids", "labels" (int | float)


def collate(features: list[Feature], pad_id: int) -> dict[str, torch.Tensor]:
    """Pad a batch to its longest member."""
    width = max(len(f["input_ids"]) for f in features)
    batch = {"input_ids": torch.full((len(features), width), pad_id, dtype=torch.long),
             "attention_mask": torch.zeros((len(features), width), dtype=torch.long)}
    if "token_type_ids" in features[0]:
        batch["token_type_ids"] = torch.zeros((len(features), width), dtype=torch.long)
    for row, f in enumerate(features):
        n = len(f["input_ids"])
        batch["input_ids"][row, :n] = torch.tensor(f["input_ids"])
        batch["attention_mask"][row, :n] = 1
        if "token_type_ids" in batch:
            batch["token_type_ids"][row, :n] = torch.tensor(f["token_type_ids"])
    if "labels" in features[0]:
        labels = [f["labels"] for f in features]
        batch["labels"] = torch.tensor(labels, dtype=torch.float if isinstance(labels[0], float) else torch.long)
    return batch


def training_order(lengths: list[int], batch_size: int, seed: int, epoch: int) -> list[list[int]]:
    """A seeded shuffle, sorted by length inside mega-batches of 50 batches, batches in shuffled order.

    Like Hugging Face's `group_by_length`: similar lengths share a batch, yet every epoch differs."""
    g = torch.Generator().manual_seed(seed * 100_003 + epoch)
    order = torch.randperm(len(lengths), generator=g).tolist()
    mega = batch_size * 50
    grouped = []
    for start in range(0, len(order), mega):
        grouped += sorted(order[start:start + mega], key=lambda i: -lengths[i])
    batches = [grouped[i:i + batch_size] for i in range(0, len(grouped), batch_size)]
    return [batches[i] for i in torch.randperm(len(batches), generator=g).tolist()]


def evaluation_order(lengths: list[int], batch_size: int) -> list[list[int]]:
    """Longest first, so padding is minimal and the slowest batch comes first (honest ETA)."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
