"""What dropout costs a training step on the CPU, and how much of it --fast-dropout wins back: lth's own step (the
one finetune() runs: eager attention, bf16 autocast where native) on MiniLM with

- torch's dropout (lth's default): one random number per element, drawn serially;
- --fast-dropout (lth.core.dropout): every dropout mask, attention's included, from 16-bit random integers;
- no dropout at all (every p = 0): the bound on what any dropout could win.

    python benchmarks/dropout_cost.py [--length 32] [--rounds 20] [--threads 2]

Interleaved rounds on one batch (32 random-token sequences); the ratio is the median over rounds of each
configuration's step time over torch's dropout in the same round.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
from pathlib import Path

import torch
from torch import nn

from lth.core.devices import cpu_has_native_bf16
from lth.core.dropout import bits_dropout
from lth.core.models import load_model
from lth.search.train import Recipe, _Loss, _optimizer, model_forward

sys.path.insert(0, str(Path(__file__).parent))
from mask_overhead import interleaved, random_batch  # noqa: E402


def setup(name: str, dropout: str, recipe: Recipe) -> dict:
    model = load_model(name, "classification", seed=0, num_labels=2)
    if dropout == "none":
        for module in model.modules():
            if isinstance(module, nn.Dropout):
                module.p = 0.0
    model.train()
    return {"model": _Loss(model, model_forward), "optimizer": _optimizer(model, recipe, torch.device("cpu")),
            "bits": dropout == "bits", "weights": [], "keep": []}  # no mask: mask_overhead's step as it is


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="minilm")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--length", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    recipe = Recipe(batch_size=args.batch_size, lr=1e-5, epochs=1,
                    precision="bf16" if cpu_has_native_bf16() else "fp32")
    configs = {"torch dropout": setup(args.model, "torch", recipe),
               "--fast-dropout": setup(args.model, "bits", recipe),
               "no dropout (bound)": setup(args.model, "none", recipe)}
    batch = random_batch(configs["torch dropout"]["model"].model.config.vocab_size, args.batch_size, args.length)
    names = list(configs)
    stack = contextlib.ExitStack()  # what finetune does with --fast-dropout, for the whole benchmark
    for config in configs.values():
        stack.enter_context(bits_dropout(config["model"].model, config["bits"]))
    times = interleaved(configs, batch, recipe, args.rounds)
    print(f"{args.model}, batch {args.batch_size} x {args.length} tokens, {args.threads} thread(s), "
          f"{recipe.precision}, "
          f"{args.rounds} interleaved rounds")
    print(f"{'configuration':28}{'step ms':>9}{'vs torch dropout':>18}")
    for name in names:
        ratio = statistics.median(t / b for t, b in zip(times[name], times[names[0]]))
        print(f"{name:28}{statistics.median(times[name]) * 1000:9.1f}{ratio:17.3f}x")


if __name__ == "__main__":
    main()
