"""Sparse x dense matrix products for CPU inference.

Y = X Wᵀ + b for activations X (tokens, in) and a pruned W (out, in) kept in CSR (rows = outputs), split into
column chunks where the input is wide or the matrix dense (`choose_chunk`). Tokens are taken 64 at a time: the
tile of X is transposed into a buffer (in x 64), then, chunk by chunk, for every output row each non-zero weight
adds w · X[:, i] to 64 running sums at once (four AVX-512 registers, fused multiply-adds), and the tile of
outputs is transposed back into Y. Tiles run in parallel on torch's threads (and blocks of output rows too,
where there are fewer tiles than threads). Inputs and outputs may be bf16 (converted while transposing), the products are fp32. Where the CPU has
AVX512-BF16 a second layout (`CSR(pairs=True)`) keeps W and the tile in bf16 and multiplies two non-zeros of a row
per instruction (VDPBF16PS, sums in fp32): what bf16 autocast's matmul computes, in half the bytes, and faster
than the fp32 layout on MiniLM's shapes (benchmarks/results/design-measurements.md, like every number behind a
choice in the engine).

Also here: attention fused into one pass a head (`fused_attention`), in bf16 with the same instructions and in fp32.

Three implementations, best first: a C++ kernel with AVX-512 (or AVX2) intrinsics (csrc/, compiled for this CPU
on first use by `build.py`; needs a C++ compiler); the same algorithm in numba (a wheel, no compiler); and none
(the engine then keeps the dense matmul). `backend()` says which one runs and why.
"""
from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch

from .build import native as _native

TILE = 64

CHUNK = 128  # input columns per chunk when chunking pays: 128 x 64 tokens x 4 bytes = 32 KiB, L1's size


def choose_chunk(width: int, density: float, pairs: bool = False) -> int:
    """Columns per chunk. fp32 layout: all of them (plain CSR) for narrow, sparse matrices; 128 for wide inputs or
    denser matrices, where re-reading a 64-token tile of a wide input from L2 for every non-zero costs more than
    re-reading each row's 64 running sums once per chunk. bf16 pairs (half the bytes a column): 512 up to 20%
    density, 256 above. Both rules were measured on MiniLM's shapes (design-measurements.md)."""
    if pairs:
        return min(width, 512 if density <= 0.2 else 256)
    return CHUNK if width > CHUNK and (width > 512 or density > 0.2) else width


class CSR:
    """A pruned weight matrix in column chunks of CSR: for chunk c and output row o, the non-zeros at
    indptr[c * rows + o] : indptr[c * rows + o + 1], their columns (int16, relative to the chunk) and values (fp32).
    With one chunk it is plain CSR.

    `pairs=True` (for `pair_kernel()`): the weights are rounded to bf16 and each row's non-zeros (in each chunk)
    go in pairs: indptr counts pairs, `indices` holds two columns a pair, `values` one int32 a pair, the first
    weight's bf16 bits in its low half; a row with an odd count ends on a pair whose second weight is 0 on its
    last column again."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None = None, chunk: int | None = None,
                 pairs: bool = False):
        w = weight.detach().float().cpu()
        if w.shape[1] > 32767:
            raise ValueError(f"{w.shape[1]} input features do not fit int16 column indices")
        self.shape = rows, width = tuple(w.shape)
        self.pairs = pairs
        nonzero = w != 0
        density = float(nonzero.float().mean()) if w.numel() else 0.0
        self.chunk = max(1, min(width, chunk or choose_chunk(width, density, pairs)))
        r, c = nonzero.nonzero(as_tuple=True)
        key = (c // self.chunk) * rows + r  # chunk-major, then row, then column
        order = torch.sort(key * width + c).indices
        r, c, key = r[order], c[order], key[order]
        chunks = (width + self.chunk - 1) // self.chunk
        counts = torch.bincount(key, minlength=chunks * rows)
        self.bias = (torch.zeros(rows) if bias is None else bias.detach().float().cpu()).contiguous()
        if not pairs:
            self.indptr = torch.cat([torch.zeros(1, dtype=torch.int64), counts.cumsum(0)])
            self.indices = (c % self.chunk).to(torch.int16).contiguous()
            self.values = w[r, c].contiguous()
            return
        self.indptr = torch.cat([torch.zeros(1, dtype=torch.int64), ((counts + 1) // 2).cumsum(0)])
        first = torch.cat([torch.zeros(1, dtype=torch.int64), counts.cumsum(0)[:-1]])  # each segment's first
        slot = 2 * self.indptr[key] + torch.arange(len(key)) - first[key]  # place in the flattened pairs
        indices = torch.full((2 * int(self.indptr[-1]),), -1, dtype=torch.int64)
        bits = torch.zeros(2 * int(self.indptr[-1]), dtype=torch.int64)
        indices[slot] = c % self.chunk
        bits[slot] = w[r, c].bfloat16().view(torch.int16).to(torch.int64) & 0xFFFF
        indices, bits = indices.view(-1, 2), bits.view(-1, 2)
        odd = indices[:, 1] < 0  # a padded pair: the same column again, weight 0
        indices[odd, 1] = indices[odd, 0]
        packed = bits[:, 0] | (bits[:, 1] << 16)
        self.indices = indices.reshape(-1).to(torch.int16).contiguous()
        self.values = torch.where(packed >= 2 ** 31, packed - 2 ** 32, packed).to(torch.int32).contiguous()


@lru_cache(maxsize=1)
def _numba():
    try:
        from numba import njit, prange
    except ImportError:
        return None

    @njit(parallel=True, fastmath=True, cache=True)
    def run(x, chunk, indptr, indices, values, bias, out):  # pragma: no cover - compiled
        tokens, width = x.shape
        rows = out.shape[1]
        chunks = (width + chunk - 1) // chunk
        for tile in prange((tokens + TILE - 1) // TILE):
            start = tile * TILE
            count = min(TILE, tokens - start)
            xt = np.zeros((width, TILE), dtype=np.float32)
            for t in range(count):
                for i in range(width):
                    xt[i, t] = x[start + t, i]
            acc = np.empty((rows, TILE), dtype=np.float32)
            for o in range(rows):
                for t in range(TILE):
                    acc[o, t] = bias[o]
            for c in range(chunks):
                for o in range(rows):
                    for k in range(indptr[c * rows + o], indptr[c * rows + o + 1]):
                        w, column = values[k], xt[c * chunk + indices[k]]
                        for t in range(TILE):
                            acc[o, t] += w * column[t]
            for t in range(count):
                for o in range(rows):
                    out[start + t, o] = acc[o, t]
    return run


def backend() -> tuple[str, str]:
    """(which sparse kernel runs here, why not a better one)."""
    native, why = _native()
    if native is not None:
        return "native", "C++ kernel compiled for this CPU"
    if _numba() is not None:
        return "numba", f"the C++ kernel could not be built ({why}); numba instead"
    return "none", f"no C++ kernel ({why}) and no numba: the dense matmuls are kept"


def pair_kernel() -> bool:
    """Whether the bf16 pair kernel (AVX512-BF16) is built here; without it bf16 runs on the fp32 layout."""
    native, _ = _native()
    return native is not None and native.has_pairs()


def sparse_linear(x: torch.Tensor, csr: CSR, gelu: bool = False, bf16_out: bool = False) -> torch.Tensor:
    """x (..., in) -> (..., out) = x Wᵀ + b from the non-zeros of W, then (exact, erf) GELU if asked.

    The result is bf16 when x is, or when `bf16_out`; fp32 otherwise. A `pairs` layout multiplies bf16 roundings
    of x and W (as bf16 autocast's matmul does) and needs `pair_kernel()`; the fp32 layout multiplies x as given."""
    lead, flat = x.shape[:-1], x.reshape(-1, x.shape[-1])
    flat = flat if flat.dtype in (torch.float32, torch.bfloat16) else flat.float()
    native, _ = _native()
    if csr.pairs:
        if not pair_kernel():
            raise RuntimeError("the bf16 pair layout needs the AVX512-BF16 kernel, not built here: use CSR(pairs=False)")
        out = native.pair_linear(flat.contiguous(), csr.chunk, csr.indptr, csr.indices, csr.values, csr.bias, gelu,
                                 bf16_out)
        return out.reshape(*lead, csr.shape[0])
    if native is not None:
        out = native.sparse_linear(flat.contiguous(), csr.chunk, csr.indptr, csr.indices, csr.values, csr.bias, gelu,
                                   bf16_out)
        return out.reshape(*lead, csr.shape[0])
    run = _numba()
    if run is None:
        raise RuntimeError("no sparse kernel here: " + backend()[1])
    out = np.empty((flat.shape[0], csr.shape[0]), dtype=np.float32)
    run(flat.float().contiguous().numpy(), csr.chunk, csr.indptr.numpy(), csr.indices.numpy(), csr.values.numpy(),
        csr.bias.numpy(), out)
    y = torch.from_numpy(out)
    y = torch.nn.functional.gelu(y) if gelu else y
    return y.to(torch.bfloat16 if bf16_out else x.dtype).reshape(*lead, csr.shape[0])


ATTENTION_SIZES = (32, 64, 128)  # head sizes the fused attention is compiled for


def attention_dtypes() -> set[torch.dtype]:
    """The dtypes the fused attention is built for here: bf16 needs AVX512-BF16, fp32 AVX-512 (F, BW, VL)."""
    native, _ = _native()
    if native is None:
        return set()
    return {torch.bfloat16 if name == "bf16" else torch.float32 for name in native.attention_dtypes().split(",")
            if name}


def fused_attention(qkv: torch.Tensor, mask: torch.Tensor | None, heads: int, scale: float) -> torch.Tensor:
    """softmax(scale q kᵀ + mask) v for every head, from a fused Q|K|V projection (batch, tokens, 3 x width) in bf16
    or fp32, as (batch, tokens, width) in the same dtype; `mask` additive (batch x heads, 1 or tokens, tokens) or
    None.

    One C++ pass a head, no (batch x heads x tokens x tokens) tensor written, scores and softmax in fp32. In bf16
    both products use the pair kernel's instructions and the probabilities are rounded to bf16 (as softmax's bf16
    output is), faster than torch's baddbmm-softmax-bmm (design-measurements.md). Needs the dtype in
    `attention_dtypes()` and a head size in ATTENTION_SIZES."""
    size = qkv.shape[-1] // 3 // heads
    if qkv.dtype not in attention_dtypes() or size not in ATTENTION_SIZES:
        raise RuntimeError(f"no fused attention for head size {size} in {qkv.dtype} here; use torch's")
    batch, tokens = qkv.shape[:2]
    if mask is not None and (mask.dim() != 3 or mask.shape[0] != batch * heads or mask.shape[1] not in (1, tokens)
                             or mask.shape[2] != tokens):
        raise ValueError(f"mask of shape {tuple(mask.shape)}: give ({batch * heads}, 1 or {tokens}, {tokens})")
    mask = torch.empty(0, dtype=qkv.dtype) if mask is None else mask.to(qkv.dtype).contiguous()
    return _native()[0].attention(qkv.contiguous(), mask, heads, scale)


def add_layernorm(a: torch.Tensor, b: torch.Tensor, norm: torch.nn.LayerNorm) -> torch.Tensor | None:
    """LayerNorm(a + b) computed and returned in fp32 on the native kernel (the residual add and the norm in one
    pass; a and b fp32 or bf16); None where the kernel is not built or `norm` is not a plain affine
    LayerNorm over the last dimension of fp32 weights, so that the caller runs torch's."""
    native, _ = _native()
    if (native is None or type(norm) is not torch.nn.LayerNorm
            or norm.weight is None or norm.bias is None or len(norm.normalized_shape) != 1
            or a.dtype not in (torch.float32, torch.bfloat16) or b.dtype not in (torch.float32, torch.bfloat16)
            or a.shape != b.shape or a.device.type != "cpu" or norm.weight.dtype != torch.float32):
        return None
    return native.add_layernorm(a, b, norm.weight.detach(), norm.bias.detach(), norm.eps)
