"""One fine-tuning round on SST-2, three ways, on the same data, steps and machine: lth's loop, a
well-configured Hugging Face Trainer, and the original BERT-Tickets recipe (every sequence padded to 128,
fp32, run_glue-style Trainer); optionally a fourth, the Trainer with lth's attention choice (eager).
Prints wall time, examples/s, dev accuracy and the ratios.

    python benchmarks/finetune_speed.py --data ../shared/data/glue [--train-limit 8000] [--repeats 1]
                                        [--pipelines lth,trainer,pad128,trainer-eager]

Pipelines run interleaved (repeat 1 of each, then repeat 2 ...) so that all see the same machine load, and
each repeat starts with the next pipeline: the first one in a process pays for warming caches and kernels.
Tokenisation is done once per pipeline and is not timed; training and evaluation are timed separately.
"""
from __future__ import annotations

import argparse
import math
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from lth.core import masks
from lth.core.devices import cpu_has_native_bf16
from lth.core.models import load_tokenizer, prunable_weights
from lth.search.evaluate import predict
from lth.search.train import Recipe, finetune
from lth.tasks.classify import ClassificationTask
from lth.tasks.glue import load_glue

PIPELINES = ("lth", "lth-fast-dropout", "trainer", "pad128", "trainer-eager")
DEFAULT_PIPELINES = "lth,trainer,pad128"
DESCRIPTIONS = {"lth": "dynamic padding, length-grouped batches, fused AdamW, bf16 where native, eager attention",
                "trainer": "HF Trainer: DataCollatorWithPadding, group_by_length, bf16 where native, "
                           "HF's default attention (sdpa)",
                "pad128": "BERT-Tickets recipe: padded to 128, fp32, HF Trainer (run_glue style), sdpa",
                "trainer-eager": "the 'trainer' pipeline with lth's attention choice (eager)",
                "lth-fast-dropout": "the 'lth' pipeline with --fast-dropout (dropout masks from random bits)"}


def accuracy(logits: np.ndarray, labels: list[int]) -> float:
    return float((np.asarray(logits).argmax(-1) == np.asarray(labels)).mean())


def run_lth(task, tokenizer, args, bf16: bool, fast_dropout: bool = False) -> dict:
    model = task.load_model(args.model, args.seed)
    train = task.train_features(tokenizer, args.max_length)
    dev = task.eval_features(tokenizer, args.max_length)["dev"]
    recipe = Recipe(batch_size=args.batch_size, lr=args.lr, epochs=1.0, seed=args.seed,
                    precision="bf16" if bf16 else "fp32", fast_dropout=fast_dropout)
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        steps = len(finetune(model, masks.ones(prunable_weights(model)), train, recipe, tokenizer.pad_token_id,
                             checkpoint=Path(tmp) / "c.pt"))  # level 0 of a search: an all-ones mask
        train_s = time.perf_counter() - start
    start = time.perf_counter()
    rows = predict(model, dev, tokenizer.pad_token_id, 128, "bf16" if bf16 else "fp32")
    eval_s = time.perf_counter() - start
    start = time.perf_counter()  # target 4: evaluation throughput on the very sentences it trained on
    predict(model, train, tokenizer.pad_token_id, 128, "bf16" if bf16 else "fp32")
    return {"steps": steps, "train_s": train_s, "eval_s": eval_s, "eval_train_s": time.perf_counter() - start,
            "accuracy": accuracy(np.stack(rows), [f["labels"] for f in dev])}


def _hf_dataset(task, tokenizer, split: str, pad128: bool, max_length: int):
    import datasets

    examples = task.data.train if split == "train" else task.data.evals["dev"]
    if pad128:
        enc = tokenizer(examples.texts, padding="max_length", truncation=True, max_length=max_length)
    else:
        enc = tokenizer(examples.texts, truncation=True, max_length=max_length)
    return datasets.Dataset.from_dict({**enc, "labels": list(examples.labels)})


def _length_grouping(on: bool) -> dict:
    """group_by_length=True, spelled the way the installed transformers wants (v5 renamed it)."""
    from transformers import TrainingArguments

    if "train_sampling_strategy" in TrainingArguments.__dataclass_fields__:
        return {"train_sampling_strategy": "group_by_length" if on else "random"}
    return {"group_by_length": on}


def run_trainer(task, tokenizer, args, bf16: bool, pad128: bool, attention: str = "sdpa") -> dict:
    from transformers import DataCollatorWithPadding, Trainer, TrainingArguments, default_data_collator

    model = task.load_model(args.model, args.seed)  # lth loads with eager attention; a Trainer user gets sdpa
    model.set_attn_implementation(attention)
    train, dev = (_hf_dataset(task, tokenizer, split, pad128, args.max_length) for split in ("train", "dev"))
    with tempfile.TemporaryDirectory() as tmp:
        targs = TrainingArguments(
            output_dir=tmp, per_device_train_batch_size=args.batch_size,
            per_device_eval_batch_size=args.batch_size if pad128 else 128, learning_rate=args.lr,
            num_train_epochs=1, lr_scheduler_type="linear", warmup_steps=0, weight_decay=0.0, max_grad_norm=1.0,
            bf16=bf16 and not pad128, use_cpu=True, save_strategy="no", **_length_grouping(not pad128),
            logging_strategy="no", report_to=[], disable_tqdm=True, seed=args.seed, dataloader_num_workers=0)
        collator = default_data_collator if pad128 else DataCollatorWithPadding(tokenizer)
        trainer = Trainer(model=model, args=targs, train_dataset=train, data_collator=collator)
        start = time.perf_counter()
        result = trainer.train()
        train_s = time.perf_counter() - start
        start = time.perf_counter()
        predictions = trainer.predict(dev)  # with length grouping on, v5 also reorders evaluation: use label_ids
        eval_s = time.perf_counter() - start
    return {"steps": result.global_step, "train_s": train_s, "eval_s": eval_s,
            "accuracy": accuracy(predictions.predictions, predictions.label_ids)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="minilm")
    parser.add_argument("--data", default=os.path.join(os.environ.get("LTH_DATA", "../shared/data"), "glue"),
                        help="GLUE root or the SST-2 folder (default: $LTH_DATA/glue)")
    parser.add_argument("--train-limit", type=int, default=8000)
    parser.add_argument("--eval-limit", type=int, default=None)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-length", type=int, default=128, help="truncation, and the padding of pad128")
    parser.add_argument("--lr", type=float, default=5e-5)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--pipelines", default=DEFAULT_PIPELINES, help=f"any of {', '.join(PIPELINES)}")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    bf16 = cpu_has_native_bf16()
    task = ClassificationTask(load_glue("sst2", args.data, args.train_limit, args.eval_limit))
    tokenizer = load_tokenizer(args.model)
    runners = {"lth": lambda: run_lth(task, tokenizer, args, bf16),
               "lth-fast-dropout": lambda: run_lth(task, tokenizer, args, bf16, fast_dropout=True),
               "trainer": lambda: run_trainer(task, tokenizer, args, bf16, pad128=False),
               "pad128": lambda: run_trainer(task, tokenizer, args, bf16, pad128=True),
               "trainer-eager": lambda: run_trainer(task, tokenizer, args, bf16, pad128=False, attention="eager")}
    chosen = [p.strip() for p in args.pipelines.split(",")]
    unknown = [p for p in chosen if p not in runners]
    if unknown:
        parser.error(f"unknown pipeline {', '.join(unknown)}: choose from {', '.join(PIPELINES)}")
    results: dict[str, list[dict]] = {p: [] for p in chosen}
    for repeat in range(args.repeats):
        for name in chosen[repeat % len(chosen):] + chosen[:repeat % len(chosen)]:  # nobody always goes first
            results[name].append(runners[name]())
            r = results[name][-1]
            print(f"repeat {repeat + 1} {name}: train {r['train_s']:.1f} s, eval {r['eval_s']:.1f} s, "
                  f"accuracy {r['accuracy']:.4f}, {r['steps']} steps", flush=True)
    train_n, dev_n = len(task.data.train), len(task.data.evals["dev"])
    print(f"\nSST-2, {args.model}, {train_n} training sentences, 1 epoch = {math.ceil(train_n / args.batch_size)} "
          f"steps of {args.batch_size}, dev {dev_n}; {args.threads} threads, native bf16: {bf16}; "
          f"median of {args.repeats}")
    header = f"{'pipeline':14}{'train s':>9}{'train ex/s':>12}{'eval s':>8}{'eval ex/s':>11}{'dev acc':>9}" \
             f"{'lth faster':>12}{'(train only)':>14}"
    print(header)
    base = statistics.median(r["train_s"] + r["eval_s"] for r in results.get("lth", [])) if "lth" in results \
        else None
    base_train = statistics.median(r["train_s"] for r in results["lth"]) if "lth" in results else None
    for name in chosen:
        train_s = statistics.median(r["train_s"] for r in results[name])
        eval_s = statistics.median(r["eval_s"] for r in results[name])
        acc = statistics.median(r["accuracy"] for r in results[name])
        ratio = f"{(train_s + eval_s) / base:.2f}x" if base else "-"
        ratio_train = f"{train_s / base_train:.2f}x" if base else "-"
        print(f"{name:14}{train_s:9.1f}{train_n / train_s:12.1f}{eval_s:8.1f}{dev_n / eval_s:11.1f}{acc:9.4f}"
              f"{ratio:>12}{ratio_train:>14}")
    for name in chosen:
        print(f"  {name}: {DESCRIPTIONS[name]}")
    print("lth faster = (train + eval time of the pipeline) / (train + eval time of lth)")
    if "lth" in results:
        train_s = statistics.median(r["train_s"] for r in results["lth"])
        again_s = statistics.median(r["eval_train_s"] for r in results["lth"])
        print(f"lth evaluating the {train_n} training sentences: {again_s:.1f} s, {train_n / again_s:.1f} ex/s = "
              f"{train_s / again_s:.1f}x its training throughput on the same sentences")


if __name__ == "__main__":
    main()
