"""A new masked-LM head fitted alone before θ0 is saved (--head-warmup), so the search starts from a head that
predicts words, as the paper's θ0 (BERT with its trained head) does."""
from __future__ import annotations

from dataclasses import replace

from ..core import masks
from ..core.console import say
from ..core.files import remove
from ..run.settings import FindSettings
from ..tasks import Task
from .train import finetune

HEAD_WARMUP, HEAD_LR = 300, 1e-3  # steps and learning rate that fit a new MLM head alone


def head_warmup_steps(s: FindSettings, task: Task) -> int:
    """--head-warmup resolved: by default HEAD_WARMUP steps where the checkpoint had no MLM head, else none."""
    if s.head_warmup is None:
        return HEAD_WARMUP if s.task == "mlm" and task.new_head else 0
    return s.head_warmup


def warm_up_head(search) -> None:
    """Fit the task head alone, the encoder frozen, for --head-warmup steps on the run's training text (seeded, so a
    rebuilt θ0 is the same). Weights the head shares with the encoder (a decoder tied to the word embeddings) stay."""
    steps, model = search.s.head_warmup, search.model
    if not steps:
        return
    encoder = {id(p) for p in getattr(model, model.base_model_prefix).parameters()}
    for p in model.parameters():
        p.requires_grad_(id(p) not in encoder)
    say(f"fitting the new MLM head alone for {steps} steps before θ0 is saved (--head-warmup)")
    checkpoint = search.run / "head_warmup.checkpoint.pt"
    try:
        finetune(model, masks.ones(search.weights), search.train, replace(search.recipe, steps=steps, lr=HEAD_LR,
                                                                          warmup=0.0), search.pad_id, checkpoint,
                 desc="head warm-up", prepare=search.task.prepare, forward=search.task.forward, ranks=search.ranks)
    finally:
        for p in model.parameters():
            p.requires_grad_(True)
    remove(checkpoint)
