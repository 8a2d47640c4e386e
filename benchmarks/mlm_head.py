"""MLM training step and evaluation: the head at every position (the model's own forward) against the head
at the masked positions only (lth's), paired and interleaved in one process.

    python benchmarks/mlm_head.py [--model minilm] [--batch-size 16] [--length 128] [--repeats 5] [--threads 1]
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from lth.core.models import load_tokenizer
from lth.search.train import model_forward
from lth.tasks.mlm import attach_mlm_head, mask_tokens, masked_positions_forward


def batch_of(vocab: int, mask_id: int, rows: int, length: int, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(min(1000, vocab // 2), vocab, (rows, length), generator=g)
    special = torch.zeros_like(ids, dtype=torch.bool)
    special[:, 0] = special[:, -1] = True
    ids, labels = mask_tokens(ids, special, mask_id, vocab, g)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="minilm")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--length", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast, as lth uses on CPUs with native bf16")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model, _ = attach_mlm_head(args.model, seed=0)
    batch = batch_of(model.config.vocab_size, load_tokenizer(args.model).mask_token_id, args.batch_size,
                     args.length)
    forwards = {"head at every position": lambda m, b, train: model_forward(m, b, True),
                "head at masked positions": lambda m, b, train: masked_positions_forward(m, b)}
    losses, train_s, eval_s = {}, {k: [] for k in forwards}, {k: [] for k in forwards}

    def train_step(forward):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.bf16):
            loss = forward(model, batch, True).loss
        loss.backward()
        model.zero_grad(set_to_none=True)
        return loss.item()

    @torch.inference_mode()
    def eval_step(forward):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.bf16):
            return forward(model, batch, False).loss.item()

    model.train()
    for name, forward in forwards.items():  # warm-up, and the losses must agree
        losses[name] = train_step(forward)
    for _ in range(args.repeats):  # interleaved: both see the same machine load
        for name, forward in forwards.items():
            train_s[name].append(timed(lambda: train_step(forward)))
            eval_s[name].append(timed(lambda: eval_step(forward)))
    print(f"{args.model}, batch {args.batch_size} x {args.length} tokens, {args.threads} thread(s), "
          f"{'bf16' if args.bf16 else 'fp32'}, median of {args.repeats}")
    print(f"{'':28}{'train step s':>14}{'eval batch s':>14}{'loss':>10}")
    for name in forwards:
        print(f"{name:28}{statistics.median(train_s[name]):14.3f}{statistics.median(eval_s[name]):14.3f}"
              f"{losses[name]:10.4f}")
    names = list(forwards)
    print(f"speed-up: train {statistics.median(train_s[names[0]]) / statistics.median(train_s[names[1]]):.2f}x, "
          f"eval {statistics.median(eval_s[names[0]]) / statistics.median(eval_s[names[1]]):.2f}x")


if __name__ == "__main__":
    main()
