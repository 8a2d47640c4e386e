"""The pruned layers' calls of one forward, timed alone: where a forward's time goes at small batches. One forward
of lth's engine records each SparseLinear's input; then those calls alone (the kernel with its Python wrapper, as
the forward makes them) and the whole forward are timed, interleaved, the median of --repeats rounds. Run it under
different OpenMP settings to see what the threads' wake-ups cost (the OpenMP runtime reads them at start):

    python benchmarks/layer_calls.py --sparsity 0.5 --precision int8
    OMP_WAIT_POLICY=ACTIVE python benchmarks/layer_calls.py --sparsity 0.5 --precision int8
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
    parser.add_argument("--precision", default="auto", choices=["auto", "bf16", "fp32", "int8"])
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--length", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=40)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    native = auto_precision(torch.device("cpu"))
    precision = native if args.precision == "auto" else args.precision
    model, names = pruned_model(args.model, args.sparsity)
    sparsify(model, names, bf16=precision == "bf16" or (precision == "int8" and native == "bf16"),
             int8=precision == "int8")
    fast = FastModel(model, precision)
    x = inputs(model.config, args.batch_size, args.length)
    fast(**x)  # each layer chooses its kernel here
    calls = []
    for module in model.modules():
        if isinstance(module, SparseLinear):
            module.register_forward_hook(lambda m, given, _: calls.append((m, given[0])))
    fast(**x)
    for module in model.modules():
        module._forward_hooks.clear()

    def layers():
        with torch.inference_mode():
            for module, given in calls:
                module(given)

    times = {"forward": [], "layer calls": []}
    for _ in range(args.repeats):
        for name, run in (("forward", lambda: fast(**x)), ("layer calls", layers)):
            start = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - start)
    policy = os.environ.get("OMP_WAIT_POLICY", "default")
    print(f"{args.sparsity:.0%} sparse, {precision}, batch x length {args.batch_size}x{args.length}, {args.threads} "
          f"threads, OMP_WAIT_POLICY {policy}, median of {args.repeats}: forward "
          f"{statistics.median(times['forward']) * 1e3:.2f} ms, its {len(calls)} pruned-layer calls alone "
          f"{statistics.median(times['layer calls']) * 1e3:.2f} ms")


if __name__ == "__main__":
    main()
