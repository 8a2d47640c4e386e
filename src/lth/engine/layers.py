"""A lean forward for BERT-style encoder layers (BERT, RoBERTa, ELECTRA, MiniLM): the Hugging Face eager layer's
computation in evaluation, in fewer ops, with Q, K and V fused and attention on the fused kernel where it is built."""
from __future__ import annotations

import torch
from torch import nn

from .kernels import ATTENTION_SIZES, add_layernorm, attention_dtypes, fused_attention
from .sparse import SparseLinear


def lean_layers(model: nn.Module) -> int:
    """Give every BERT-style encoder layer a forward with fewer ops; returns how many layers got it.

    The same computation as the Hugging Face eager layer in evaluation: Q, K and V, scores, mask, softmax,
    context, the output projection, residual and LayerNorm, the FFN, residual and LayerNorm — without its
    dropout calls, attention-interface dispatch and chunking helpers, whose many small ops cost interpreter time
    at batch 1, and with attention as `_LeanForward` computes it (torch's fused scaled_dot_product_attention was
    slower in the engine: design-measurements.md). Layers
    that differ (relative positions, cross-attention, a decoder, another attention scale) keep their own forward."""
    count, masks = 0, _Masks()
    for module in model.modules():
        if _standard_layer(module):
            _fuse_qkv(module.attention.self)
            module.forward = _LeanForward(module, masks)
            count += 1
    return count


def _fuse_qkv(att: nn.Module) -> None:
    """Q, K and V as one linear layer `att.qkv` (their rows stacked) in place of three, where all three are plain
    nn.Linear or all SparseLinear: one call reads the input once instead of three times (design-measurements.md).
    The three are removed, their memory freed."""
    parts = [att.query, att.key, att.value]
    if {type(p) for p in parts} not in ({nn.Linear}, {SparseLinear}):
        return
    dense = [p.dense if isinstance(p, SparseLinear) else p for p in parts]
    if any(d.bias is None for d in dense) or len({d.in_features for d in dense}) > 1:
        return
    fused = nn.Linear(dense[0].in_features, sum(d.out_features for d in dense), dtype=dense[0].weight.dtype)
    with torch.no_grad():
        fused.weight.copy_(torch.cat([d.weight for d in dense]))
        fused.bias.copy_(torch.cat([d.bias for d in dense]))
    att.qkv = SparseLinear(fused, parts[0].bf16, int8=parts[0].int8) if isinstance(parts[0], SparseLinear) else fused
    del att.query, att.key, att.value


def _standard_layer(layer: nn.Module) -> bool:
    att = getattr(getattr(layer, "attention", None), "self", None)
    out = getattr(getattr(layer, "attention", None), "output", None)
    ffn = getattr(layer, "output", None)
    if att is None or out is None or ffn is None or not hasattr(layer, "intermediate"):
        return False
    if not all(isinstance(getattr(att, n, None), nn.Module) for n in ("query", "key", "value")):
        return False
    if not all(isinstance(getattr(m, n, None), nn.Module) for m in (out, ffn) for n in ("dense", "LayerNorm")):
        return False
    heads, size = getattr(att, "num_attention_heads", None), getattr(att, "attention_head_size", None)
    return (isinstance(heads, int) and isinstance(size, int)
            and getattr(att, "position_embedding_type", "absolute") == "absolute"
            and not getattr(layer, "is_decoder", False) and not getattr(layer, "add_cross_attention", False)
            and abs(getattr(att, "scaling", size ** -0.5) - size ** -0.5) < 1e-12)


class _LeanForward:
    """A BERT layer's forward in few ops (see lean_layers); HF calls it with (hidden, mask, ...).

    Where the fused attention kernel is built for Q's dtype and has its head size, Q, K and V (fused, see
    `_fuse_qkv`) go to it (`kernels.fused_attention`). Otherwise attention runs outside autocast in the
    dtype of Q: the scores as one batched product that also scales and adds the mask (baddbmm), softmax on them
    directly (in bf16 torch still sums in fp32), then the context. Under autocast the same steps cast the scores
    to fp32 and back and take three more passes over them (design-measurements.md)."""

    def __init__(self, layer: nn.Module, masks: "_Masks"):
        self.layer, self.masks = layer, masks
        size = layer.attention.self.attention_head_size
        self.fused = attention_dtypes() if size in ATTENTION_SIZES else set()  # the dtypes the kernel takes

    def __call__(self, hidden_states: torch.Tensor, attention_mask: torch.Tensor | None = None, *args, **kwargs):
        batch, tokens, width = hidden_states.shape
        att = self.layer.attention.self
        heads, size = att.num_attention_heads, att.attention_head_size
        if hasattr(att, "qkv"):
            qkv = att.qkv(hidden_states)
            if qkv.dtype in self.fused and qkv.device.type == "cpu":
                mask = self.masks.additive(attention_mask, heads, qkv.dtype)
                context = fused_attention(qkv, mask, heads, size ** -0.5)
                return self._rest(context, hidden_states)
            q, k, v = qkv.split(heads * size, -1)
        else:
            q, k, v = att.query(hidden_states), att.key(hidden_states), att.value(hidden_states)
        with torch.autocast(hidden_states.device.type, enabled=False):
            split = (batch, tokens, heads, size)
            q = q.reshape(split).transpose(1, 2).reshape(batch * heads, tokens, size)
            k = k.to(q.dtype).reshape(split).permute(0, 2, 3, 1).reshape(batch * heads, size, tokens)
            v = v.to(q.dtype).reshape(split).transpose(1, 2).reshape(batch * heads, tokens, size)
            mask = self.masks.additive(attention_mask, heads, q.dtype)
            if mask is None:  # beta=0: the product alone, scaled on the way out (faster than bmm, then mul)
                scores = torch.baddbmm(q.new_empty(batch * heads, tokens, tokens), q, k, beta=0.0, alpha=size ** -0.5)
            else:
                scores = torch.baddbmm(mask, q, k, alpha=size ** -0.5)
            context = torch.bmm(scores.softmax(-1), v).view(batch, heads, tokens, size)
            context = context.transpose(1, 2).reshape(batch, tokens, width)
        return self._rest(context, hidden_states)

    def _rest(self, context: torch.Tensor, hidden_states: torch.Tensor) -> torch.Tensor:
        """The output projection, residual and LayerNorm, the FFN, residual and LayerNorm (each residual add and its
        LayerNorm in one pass on the native kernel where it is built: `kernels.add_layernorm`)."""
        layer = self.layer
        out, ffn = layer.attention.output, layer.output
        attended = _add_norm(out.dense(context), hidden_states, out.LayerNorm)
        return _add_norm(ffn.dense(layer.intermediate(attended)), attended, ffn.LayerNorm)


def _add_norm(a: torch.Tensor, b: torch.Tensor, norm: nn.Module) -> torch.Tensor:
    """norm(a + b): the fused kernel where it takes these, else torch; in the dtype torch's would return (bf16 when
    both are, else fp32; the fused kernel computes in fp32 either way)."""
    fused = add_layernorm(a, b, norm) if not torch.is_grad_enabled() else None
    if fused is None:
        return norm(a + b)
    return fused.to(torch.bfloat16) if a.dtype == b.dtype == torch.bfloat16 else fused


class _Masks:
    """The attention mask HF hands every layer, converted once per forward (the same tensor comes to each layer):
    additive, finite in the scores' dtype, one row per sequence where all its rows are equal (a padding mask), and
    shaped (batch x heads, rows, keys) as baddbmm and the fused attention kernel take it."""

    def __init__(self):
        self.last: tuple = (None, None, None)  # (mask, (heads, dtype), converted): one tuple, swapped whole

    def additive(self, mask: torch.Tensor | None, heads: int, dtype: torch.dtype) -> torch.Tensor | None:
        if mask is None:
            return None
        source, key, value = self.last  # read once: another thread's call may replace it meanwhile
        if mask is source and key == (heads, dtype):
            return value
        low = torch.finfo(dtype).min
        converted = torch.where(mask, 0.0, low) if mask.dtype == torch.bool else mask.clamp(min=low)
        if converted.dim() < 4:  # (batch, keys) or (batch, rows, keys): no heads axis
            converted = converted[:, None, None, :] if converted.dim() == 2 else converted[:, None]
        if converted.shape[-2] > 1 and bool((converted == converted[..., :1, :]).all()):
            converted = converted[..., :1, :]
        batch, _, rows, keys = converted.shape
        value = converted.to(dtype).expand(batch, heads, rows, keys).reshape(batch * heads, rows, keys)
        self.last = (mask, (heads, dtype), value)
        return value
