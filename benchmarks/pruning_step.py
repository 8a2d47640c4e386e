"""The pruning step: global magnitude pruning over every prunable weight, timed and its peak extra memory
measured, on MiniLM's own weights and on random tensors shaped like 3, 6, 12 and 24 BERT-base layers
(12 layers = BERT-base's 85M encoder weights).

    python benchmarks/pruning_step.py [--model minilm] [--layers 3,6,12,24] [--repeats 3] [--threads 1]

Each size runs in a fresh subprocess so that its peak memory is its own: the peak resident set is reset
(/proc/self/clear_refs) after the weights and the mask exist, and read back after pruning.
Two prunings are timed per size: the first level (dense → 20%) and a late one (60% → 68%).
"""
from __future__ import annotations

import argparse
import ctypes
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from lth.core import masks
from lth.core.pruning import prune

HIDDEN, FFN = 768, 3072  # BERT-base
STEPS = {"dense -> 20%": (0.0, 0.2), "60% -> 68%": (0.6, 0.68)}


def bert_base_shaped(layers: int, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    shapes = {"q": (HIDDEN, HIDDEN), "k": (HIDDEN, HIDDEN), "v": (HIDDEN, HIDDEN), "o": (HIDDEN, HIDDEN),
              "up": (FFN, HIDDEN), "down": (HIDDEN, FFN)}
    return {f"layer.{i}.{name}.weight": torch.randn(shape, generator=g)
            for i in range(layers) for name, shape in shapes.items()}


def _status_kib(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def _reset_peak() -> bool:
    try:  # hand memory freed by earlier steps back first, or the next step could reuse it unseen
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass
    try:
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current resident set
        return True
    except OSError:
        return False


def measure(weights: dict[str, torch.Tensor], repeats: int) -> dict:
    """Median seconds of each timed pruning, and the peak memory the first one added (MiB)."""
    out = {"weights": sum(w.numel() for w in weights.values())}
    for label, (start, target) in STEPS.items():
        mask = masks.ones(weights) if start == 0 else prune("global", weights, masks.ones(weights), start)
        times, extra = [], None
        for repeat in range(repeats):
            can_reset = _reset_peak()
            before = _status_kib("VmRSS")
            began = time.perf_counter()
            new = prune("global", weights, mask, target)
            times.append(time.perf_counter() - began)
            if repeat == 0 and can_reset and before is not None:
                extra = (_status_kib("VmHWM") - before) / 1024
            del new
        out[label] = {"seconds": statistics.median(times), "extra_mib": extra}
    return out


def child(args) -> None:
    torch.set_num_threads(args.threads)
    if args.child == "model":
        from lth.core.models import load_model, prunable_weights

        weights = {n: w.detach() for n, w in prunable_weights(load_model(args.model, "classification", seed=0)).items()}
    else:
        weights = bert_base_shaped(int(args.child))
    print(json.dumps(measure(weights, args.repeats)))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="minilm")
    parser.add_argument("--layers", default="3,6,12,24", help="BERT-base-shaped random layers to prune")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        return child(args)
    sizes = ["model"] + [s.strip() for s in args.layers.split(",") if s.strip()]
    rows = {}
    for size in sizes:
        done = subprocess.run([sys.executable, __file__, "--child", size, "--model", args.model,
                               "--repeats", str(args.repeats), "--threads", str(args.threads)],
                              capture_output=True, text=True)
        if done.returncode:
            sys.exit(f"pruning {size} failed:\n{done.stderr}")
        rows[size] = json.loads(done.stdout.strip().splitlines()[-1])
        print(f"{size}: {rows[size]}", file=sys.stderr, flush=True)
    print(f"global magnitude pruning, {args.threads} thread(s), median of {args.repeats}; "
          f"extra = peak resident memory added by the pruning")
    print(f"{'weights':28}{'':>12}" + "".join(f"{label:>26}" for label in STEPS))
    print(f"{'':40}" + "".join(f"{'s':>10}{'s/10M':>8}{'MiB':>8}" for _ in STEPS))
    for size, row in rows.items():
        name = args.model if size == "model" else f"{size} BERT-base layers"
        cells = ""
        for label in STEPS:
            r = row[label]
            mib = "-" if r["extra_mib"] is None else f"{r['extra_mib']:.0f}"
            cells += f"{r['seconds']:10.3f}{r['seconds'] / row['weights'] * 1e7:8.3f}{mib:>8}"
        print(f"{name:28}{row['weights']:12,}{cells}")


if __name__ == "__main__":
    main()
