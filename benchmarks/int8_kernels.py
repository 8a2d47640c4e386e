"""One pruned linear layer, every way lth could run it: the int8 quad kernel (AVX512-VNNI, activations quantised per
token on the fly), lth's dense int8 side (the same quantisation around torch._int_mm), the bf16 pair kernel, the fp32 CSR kernel, and the dense products a user has without lth (torch
bf16 and fp32 matmul, torch's dynamic int8 linear on its x86 and onednn engines). MiniLM-L6's shapes, magnitude-free
random pruning at each sparsity, bf16 activations where a kernel takes them.

    python benchmarks/int8_kernels.py [--tokens 4096 128] [--sparsity 0.5 0.7 0.9] [--rounds 10] [--threads 2]

Each configuration is called twice, then `rounds` times interleaved with the others; the best time of each is
reported (a kernel's cost, not the machine's noise). The first line names the CPU and its matrix units.
"""
from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import torch

from lth.core.devices import cpu_flags
from lth.engine.kernels import CSR, pair_kernel, sparse_linear
from lth.engine.quads import Int8Dense, QuadCSR, int8_dense, int8_dense_linear, quad_kernel, quad_linear

SHAPES = {"ffn-in 1536x384": (1536, 384), "ffn-out 384x1536": (384, 1536), "qkv 1152x384": (1152, 384),
          "attention-out 384x384": (384, 384)}


def dynamic_int8(weight: torch.Tensor, bias: torch.Tensor, engine: str):
    torch.backends.quantized.engine = engine
    layer = torch.nn.Linear(weight.shape[1], weight.shape[0])
    with torch.no_grad():
        layer.weight.copy_(weight)
        layer.bias.copy_(bias)
    quantized = torch.ao.quantization.quantize_dynamic(torch.nn.Sequential(layer), {torch.nn.Linear}, torch.qint8)

    def run(x):
        torch.backends.quantized.engine = engine
        return quantized(x)
    return run


def configurations(weight: torch.Tensor, bias: torch.Tensor) -> dict:
    found = {}
    if quad_kernel():
        quads = QuadCSR(weight, bias)
        found["lth int8 quads"] = (lambda x: quad_linear(x, quads, bf16_out=True), torch.bfloat16)
        empty = QuadCSR(torch.zeros_like(weight), bias)  # what a layer costs besides its products
        found["lth int8, tile and output only"] = (lambda x: quad_linear(x, empty, bf16_out=True), torch.bfloat16)
    if int8_dense():
        whole = Int8Dense(weight, bias)
        found["lth int8 dense"] = (lambda x: int8_dense_linear(x, whole, bf16_out=True), torch.bfloat16)
    if pair_kernel():
        pairs = CSR(weight, bias, pairs=True)
        found["lth bf16 pairs"] = (lambda x: sparse_linear(x, pairs, bf16_out=True), torch.bfloat16)
    csr = CSR(weight, bias)
    found["lth fp32 CSR"] = (lambda x: sparse_linear(x, csr), torch.float32)
    wb, bb = weight.bfloat16(), bias.bfloat16()
    found["torch dense bf16"] = (lambda x: torch.nn.functional.linear(x, wb, bb), torch.bfloat16)
    found["torch dense fp32"] = (lambda x: torch.nn.functional.linear(x, weight, bias), torch.float32)
    for engine in ("x86", "onednn"):
        if engine in torch.backends.quantized.supported_engines:
            found[f"torch dynamic int8 ({engine})"] = (dynamic_int8(weight, bias, engine), torch.float32)
    return found


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=int, nargs="+", default=[4096, 128])
    parser.add_argument("--sparsity", type=float, nargs="+", default=[0.5, 0.7, 0.9])
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    flags = cpu_flags()
    model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), "unknown CPU")
    units = [f for f in ("avx512_vnni", "avx512_bf16", "amx_bf16", "amx_int8") if f in flags]
    print(f"{model}; {', '.join(units) or 'no VNNI/BF16/AMX'}; {args.threads} threads; best of {args.rounds} "
          "interleaved rounds, ms")
    g = torch.Generator().manual_seed(0)
    for tokens in args.tokens:
        for shape, (rows, width) in SHAPES.items():
            for sparsity in args.sparsity:
                weight = torch.randn(rows, width, generator=g) * (torch.rand(rows, width, generator=g) >= sparsity)
                bias = torch.randn(rows, generator=g)
                x = torch.randn(tokens, width, generator=g)
                runs = configurations(weight, bias)
                inputs = {dtype: x.to(dtype) for dtype in (torch.float32, torch.bfloat16)}
                best = {}
                for name, (run, dtype) in runs.items():
                    run(inputs[dtype]), run(inputs[dtype])
                for _ in range(args.rounds):
                    for name, (run, dtype) in runs.items():
                        start = time.perf_counter()
                        run(inputs[dtype])
                        best[name] = min(best.get(name, float("inf")), time.perf_counter() - start)
                cells = "  ".join(f"{name} {best[name] * 1e3:.3f}" for name in runs)
                print(f"{tokens:5d} tokens  {shape:22s} {sparsity:4.0%}  {cells}")


if __name__ == "__main__":
    main()
