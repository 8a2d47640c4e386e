"""int8 for the sparse engine: a pruned weight matrix quantised per output row (symmetric, int8) in the quad layout
of the VNNI kernel (csrc/int8.cpp), whose activations are quantised per token as they are read (dynamic).

The layout: the rows' non-zeros (of the int8 weights; a weight that rounds to 0 is dropped) in column chunks of
512 (a chunk of the u8 tile is 32 KiB, L1's size), four a quad: `indices` holds four columns a quad (int16,
relative to the chunk), `values` one int32 a quad with the k-th weight in byte k, a row ending on a quad padded
with weight 0 on its last column; `scale` (per row, max |w| / 127) and `rowsum` (per row, the sum of its int8
weights, for the kernel's u8 offset).

The dense int8 side (`Int8Dense`, for layers where the sparse kernel does not pay): the same q(W) and scales as a
plain int8 matrix for `torch._int_mm` (oneDNN's int8 GEMM, VNNI or AMX), with x quantised and the sums dequantised
by the kernels' own code (csrc/int8.cpp): its sums are exact in int32 as the quad kernel's are, so a layer's output is
bit-identical whichever side it runs."""
from __future__ import annotations

import torch

from .build import native as _native

CHUNK = 512
SLICE = 128  # tokens a dense int8 product takes at a time (int8_dense_linear)


def quantize_rows(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(int8 weights, fp32 scale per row): w ≈ q scale, q = round(w / scale) with scale = max |w| / 127."""
    w = weight.detach().float().cpu()
    top = w.abs().amax(1)
    scale = torch.where(top > 0, top / 127, torch.zeros_like(top))
    q = torch.round(w / torch.where(scale > 0, scale, torch.ones_like(scale))[:, None]).clamp(-127, 127)
    return q.to(torch.int8), scale


def quantize_tokens(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(int8 rows, fp32 scale per row) as the kernel quantises activations: round(x · (127 / max |x|)), nearest even,
    in fp32 (the reference the kernel is tested against)."""
    x = x.float()
    top = x.abs().amax(-1)
    # 127 / top as one IEEE division, as the kernel computes it (`127 / tensor` is a reciprocal times 127)
    inverse = torch.where(top > 0, torch.full_like(top, 127.0).div(top), torch.zeros_like(top))
    return torch.round(x * inverse[..., None]).clamp(-127, 127).to(torch.int8), torch.where(
        top > 0, top / 127, torch.zeros_like(top))


class QuadCSR:
    """A pruned weight matrix (and bias) in the int8 quad layout (see the module's docstring)."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None = None, chunk: int | None = None):
        q, self.scale = quantize_rows(weight)
        self.shape = rows, width = tuple(q.shape)
        if width > 32767:
            raise ValueError(f"{width} input features do not fit int16 column indices")
        self.chunk = max(1, min(width, chunk or CHUNK))
        r, c = (q != 0).nonzero(as_tuple=True)
        key = (c // self.chunk) * rows + r  # chunk-major, then row, then column
        order = torch.sort(key * width + c).indices
        r, c, key = r[order], c[order], key[order]
        counts = torch.bincount(key, minlength=((width + self.chunk - 1) // self.chunk) * rows)
        self.indptr = torch.cat([torch.zeros(1, dtype=torch.int64), ((counts + 3) // 4).cumsum(0)])
        first = torch.cat([torch.zeros(1, dtype=torch.int64), counts.cumsum(0)[:-1]])  # each segment's first
        slot = 4 * self.indptr[key] + torch.arange(len(key)) - first[key]  # place in the flattened quads
        quads = int(self.indptr[-1])
        indices = torch.full((4 * quads,), -1, dtype=torch.int64)
        values = torch.zeros(4 * quads, dtype=torch.int64)
        indices[slot] = c % self.chunk
        values[slot] = q[r, c].to(torch.int64) & 0xFF
        indices, values = indices.view(-1, 4), values.view(-1, 4)
        for k in range(1, 4):  # a padded place: the column before it again, weight 0
            padded = indices[:, k] < 0
            indices[padded, k] = indices[padded, k - 1]
        packed = values[:, 0] | values[:, 1] << 8 | values[:, 2] << 16 | values[:, 3] << 24
        self.indices = indices.reshape(-1).to(torch.int16).contiguous()
        self.values = torch.where(packed >= 2 ** 31, packed - 2 ** 32, packed).to(torch.int32).contiguous()
        self.rowsum = q.to(torch.int32).sum(1, dtype=torch.int32).contiguous()
        self.bias = (torch.zeros(rows) if bias is None else bias.detach().float().cpu()).contiguous()


def quad_kernel() -> bool:
    """Whether the int8 quad kernel (AVX512-VNNI) is built here."""
    native, _ = _native()
    return native is not None and native.has_quads()


def quad_linear(x: torch.Tensor, layout: QuadCSR, gelu: bool = False, bf16_out: bool = False) -> torch.Tensor:
    """x (..., in) -> (..., out) ≈ x Wᵀ + b with W and x in int8 (x per token, dynamically), sums exact in int32,
    then (exact, erf) GELU if asked; bf16 when x is or `bf16_out`, fp32 otherwise. Needs `quad_kernel()`."""
    if not quad_kernel():
        raise RuntimeError("the int8 quad layout needs the AVX512-VNNI kernel, not built here")
    lead, flat = x.shape[:-1], x.reshape(-1, x.shape[-1])
    flat = flat if flat.dtype in (torch.float32, torch.bfloat16) else flat.float()
    out = _native()[0].quad_linear(flat.contiguous(), layout.chunk, layout.indptr, layout.indices, layout.values,
                                   layout.scale, layout.rowsum, layout.bias, gelu, bf16_out)
    return out.reshape(*lead, layout.shape[0])


class Int8Dense:
    """A weight matrix (and bias) quantised per output row as `QuadCSR` quantises it, kept whole (in x out, int8) for
    `torch._int_mm`."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None = None):
        q, self.scale = quantize_rows(weight)
        self.shape = tuple(q.shape)
        self.weight_t = q.t().contiguous()  # (in, out): measured no slower than the transposed view at 1-4,096 tokens
        self.bias = (torch.zeros(self.shape[0]) if bias is None else bias.detach().float().cpu()).contiguous()


def int8_dense() -> bool:
    """Whether the dense int8 side runs here: the VNNI kernels (which quantise and dequantise) and torch._int_mm."""
    return quad_kernel() and hasattr(torch, "_int_mm")


def int8_dense_linear(x: torch.Tensor, layer: Int8Dense, gelu: bool = False, bf16_out: bool = False) -> torch.Tensor:
    """x (..., in) -> (..., out) as `quad_linear` computes it, through a dense int8 product: bit-identical to it for
    the same weights. Needs `int8_dense()`.

    The product runs SLICE tokens at a time into one int32 buffer, each slice dequantised as it comes: oneDNN's int8
    GEMM through torch._int_mm took up to 2.7x longer per token in one call on 4,096 tokens than in calls of 128
    (benchmarks/results/design-measurements.md), and the slices' sums stay in cache."""
    if not int8_dense():
        raise RuntimeError("the dense int8 product needs the AVX512-VNNI kernels and torch._int_mm, not here")
    native = _native()[0]
    lead, flat = x.shape[:-1], x.reshape(-1, x.shape[-1])
    flat = flat if flat.dtype in (torch.float32, torch.bfloat16) else flat.float()
    q, xscale = native.quantize_tokens(flat.contiguous())
    tokens, rows = q.shape[0], layer.shape[0]
    out = torch.empty(tokens, rows, dtype=torch.bfloat16 if bf16_out or flat.dtype == torch.bfloat16 else torch.float32)
    sums = torch.empty(min(tokens, SLICE), rows, dtype=torch.int32)
    for start in range(0, tokens, SLICE):
        end = min(tokens, start + SLICE)
        part = sums[: end - start]
        torch._int_mm(q[start:end], layer.weight_t, out=part)
        native.dequantize_rows(part, xscale[start:end], layer.scale, layer.bias, gelu, out[start:end])
    return out.reshape(*lead, rows)
