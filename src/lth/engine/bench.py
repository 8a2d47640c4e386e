"""How fast a trained ticket runs on this machine: lth's engine against the dense engines a user would pick
(torch fp32 and bf16, ONNX Runtime fp32 and dynamic int8, OpenVINO f32, bf16 and int8 by NNCF's post-training
quantisation, where installed), interleaved in one process."""
from __future__ import annotations

import logging
import statistics
import tempfile
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn

from ..artifacts.onnx import to_onnx
from ..core.devices import autocast
from .engine import FastModel
from .kernels import backend


def inputs(config, batch: int, length: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random token ids (no padding) of the shape to time."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, config.vocab_size, (batch, length), generator=g)
    found = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    if getattr(config, "type_vocab_size", 0) > 1:
        found["token_type_ids"] = torch.zeros_like(ids)
    return found


def first_output(output) -> np.ndarray:
    """An engine's first output (the logits of a classifier) as a fp32 array, whatever the engine returns."""
    value = output[0] if isinstance(output, (tuple, list)) else next(iter(output.values()))
    return value.float().numpy() if isinstance(value, torch.Tensor) else np.asarray(value, dtype=np.float32)


def engines(dense: nn.Module, fast: FastModel | list[FastModel], sample: dict, threads: int,
            calibration: list[dict] | None = None) -> dict[str, Callable]:
    """name -> a function of the inputs returning the first output; the dense engines that are installed.

    `calibration`: batches of real inputs for OpenVINO's int8 model (NNCF calibrates its activation ranges on
    them, as a user does with ~100 sentences); without them it calibrates on `sample`, random token ids."""
    dense.eval()

    def torch_run(precision: str):
        def run(x):
            with torch.inference_mode(), autocast(torch.device("cpu"), precision):
                return dense(**x)
        return run

    found = {"torch fp32": torch_run("fp32"), "torch bf16": torch_run("bf16")}
    with tempfile.TemporaryDirectory(prefix="lth-speed-") as folder:  # the engines read the file when built
        onnx_file = Path(folder) / "model.onnx"
        to_onnx(dense, sample, onnx_file)
        try:
            import onnxruntime

            options = onnxruntime.SessionOptions()
            options.intra_op_num_threads = threads
            # ONNX Runtime's threads spin after each call by default, taking the cores from whichever engine runs next
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
            session = onnxruntime.InferenceSession(str(onnx_file), options, providers=["CPUExecutionProvider"])
            found["onnxruntime fp32"] = lambda x: session.run(None, {k: v.numpy() for k, v in x.items()})
            from onnxruntime.quantization import QuantType, quantize_dynamic

            quantize_dynamic(str(onnx_file), str(onnx_file.with_suffix(".int8.onnx")), weight_type=QuantType.QInt8)
            quantized = onnxruntime.InferenceSession(str(onnx_file.with_suffix(".int8.onnx")), options,
                                                     providers=["CPUExecutionProvider"])
            found["onnxruntime int8 (dynamic)"] = lambda x: quantized.run(None, {k: v.numpy() for k, v in x.items()})
        except ImportError:
            pass
        try:
            import openvino

            core = openvino.Core()
            core.set_property("CPU", {"INFERENCE_NUM_THREADS": threads})
            network = core.read_model(str(onnx_file))
            for hint in ("f32", "bf16"):
                compiled = core.compile_model(network, "CPU", {"INFERENCE_PRECISION_HINT": hint})
                found[f"openvino {hint}"] = (lambda c: lambda x: c({k: v.numpy() for k, v in x.items()}))(compiled)
            calibrated = _nncf_int8(network, calibration or [sample])
            if calibrated is not None:
                int8 = core.compile_model(calibrated, "CPU")
                found["openvino int8 (nncf)"] = lambda x: int8({k: v.numpy() for k, v in x.items()})
        except ImportError:
            pass
    for engine in fast if isinstance(fast, (list, tuple)) else [fast]:  # one or several of lth's engines
        found[f"lth sparse ({backend()[0]}, {engine.precision})"] = (lambda e: lambda x: e(**x))(engine)
    return found


def _nncf_int8(network, batches: list[dict]):
    """OpenVINO's int8 model of `network` by NNCF post-training quantisation (transformer preset) calibrated on
    `batches`; None without nncf."""
    try:
        import nncf
    except ImportError:
        return None
    nncf.set_log_level(logging.ERROR)
    data = nncf.Dataset([{k: v.numpy() for k, v in batch.items()} for batch in batches])
    return nncf.quantize(network, data, model_type=nncf.ModelType.TRANSFORMER, subset_size=len(batches))


BLOCKS, PAUSE = 3, 1.0  # alternating blocks: turns each engine takes, and seconds of rest before each


def measure(runs: dict[str, Callable], x: dict, repeats: int, blocks: bool = False) -> dict[str, float]:
    """Median seconds per call of each engine: the engines taking turns in every round (interleaved), or with
    `blocks`, taking turns in blocks (a second's rest, one untimed call, then `repeats` timed calls; BLOCKS turns
    each, the median of the blocks' medians), so that no engine's call follows another engine's: a thread pool that
    keeps spinning after its calls (DeepSparse's did) then takes no cores from the next engine's timed calls."""
    outputs = {name: first_output(run(x)) for name, run in runs.items()}  # warm-up; the engine picks its kernels here
    times: dict[str, list[float]] = {name: [] for name in runs}

    def timed(name: str) -> float:
        start = time.perf_counter()
        runs[name](x)
        return time.perf_counter() - start

    for round_ in range(BLOCKS if blocks else repeats):
        order = list(runs)[round_ % len(runs):] + list(runs)[:round_ % len(runs)]
        for name in order:
            if blocks:
                time.sleep(PAUSE)
                runs[name](x)
                times[name].append(statistics.median(timed(name) for _ in range(repeats)))
            else:
                times[name].append(timed(name))
    reference = outputs["torch fp32"]
    return {name: {"seconds": statistics.median(t), "max_abs_diff": float(np.abs(outputs[name] - reference).max())}
            for name, t in times.items()}


def compare(dense: nn.Module, fast: FastModel | list[FastModel], shapes: list[tuple[int, int]], repeats: int,
            threads: int, calibration: list[dict] | None = None, blocks: bool = False,
            runs: dict[str, Callable] | None = None) -> dict:
    """{"batch x length": {engine: {"seconds", "max_abs_diff"}}} for each shape (`calibration` as in `engines`,
    `blocks` as in `measure`; `runs`: the engines, already built by `engines`)."""
    torch.set_num_threads(threads)
    runs = runs or engines(dense, fast, inputs(dense.config, 2, 16), threads, calibration)
    return {f"{b}x{n}": measure(runs, inputs(dense.config, b, n), repeats, blocks) for b, n in shapes}


def table(results: dict, label: str = "") -> str:
    """Milliseconds, speed against torch fp32 and against the fastest dense engine, and the outputs' difference."""
    lines = []
    for shape, found in results.items():
        dense = {k: v for k, v in found.items() if not k.startswith("lth")}
        best = min(dense, key=lambda k: dense[k]["seconds"])
        lines.append(f"{label}batch x length {shape}: fastest dense engine {best}")
        lines.append(f"  {'engine':<28} {'ms':>9} {'vs torch fp32':>14} {'vs fastest dense':>17} {'max |diff|':>11}")
        for name, v in found.items():
            lines.append(f"  {name:<28} {v['seconds'] * 1e3:9.2f} {found['torch fp32']['seconds'] / v['seconds']:13.2f}x "
                         f"{dense[best]['seconds'] / v['seconds']:16.2f}x {v['max_abs_diff']:11.2e}")
    return "\n".join(lines)
