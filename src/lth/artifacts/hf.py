"""A trained ticket as a plain Hugging Face folder: config (with label names), weights and tokenizer, as
`save_pretrained` writes them, loadable with transformers alone (pruned weights are exact zeros)."""
from __future__ import annotations

import json
import shutil
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


SENTENCE_TRANSFORMERS = ("modules.json", "sentence_bert_config.json", "config_sentence_transformers.json")


def keep_sentence_transformers(base: Path, folder: Path) -> list[str]:
    """A Sentence-Transformers base's own files (modules.json, its pooling and normalisation modules) copied into the
    exported folder, so `SentenceTransformer(folder)` loads the pruned encoder; returns what was copied."""
    if not (base / "modules.json").is_file():
        return []
    copied = [name for name in SENTENCE_TRANSFORMERS if (base / name).is_file()]
    for name in copied:
        shutil.copy(base / name, folder / name)
    for module in json.loads((base / "modules.json").read_text()):
        if module.get("path") and (base / module["path"]).is_dir():  # "" is the encoder itself: exported already
            shutil.copytree(base / module["path"], folder / module["path"], dirs_exist_ok=True)
            copied.append(module["path"] + "/")
    return copied


def reload_hf(folder: Path, head: str) -> nn.Module:
    """A model folder loaded with `head`, an Auto class or an architecture's class name."""
    quiet_transformers()
    return getattr(transformers, head).from_pretrained(folder, attn_implementation="eager")
