"""A trained ticket as a plain Hugging Face folder: config (with label names), weights and tokenizer, as
`save_pretrained` writes them, loadable with transformers alone (pruned weights are exact zeros)."""
from __future__ import annotations

from pathlib import Path

import transformers
from torch import nn

from ..core.files import share
from ..core.models import quiet_transformers


def save_hf_folder(model: nn.Module, tokenizer, folder: Path, label_names: list[str]) -> None:
    if label_names:
        model.config.id2label = dict(enumerate(label_names))
        model.config.label2id = {name: i for i, name in enumerate(label_names)}
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    share(folder)


def reload_hf(folder: Path, head: str) -> nn.Module:
    """A model folder loaded with `head`, an Auto class or an architecture's class name."""
    quiet_transformers()
    return getattr(transformers, head).from_pretrained(folder, attn_implementation="eager")
