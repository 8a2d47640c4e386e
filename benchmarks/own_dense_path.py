"""lth's engine against itself with every pruned layer forced dense (its own dense path: the same lean layers,
fused attention and bf16, dense matmuls), interleaved in one process: the target at 50% sparsity is never to be
slower than that, which the per-layer choice between sparse and dense is there to keep.

    python benchmarks/own_dense_path.py --sparsity 0.5
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from inference_speed import pruned_model  # noqa: E402

from lth.core.devices import auto_precision  # noqa: E402
from lth.engine.bench import inputs  # noqa: E402
from lth.engine.engine import FastModel  # noqa: E402
from lth.engine.sparse import SparseLinear, sparsify  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="minilm")
    parser.add_argument("--sparsity", type=float, default=0.5)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--length", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=20, help="rounds at batch 1; a tenth of them (at least 3) "
                        "at the batch size")
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    precision = auto_precision(torch.device("cpu"))
    engines = {}
    for name in ("engine", "own dense path"):
        model, names = pruned_model(args.model, args.sparsity)
        sparsify(model, names, bf16=precision == "bf16")
        engines[name] = FastModel(model, precision)
    print(f"lth engine in {precision}, {args.sparsity:.0%} sparse, {args.threads} threads")
    for batch, rounds in ((args.batch_size, max(3, args.repeats // 10)), (1, args.repeats)):
        x = inputs(engines["engine"].config, batch, args.length)
        size = 1 << max(0, (batch * args.length - 1).bit_length())  # the input-size bucket SparseLinear keys by
        for layer in engines["own dense path"].model.modules():
            if isinstance(layer, SparseLinear):
                layer.choice[size] = "dense"
        for engine in engines.values():  # warm-up: the engine chooses its layers' kernels here
            engine(**x)
        times: dict[str, list[float]] = {name: [] for name in engines}
        for round_ in range(rounds):
            for name in list(engines)[:: 1 if round_ % 2 else -1]:
                start = time.perf_counter()
                engines[name](**x)
                times[name].append(time.perf_counter() - start)
        ms = {name: statistics.median(t) * 1e3 for name, t in times.items()}
        sparse = sum(layer.choice.get(size) == "sparse" for layer in engines["engine"].model.modules()
                     if isinstance(layer, SparseLinear))
        print(f"{batch}x{args.length}: engine {ms['engine']:.2f} ms, own dense path {ms['own dense path']:.2f} ms, "
              f"engine {ms['own dense path'] / ms['engine']:.2f}x; {sparse} layers on the sparse kernel")


if __name__ == "__main__":
    main()
