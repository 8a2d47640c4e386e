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
    python benchmarks/inference_speed.py --precision int8 --calibration ../shared/data/glue/SST-2/train.tsv
    python benchmarks/inference_speed.py --precision int8 --blocks   # engines in alternating blocks, not call by call

The dense int8 engines: ONNX Runtime's dynamic quantisation (QInt8 weights) and OpenVINO's int8 model by NNCF's
post-training quantisation (transformer preset), calibrated on the first 100 sentences of --calibration (a GLUE
TSV with a `sentence` column, as a user would take ~100 real sentences), or on random token ids without it.
"""
from __future__ import annotations

import argparse
import json
import os

import torch

from lth.core import masks
from lth.core.devices import auto_precision
from lth.core.models import load_model, load_tokenizer, prunable_weights
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


def sentences(path: str, model: str, length: int, count: int = 100) -> list[dict]:
    """The first `count` sentences of a GLUE .tsv, tokenised one a batch (as NNCF's calibration takes them)."""
    import csv

    tokenizer = load_tokenizer(model)
    with open(path, newline="") as handle:
        texts = [row["sentence"] for _, row in zip(range(count), csv.DictReader(handle, delimiter="\t",
                                                                                   quoting=csv.QUOTE_NONE))]
    return [dict(tokenizer(text, truncation=True, max_length=length, return_tensors="pt")) for text in texts]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="minilm")
    parser.add_argument("--sparsities", default="0.5,0.7,0.9")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--length", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--precision", default="auto",
                        help="lth's engine: bf16 where native (auto), fp32 (what a CPU without bf16 runs), int8 (the "
                        "VNNI kernel), or several, comma-separated, timed side by side: int8,bf16")
    parser.add_argument("--calibration", help="a GLUE .tsv with a `sentence` column (SST-2's train.tsv): its first 100 "
                        "sentences calibrate OpenVINO's int8 model")
    parser.add_argument("--blocks", action="store_true", help="time the engines in alternating blocks (a second's "
                        "rest, then --repeats calls of one engine; three turns each) instead of call by call")
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    native = auto_precision(torch.device("cpu"))
    precisions = [native if p.strip() == "auto" else p.strip() for p in args.precision.split(",")]
    if not set(precisions) <= {"bf16", "fp32", "int8"}:
        parser.error(f"--precision {args.precision}: give auto, bf16, fp32 or int8, comma-separated")
    calibration = sentences(args.calibration, args.model, args.length) if args.calibration else None
    print(f"sparse kernel: {backend()[1]}; lth engine in {', '.join(precisions)}; {args.threads} threads; "
          + (f"alternating blocks of {args.repeats} calls, the median of 3 blocks" if args.blocks else
             f"median of {args.repeats} interleaved rounds") + "; openvino int8 calibrated on "
          + (f"{len(calibration)} sentences of {args.calibration}" if calibration else "random token ids"))
    found = {}
    for sparsity in (float(s) for s in args.sparsities.split(",")):
        dense, names = pruned_model(args.model, sparsity)
        fast = []
        for precision in precisions:
            engine, _ = pruned_model(args.model, sparsity)
            swapped = sparsify(engine, names, bf16=precision == "bf16" or (precision == "int8" and native == "bf16"),
                               int8=precision == "int8")
            fast.append(FastModel(engine, precision))
        results = compare(dense, fast, [(args.batch_size, args.length), (1, args.length)], args.repeats, args.threads,
                          calibration, args.blocks)
        found[f"{sparsity:.0%}"] = {"results": results, "layers": {f.precision: f.layers() for f in fast},
                                    "swapped": swapped}
        print(table(results, f"{sparsity:.0%} sparse, "))
        for engine in fast:
            chosen = [c for layer in engine.layers().values() for c in layer.split(",")]
            int8_dense = sum(c.endswith("int8-dense") for c in chosen)
            print(f"  {engine.precision}: layers on the sparse kernel: {sum(c.endswith('sparse') for c in chosen)} "
                  f"of {len(chosen)} (layer x input size)" + (f", on the dense int8 product: {int8_dense}"
                                                               if engine.precision == "int8" else ""))
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(found, handle, indent=2)


if __name__ == "__main__":
    main()
