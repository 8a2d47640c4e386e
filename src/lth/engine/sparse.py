"""Pruned linear layers on the sparse kernels: each one times the sparse kernel against the dense matmul once per
size of input it meets (tokens rounded up to a power of two) and keeps the faster, so it is never slower than the
dense path."""
from __future__ import annotations

import time

import torch
from torch import nn

from .kernels import CSR, backend, pair_kernel, sparse_linear
from .quads import Int8Dense, QuadCSR, int8_dense, int8_dense_linear, quad_kernel, quad_linear

DENSE_ABOVE = 0.8  # a matrix keeping more than this is never worth a sparse kernel
ROUNDS = 3  # timed rounds per implementation when a layer chooses, after one warm-up call of each


class SparseLinear(nn.Module):
    """A pruned nn.Linear that runs whichever of the sparse kernel and the dense matmul is faster here.

    `bf16`: the sparse kernel returns bf16, as the dense matmul does under bf16 autocast, and where the CPU has
    AVX512-BF16 it also multiplies as that matmul does, bf16 weights by bf16 activations summed in fp32 (the pair
    kernel, twice the products per instruction and half the bytes); elsewhere it multiplies in fp32. `gelu` (the
    FFN's first layer): GELU is applied inside the kernel, on values still in registers, instead of a second pass.
    `int8` (needs `quad_kernel()`): the sparse side is the int8 quad kernel (weights per row, activations per token)
    and the dense side the same quantisation through a dense int8 product (`int8_dense_linear`), whose output is
    bit-identical: what a layer computes does not depend on which side the timing picks, so the dev metric `lth
    export` measures holds at every batch size. A matrix keeping more than DENSE_ABOVE of its weights takes the dense
    int8 side without a sparse layout. Where torch has no `_int_mm`, the dense side is the layer's own matmul."""

    def __init__(self, linear: nn.Linear, bf16: bool = False, gelu: nn.Module | None = None, int8: bool = False):
        super().__init__()
        self.dense, self.bf16, self.gelu, self.int8 = linear, bf16, gelu, int8
        if int8 and not quad_kernel():
            raise RuntimeError("int8 needs the AVX512-VNNI quad kernel, not built here")
        self.whole = Int8Dense(linear.weight, linear.bias) if int8 and int8_dense() else None
        # an unpruned matrix of a ticket, in int8 (see `sparsify`): the dense int8 product alone
        whole_only = self.whole is not None and float((linear.weight != 0).float().mean()) > DENSE_ABOVE
        self.sparse_ok = backend()[0] != "none" and not whole_only
        self.csr = None if not self.sparse_ok else QuadCSR(linear.weight, linear.bias) if int8 else CSR(
            linear.weight, linear.bias, pairs=bf16 and pair_kernel())
        self.choice: dict[int, str] = {}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bucket = 1 << max(0, (x.numel() // x.shape[-1] - 1).bit_length())
        if bucket not in self.choice:
            self.choice[bucket] = self._faster(x) if self.sparse_ok else "dense"
        return self._sparse(x) if self.choice[bucket] == "sparse" else self._dense(x)

    def implementation(self, choice: str) -> str:
        """What a choice runs, by name: 'sparse', 'dense' (the layer's own matmul) or 'int8-dense'."""
        return "int8-dense" if choice == "dense" and self.whole is not None else choice

    def _sparse(self, x: torch.Tensor) -> torch.Tensor:
        run = quad_linear if self.int8 else sparse_linear
        return run(x, self.csr, gelu=self.gelu is not None, bf16_out=self.bf16)

    def _dense(self, x: torch.Tensor) -> torch.Tensor:
        if self.whole is not None:
            return int8_dense_linear(x, self.whole, gelu=self.gelu is not None, bf16_out=self.bf16)
        y = self.dense(x)
        return self.gelu(y) if self.gelu is not None else y

    def _faster(self, x: torch.Tensor) -> str:
        self._sparse(x), self._dense(x)  # warm both: the first call of each pays for caches and allocation
        timings = {}
        for _ in range(ROUNDS):  # interleaved, the best of each: a single timing is too noisy to choose by
            for name, run in (("sparse", self._sparse), ("dense", self._dense)):
                start = time.perf_counter()
                run(x)
                timings[name] = min(timings.get(name, float("inf")), time.perf_counter() - start)
        return min(timings, key=timings.get)


def sparsify(model: nn.Module, names: list[str] | None = None, bf16: bool = False, int8: bool = False) -> int:
    """Swap every pruned nn.Linear (or those whose weight is in `names`) for a SparseLinear (`bf16`, `int8` as there);
    returns how many. A matrix keeping more than DENSE_ABOVE of its weights stays as it is, except in int8, where a
    layer in `names` runs the dense int8 product instead.

    A BERT-style FFN-in (a module with `dense` and an exact GELU as `intermediate_act_fn`) gets GELU fused."""
    swapped = 0
    for parent_name, parent in list(model.named_modules()):
        for child_name, child in list(parent.named_children()):
            full = f"{parent_name}.{child_name}" if parent_name else child_name
            if not isinstance(child, nn.Linear) or (names is not None and f"{full}.weight" not in names):
                continue
            dense = float((child.weight != 0).float().mean()) > DENSE_ABOVE
            if dense and not (int8 and int8_dense() and names is not None):
                continue
            act = getattr(parent, "intermediate_act_fn", None)
            fused = child_name == "dense" and _exact_gelu(act)
            setattr(parent, child_name, SparseLinear(child, bf16, act if fused else None, int8))
            if fused:  # the FFN-in is now its linear layer alone: GELU happens inside it
                object.__setattr__(parent, "forward", getattr(parent, child_name))
            swapped += 1
    return swapped


def _exact_gelu(act) -> bool:
    """Whether an activation is the erf GELU the kernel computes (transformers' "gelu", or nn.GELU())."""
    if isinstance(act, nn.GELU):
        return act.approximate == "none"
    return type(act).__name__ == "GELUActivation" and getattr(act, "act", None) in (
        nn.functional.gelu, getattr(act, "_gelu_python", None)) and not getattr(act, "use_gelu_python", False)
