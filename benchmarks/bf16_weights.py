"""What casting the linear layers' weights to bf16 once (FastModel does it since this benchmark) saves against bf16
autocast casting the fp32 weights on every call: lth's engine in bf16 on MiniLM-L6 magnitude-pruned to 50 and 90%,
the two variants interleaved, median of 8 rounds.

    python benchmarks/bf16_weights.py [--model minilm] [--length 128]

"same choices" says whether both engines picked the same kernel for every layer; only then are their logits
bit-identical (the cast gives the values autocast computes), as tests/test_fast.py checks with the choice forced.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch

import lth.engine.engine as engine_module
from lth.engine.bench import inputs
from lth.engine.engine import FastModel
from lth.engine.sparse import sparsify

sys.path.insert(0, str(Path(__file__).parent))
from inference_speed import pruned_model  # noqa: E402


def build(name: str, sparsity: float, cast: bool) -> FastModel:
    model, names = pruned_model(name, sparsity)
    sparsify(model, names, bf16=True)
    keep = engine_module._linear_weights_in_bf16
    if not cast:
        engine_module._linear_weights_in_bf16 = lambda m: None
    try:
        return FastModel(model, "bf16")
    finally:
        engine_module._linear_weights_in_bf16 = keep


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="minilm")
    parser.add_argument("--length", type=int, default=128)
    args = parser.parse_args()
    torch.set_num_threads(os.cpu_count())
    for sparsity in (0.5, 0.9):
        every, once = build(args.model, sparsity, False), build(args.model, sparsity, True)
        for batch in (1, 32):
            x = inputs(every.config, batch, args.length)
            for _ in range(3):
                every(**x), once(**x)
            times = {"every": [], "once": []}
            for _ in range(8):
                for name, fast in (("every", every), ("once", once)):
                    start = time.perf_counter()
                    fast(**x)
                    times[name].append(time.perf_counter() - start)
            median = {k: sorted(v)[len(v) // 2] * 1e3 for k, v in times.items()}
            print(f"{sparsity:.0%} {batch}x{args.length}: cast every call {median['every']:.1f} ms, cast once "
                  f"{median['once']:.1f} ms; same choices {every.layers() == once.layers()}")


if __name__ == "__main__":
    main()
