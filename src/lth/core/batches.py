"""Dynamic padding and length-grouped batch orders: compute scales with real tokens, not padding."""
from __future__ import annotations

import torch

Feature = dict  # "input_ids" (list[int]), optional "token_type_ids", "labels" (int | float)


# Per-token keys and what pads them; `None` means the tokenizer's pad id. Scalar keys are stacked and
# anything else (offsets, example indices) is bookkeeping that stays out of the model's inputs.
PADDING = {"input_ids": None, "token_type_ids": 0, "labels": -100, "special_tokens_mask": 1}
TARGETS = ("labels", "start_positions", "end_positions")  # stacked when scalar; labels may be per token
ROW = "row"  # a feature's index in its list (distillation looks up the teacher's outputs by it); never a model input


def collate(features: list[Feature], pad_id: int) -> dict[str, torch.Tensor]:
    """Pad a batch to its longest member."""
    width = max(len(f["input_ids"]) for f in features)
    batch = {"attention_mask": torch.zeros((len(features), width), dtype=torch.long)}
    for row, f in enumerate(features):
        batch["attention_mask"][row, :len(f["input_ids"])] = 1
    for key, value in features[0].items():
        if key in PADDING and isinstance(value, list):
            batch[key] = _pad([f[key] for f in features], width, pad_id if PADDING[key] is None else PADDING[key])
        elif key in TARGETS or key == ROW:
            values = [f[key] for f in features]
            batch[key] = torch.tensor(values, dtype=torch.float if isinstance(values[0], float) else torch.long)
    return batch


def _pad(rows: list[list[int]], width: int, value: int) -> torch.Tensor:
    out = torch.full((len(rows), width), value, dtype=torch.long)
    for i, row in enumerate(rows):
        out[i, :len(row)] = torch.tensor(row)
    return out


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
