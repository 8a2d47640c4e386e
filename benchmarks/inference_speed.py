"""lth's sparse engine against the dense engines, on a model magnitude-pruned to 50, 70 and 90% sparsity.

For each sparsity: the model's prunable weights (the encoder's linear layers, pooler kept dense) are pruned by
global magnitude, then torch fp32, torch bf16 autocast, ONNX Runtime, OpenVINO f32 and bf16 (where installed)
and lth's engine (`lth.load_fast`: sparse kernels where they pay, bf16 where native) are timed, interleaved in
one process, at batch 32 x 128 and 1 x 128 tokens. Prints medians, speed against torch fp32 and against the
fastest dense engine, and each engine's largest difference from torch fp32's logits. DeepSparse, the sparse
engine, needs a virtual environment of its own and is compared in deepsparse_speed.py.

    python benchmarks/inference_speed.py                       # MiniLM-L6 + a classification head
    python benchmarks/inference_speed.py --model path/to/model --sparsities 0.9 --repeats 5
    python benchmarks/inference_speed.py --precision fp32      # the engine as it runs on a CPU without bf16
"""
from __future__ import annotations

import argparse
import json
import os

import torch

from lth.core import masks
from lth.core.devices import auto_precision
from lth.core.models import load_model, prunable_weights
from lth.core.pruning import prune
from lth.engine.bench import compare, table
from lth.engine.engine import FastModel
from lth.engine.kernels import backend
from lth.engine.sparse import sparsify


def pruned_model(name: str, sparsity: float):
    model = load_model(name, "classification", seed=0, num_labels=2).eval()
    weights = prunable_weights(model, exclude=["pooler"])
    with torch.no_grad():
        masks.apply_(weights, prune("global", weights, masks.ones(weights), sparsity))
    return model, list(weights)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="minilm")
    parser.add_argument("--sparsities", default="0.5,0.7,0.9")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--length", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--precision", choices=["auto", "bf16", "fp32"], default="auto",
                        help="lth's engine: bf16 where native (auto), or fp32 (what a CPU without bf16 runs)")
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    precision = args.precision if args.precision != "auto" else auto_precision(torch.device("cpu"))
    print(f"sparse kernel: {backend()[1]}; lth engine in {precision}; {args.threads} threads; "
          f"median of {args.repeats} interleaved rounds")
    found = {}
    for sparsity in (float(s) for s in args.sparsities.split(",")):
        dense, names = pruned_model(args.model, sparsity)
        engine, _ = pruned_model(args.model, sparsity)
        swapped = sparsify(engine, names, bf16=precision == "bf16")
        fast = FastModel(engine, precision)
        results = compare(dense, fast, [(args.batch_size, args.length), (1, args.length)], args.repeats, args.threads)
        found[f"{sparsity:.0%}"] = {"results": results, "layers": fast.layers(), "swapped": swapped}
        print(table(results, f"{sparsity:.0%} sparse, "))
        chosen = [c for layer in fast.layers().values() for c in layer.split(",")]
        print(f"  layers on the sparse kernel: {sum(c.endswith('sparse') for c in chosen)} of {len(chosen)} "
              "(layer x input size)")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(found, handle, indent=2)


if __name__ == "__main__":
    main()
