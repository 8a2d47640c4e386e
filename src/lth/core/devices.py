"""Devices, precision and processes: where a unit trains, in which precision, and the processes that train it
together.

One process is the usual case. Under `accelerate launch` (or torchrun), every process trains the same unit on
its share of each global batch (data parallel, PyTorch DDP; Accelerate sets the processes up): the main process
claims units and writes every file, and tells the others which unit is next."""
from __future__ import annotations

import os
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .errors import LthError

DEVICES = "auto, cpu, cuda, cuda:N or mps"


def resolve_device(flag: str) -> torch.device:
    """--device: 'auto' is CUDA if present, else Apple's MPS, else the CPU."""
    if flag == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(flag)
    except RuntimeError:
        raise LthError(f"--device {flag!r} is not a device; use {DEVICES}") from None
    if device.type == "cuda" and (not torch.cuda.is_available() or (device.index or 0) >= torch.cuda.device_count()):
        raise LthError(f"--device {flag}: this machine has {torch.cuda.device_count()} CUDA devices; use --device cpu "
                       "or auto")
    if device.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise LthError(f"--device {flag}: Apple's MPS is not available here; use --device cpu or auto")
    if device.type not in ("cpu", "cuda", "mps"):
        raise LthError(f"--device {flag!r}: lth trains on {DEVICES}")
    return device


def auto_precision(device: torch.device) -> str:
    """bf16 autocast where the device computes it natively, fp16 (with a gradient scaler) on older GPUs."""
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if device.type == "cpu":
        return "bf16" if cpu_has_native_bf16() else "fp32"
    return "fp32"  # MPS: autocast support varies by macOS version; ask for it with --precision


def cpu_has_native_bf16() -> bool:
    """bf16 autocast only pays on CPUs with bf16 instructions (benchmarks/results/design-measurements.md)."""
    return bool(cpu_flags() & {"avx512_bf16", "amx_bf16"})


def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags as Linux reports them (empty where /proc/cpuinfo is not readable)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return frozenset()
    line = next((ln for ln in text.splitlines() if ln.startswith(("flags", "Features"))), "")
    return frozenset(line.partition(":")[2].split())


def autocast(device: torch.device, precision: str):
    """The autocast context of a precision name: bf16 or fp16 autocast, or none for fp32."""
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    return torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None)


@dataclass
class Ranks:
    """The processes that train each unit together, and the device of this one."""

    rank: int = 0
    world: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def main(self) -> bool:
        return self.rank == 0

    def broadcast(self, obj):
        """The main process's `obj`, on every process."""
        if self.world == 1:
            return obj
        box = [obj]
        torch.distributed.broadcast_object_list(box, src=0)
        return box[0]

    def gather(self, obj) -> list:
        """Every process's `obj`, in rank order, on every process."""
        if self.world == 1:
            return [obj]
        found = [None] * self.world
        torch.distributed.all_gather_object(found, obj)
        return found

    def total(self, value: torch.Tensor | float) -> float:
        """The sum of `value` (a number, or a one-element tensor on any device) over the processes, as a number: one
        host sync. The collective's tensor is on this process's device, as NCCL (GPUs) requires; gloo takes CPU."""
        if self.world == 1:
            return float(value)
        tensor = torch.as_tensor(value, dtype=torch.float64).reshape(1).to(self.device)
        torch.distributed.all_reduce(tensor)
        return float(tensor.item())


def launched() -> bool:
    """Whether this process is one of several started by accelerate launch or torchrun."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def start(flag: str) -> Ranks:
    """This process's place: the device from --device, and its rank when launched as one of several."""
    device = resolve_device(flag)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True  # TF32 matmuls: free speed on Ampere+, no effect on masks
        torch.backends.cudnn.allow_tf32 = True
    if not launched():
        return Ranks(device=device)
    try:
        from accelerate import PartialState
    except ImportError:
        raise LthError("several processes need Hugging Face Accelerate: pip install 'lth[scale]' "
                       "(or pip install accelerate)") from None
    state = PartialState(cpu=device.type == "cpu")
    if state.num_processes < 2:
        raise LthError("launched as one of several processes, but the process group did not form; on CPUs use "
                       "accelerate launch --multi_gpu --num_processes N -m lth ... --device cpu")
    ranks = Ranks(state.process_index, state.num_processes, state.device if device.type != "cpu" else device)
    if ranks.device.type == "cuda":  # object collectives (broadcast, gather) use the current CUDA device
        torch.cuda.set_device(ranks.device)
    die_with_parent()
    return ranks


def die_with_parent(poll_seconds: float = 0.05) -> None:
    """End this process when the one that started it is gone. The launcher (accelerate launch, torchrun) starts its
    workers in sessions of their own, so a SIGKILL to the launcher alone, as a user or a scheduler sends it, would
    leave them training and writing the run. Polled every 50 ms (a getppid call): at 0.5 s a tiny level could finish
    and write its record after the launcher was gone, as a quiet machine showed."""
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(poll_seconds)
        print(f"lth: the process that started this one ({parent}) is gone; stopping", file=sys.stderr, flush=True)
        os._exit(1)

    threading.Thread(target=watch, name="lth-parent-watch", daemon=True).start()
