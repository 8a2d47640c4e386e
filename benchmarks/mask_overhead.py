"""What keeping a mask costs per training step: lth's own step (the one finetune() runs) on the dense model
with no mask, on the dense model with an all-ones mask, and on a 70%-sparse ticket (global magnitude
pruning of the pre-trained weights), paired and interleaved in one process.

    python benchmarks/mask_overhead.py [--model minilm] [--sparsity 0.7] [--length 64] [--rounds 30]

Each round runs one step of every configuration, in a rotating order, on the same batch (batch 32,
random tokens, bf16 autocast where the CPU has native bf16, as lth trains). The overhead is the median
over rounds of (masked step time / unmasked step time) - 1. The mask operations alone (gradient and
weight multiplies) are timed too.
"""
from __future__ import annotations

import argparse
import os
import statistics
import time

import torch

from lth.core import masks
from lth.core.devices import Ranks, cpu_has_native_bf16
from lth.core.models import load_model, prunable_weights
from lth.core.pruning import prune
from lth.search.train import Recipe, _Loss, _multiply_, _optimizer, _step, mask_factors, model_forward


def setup(name: str, sparsity: float | None, recipe: Recipe) -> dict:
    """A model, its optimizer and the mask lists _step takes: no mask (None), all ones (0.0), or pruned."""
    model = load_model(name, "classification", seed=0, num_labels=2)
    params = prunable_weights(model)
    mask = {} if sparsity is None else prune("global", params, masks.ones(params), sparsity)
    with torch.no_grad():
        masks.apply_(params, mask)
    weights, keep = mask_factors(model, mask)  # as finetune: all-ones matrices are skipped
    model.train()
    return {"model": _Loss(model, model_forward), "optimizer": _optimizer(model, recipe, torch.device("cpu")),
            "weights": weights, "keep": keep,
            "sparsity": masks.sparsity(mask) if mask else 0.0}


def step(config: dict, batch: dict, recipe: Recipe) -> float:
    start = time.perf_counter()
    _step(config["model"], config["optimizer"], None, batch, config["weights"], config["keep"], recipe, recipe.lr,
          Ranks())
    return time.perf_counter() - start


def random_batch(vocab: int, rows: int, length: int) -> dict:
    """One classification batch of random tokens (no padding) and labels, the same every run."""
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(min(1000, vocab // 2), vocab, (rows, length), generator=g)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids),
            "labels": torch.randint(0, 2, (rows,), generator=g)}


def interleaved(configs: dict, batch: dict, recipe: Recipe, rounds: int) -> dict[str, list[float]]:
    """Step seconds of every configuration: two warm-up steps each (first-call allocations, optimizer state), then
    `rounds` rounds, each configuration once a round in a rotating order."""
    names = list(configs)
    for name in names:
        step(configs[name], batch, recipe)
        step(configs[name], batch, recipe)
    times = {name: [] for name in names}
    for r in range(rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:
            times[name].append(step(configs[name], batch, recipe))
    return times


def mask_ops_seconds(config: dict, repeats: int = 20) -> float:
    """The two multiplies a masked step adds (gradients, then weights), alone."""
    grads = [torch.ones_like(w) for w in config["weights"]]
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        _multiply_(grads, config["keep"])
        _multiply_(config["weights"], config["keep"])
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="minilm")
    parser.add_argument("--sparsity", type=float, default=0.7)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--length", type=int, default=64, help="tokens per sequence (SST-2 batches: ~20-60)")
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--fp32", action="store_true", help="fp32 even where bf16 is native")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    recipe = Recipe(batch_size=args.batch_size, lr=1e-5, epochs=1,
                    precision="bf16" if cpu_has_native_bf16() and not args.fp32 else "fp32")
    configs = {"dense, no mask": setup(args.model, None, recipe),
               "dense, all-ones mask": setup(args.model, 0.0, recipe),
               f"{args.sparsity:.0%} sparse ticket": setup(args.model, args.sparsity, recipe)}
    batch = random_batch(configs["dense, no mask"]["model"].model.config.vocab_size, args.batch_size, args.length)
    names = list(configs)
    times = interleaved(configs, batch, recipe, args.rounds)
    base = times[names[0]]
    print(f"{args.model}, batch {args.batch_size} x {args.length} tokens, {args.threads} thread(s), "
          f"{recipe.precision}, {args.rounds} interleaved rounds")
    print(f"{'configuration':26}{'sparsity':>10}{'step s':>9}{'overhead':>10}{'mask ops ms':>13}")
    for name in names:
        c = configs[name]
        overhead = statistics.median(t / b for t, b in zip(times[name], base)) - 1
        ops = f"{mask_ops_seconds(c) * 1000:.2f}" if c["weights"] else "-"
        print(f"{name:26}{c['sparsity']:10.1%}{statistics.median(times[name]):9.3f}{overhead:+10.1%}{ops:>13}")
    print("overhead = median over rounds of (step time / the same round's 'dense, no mask' step time) - 1")


if __name__ == "__main__":
    main()
