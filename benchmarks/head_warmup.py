"""Masked-token accuracy of θ0 (the rewind point every MLM ticket is searched from) with the head warm-up and
without it, on a checkpoint without an MLM head (the offline MiniLM): the run is opened as `lth find --task mlm`
opens it (θ0 built and saved in a scratch runs folder), then θ0 itself is evaluated.

    python benchmarks/head_warmup.py --data ../shared/data/wikitext-2-raw/valid.txt \
        --eval ../shared/data/wikitext-2-raw/test.txt [--warmup 300] [--eval-limit 200]

(WikiText-2's training split is not on this machine: valid.txt trains, test.txt evaluates.)
"""
from __future__ import annotations

import argparse
import os
import tempfile

from lth.run.settings import FindSettings
from lth.search.search import open_search


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="minilm")
    parser.add_argument("--data", required=True, help="the training text (one paragraph a line)")
    parser.add_argument("--eval", required=True, help="the held-out text")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--warmup", type=int, default=300)
    parser.add_argument("--eval-limit", type=int, default=200)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    args = parser.parse_args()
    print(f"{args.model}, masked-LM trained on {args.data}; θ0 evaluated on the first {args.eval_limit} blocks of "
          f"{args.eval}")
    for steps in (0, args.warmup):
        with tempfile.TemporaryDirectory(prefix="lth-warmup-") as runs:
            s = FindSettings(model=args.model, task="mlm", data=args.data, eval=args.eval, head_warmup=steps,
                             steps=100, batch_size=args.batch_size, eval_limit=args.eval_limit, runs_dir=runs,
                             threads=args.threads)
            search = open_search(s)
            metrics = search.evaluate(f"θ0, head warm-up {steps}")
        print(f"head warm-up {steps:4d} steps: " + ", ".join(f"{k} {v:.4f}" for k, v in metrics.items()))


if __name__ == "__main__":
    main()
