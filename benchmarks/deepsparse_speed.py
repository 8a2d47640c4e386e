"""lth's engine against DeepSparse 1.8, the CPU engine that made unstructured sparsity pay (end of life 2025), on
MiniLM magnitude-pruned to 50, 70 and 90% (as inference_speed.py prunes it), at batch 32 x 128 and 1 x 128.

DeepSparse needs numpy < 2 and onnx 1.14, so it runs in its own virtual environment, in a worker process
(deepsparse_worker.py). Its worker threads keep spinning after each call and take the cores from an engine timed
right after it (on 2 cores: lth's batch-1 call went from 6 to 18 ms, DeepSparse's own from 7 to 16), so the two
are not interleaved call by call: they take turns in blocks (lth `--repeats` calls, then DeepSparse's, three
times, a second's pause between blocks) and each block's median is kept; the table gives the median block.

    python -m venv /tmp/ds && /tmp/ds/bin/pip install deepsparse==1.8.0
    python benchmarks/deepsparse_speed.py --deepsparse-python /tmp/ds/bin/python
    python benchmarks/deepsparse_speed.py --deepsparse-python /tmp/ds/bin/python --precision fp32
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from inference_speed import pruned_model  # noqa: E402

from lth.artifacts.onnx import to_onnx  # noqa: E402
from lth.core.devices import auto_precision  # noqa: E402
from lth.engine.bench import inputs  # noqa: E402
from lth.engine.engine import FastModel  # noqa: E402
from lth.engine.sparse import sparsify  # noqa: E402

BLOCKS = 3
PAUSE = 1.0  # seconds between blocks: the other engine's threads have stopped spinning by then


class Worker:
    """DeepSparse on one ONNX file in another Python: hand it inputs, time it there (no pipe in the timings)."""

    def __init__(self, python: str, onnx_file: Path, threads: int):
        self.folder = onnx_file.parent
        self.process = subprocess.Popen([python, str(Path(__file__).with_name("deepsparse_worker.py")),
                                         str(onnx_file), str(threads)], stdin=subprocess.PIPE,
                                        stdout=subprocess.PIPE, text=True)

    def ask(self, line: str) -> str:
        self.process.stdin.write(line + "\n")
        self.process.stdin.flush()
        answer = self.process.stdout.readline().strip()
        if not answer.startswith("ok"):
            raise RuntimeError(f"the DeepSparse worker: {answer or 'exited'}")
        return answer[2:].strip()

    def use(self, x: dict) -> np.ndarray:
        path = self.folder / f"inputs-{next(iter(x.values())).shape[0]}.npz"
        np.savez(path, **{k: v.numpy() for k, v in x.items()})
        self.ask(f"shape {path}")
        return np.load(f"{path}.out.npy")

    def close(self) -> None:
        self.process.stdin.close()
        self.process.wait(timeout=60)


def median_of(run, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--deepsparse-python", required=True, help="the Python of a venv with deepsparse==1.8.0")
    parser.add_argument("--model", default="minilm")
    parser.add_argument("--sparsities", default="0.5,0.7,0.9")
    parser.add_argument("--repeats", type=int, default=10, help="calls per block")
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--precision", choices=["auto", "bf16", "fp32"], default="auto",
                        help="lth's engine: bf16 where native (auto), or fp32, as DeepSparse runs here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    precision = args.precision if args.precision != "auto" else auto_precision(torch.device("cpu"))
    print(f"lth engine in {precision}; DeepSparse in its own process; {args.threads} threads; blocks of "
          f"{args.repeats} calls, {BLOCKS} each, the median block")
    print(f"{'sparsity':>8} {'shape':>8} {'lth ms':>9} {'DeepSparse ms':>14} {'lth speed-up':>13} "
          f"{'lth max|diff|':>14} {'DS max|diff|':>13}")
    for sparsity in (float(s) for s in args.sparsities.split(",")):
        dense, names = pruned_model(args.model, sparsity)
        engine, _ = pruned_model(args.model, sparsity)
        sparsify(engine, names, bf16=precision == "bf16")
        fast = FastModel(engine, precision)
        with tempfile.TemporaryDirectory(prefix="lth-deepsparse-") as folder:
            onnx_file = Path(folder) / "model.onnx"
            to_onnx(dense, inputs(dense.config, 2, 16), onnx_file)
            worker = Worker(args.deepsparse_python, onnx_file, args.threads)
            try:
                for batch in (32, 1):
                    x = inputs(dense.config, batch, 128)
                    with torch.inference_mode():
                        want = dense(**x).logits.numpy()
                    ours = fast(**x).logits.float().numpy()  # also the warm-up: layers choose their kernels
                    theirs = worker.use(x)
                    lth_blocks, ds_blocks = [], []
                    for _ in range(BLOCKS):
                        time.sleep(PAUSE)
                        lth_blocks.append(median_of(lambda: fast(**x), args.repeats))
                        time.sleep(PAUSE)
                        ds_blocks.append(float(worker.ask(f"time {args.repeats}")))
                    mine, ds = statistics.median(lth_blocks), statistics.median(ds_blocks)
                    print(f"{sparsity:8.0%} {batch:>4}x128 {mine * 1e3:9.2f} {ds * 1e3:14.2f} {ds / mine:12.2f}x "
                          f"{np.abs(ours - want).max():14.2e} {np.abs(theirs - want).max():13.2e}", flush=True)
            finally:
                worker.close()


if __name__ == "__main__":
    main()
