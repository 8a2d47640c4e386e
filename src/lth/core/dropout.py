"""Dropout from random bits (--fast-dropout): the same regularisation as torch's dropout for about half of its cost
on a CPU, where torch draws one random number per element, serially (benchmarks/dropout_cost.py).

The keep mask is drawn as 16-bit integers, four from each int64 of one full-range `random_()` call on torch's
generator (so a resumed run continues the same stream), and kept as bool for the backward; p is rounded to a
multiple of 1/65536. Attention runs as Hugging Face's eager attention does (scores, additive mask, softmax,
dropout, values), its dropout from the same bits."""
from __future__ import annotations

import contextlib

import torch
from torch import nn
from transformers import AttentionInterface, AttentionMaskInterface
from transformers.masking_utils import eager_mask

NAME = "lth_bits_dropout"


def keep_mask(shape: torch.Size | tuple, p: float, device=None) -> torch.Tensor:
    """A bool mask, False with probability round(p * 65536) / 65536."""
    n = 1
    for size in shape:
        n *= size
    # the full 64-bit range: random_() alone stops at 2^63 - 1, which leaves every fourth int16 non-negative
    bits = torch.empty((n + 3) // 4, dtype=torch.int64).random_(-2**63, None).view(torch.int16)[:n]
    return (bits >= -32768 + round(p * 65536)).view(shape).to(device)


class _Dropout(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, p):
        keep = keep_mask(x.shape, p, x.device)
        ctx.save_for_backward(keep)
        ctx.scale = 1.0 / (1.0 - p)
        return x * keep * ctx.scale

    @staticmethod
    def backward(ctx, grad):
        (keep,) = ctx.saved_tensors
        return grad * keep * ctx.scale, None


def dropout(x: torch.Tensor, p: float, training: bool = True) -> torch.Tensor:
    return _Dropout.apply(x, p) if training and p > 0 else x


class BitsDropout(nn.Dropout):
    """nn.Dropout with its mask from random bits."""

    def forward(self, x):
        return dropout(x, self.p, self.training)


def attention(module, query, key, value, attention_mask, scaling=None, dropout: float = 0.0, **kwargs):
    """Eager attention (the same operations as transformers' eager_attention_forward, on its additive mask), its
    dropout on the probabilities from random bits."""
    scores = torch.matmul(query, key.transpose(2, 3)) * (scaling if scaling is not None else query.size(-1) ** -0.5)
    if attention_mask is not None:
        scores = scores + attention_mask
    probs = torch.softmax(scores, dim=-1)
    if module.training and dropout > 0:
        probs = _Dropout.apply(probs, dropout)
    return torch.matmul(probs, value).transpose(1, 2).contiguous(), probs


AttentionInterface.register(NAME, attention)
AttentionMaskInterface.register(NAME, eager_mask)


@contextlib.contextmanager
def bits_dropout(model: nn.Module, on: bool = True):
    """While inside: every nn.Dropout of `model` draws its mask from random bits, and so does the attention dropout
    of a model on eager or SDPA attention (it then runs eager attention). Everything is put back on the way out (the
    model saved or exported is unchanged)."""
    if not on:
        yield
        return
    swapped = []
    for module in list(model.modules()):
        for name, child in list(module.named_children()):
            if type(child) is nn.Dropout:
                setattr(module, name, BitsDropout(child.p).train(child.training))
                swapped.append((module, name, child))
    config = getattr(model, "config", None)
    attention_before = getattr(config, "_attn_implementation", None)
    if attention_before in ("sdpa", "eager"):
        config._attn_implementation = NAME
    try:
        yield
    finally:
        for module, name, child in swapped:
            setattr(module, name, child)
        if attention_before in ("sdpa", "eager"):
            config._attn_implementation = attention_before
