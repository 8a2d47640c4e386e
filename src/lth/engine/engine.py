"""The fast engine: a trained ticket whose pruned linear layers run sparse kernels where that is faster.

`load_fast(folder)` returns an nn.Module with the Hugging Face forward. Pruned linear layers choose between the
sparse kernel and the dense matmul by timing both (`sparse.py`); the rest of the model (attention, softmax,
LayerNorm, GELU) runs in bf16 autocast where the CPU computes bf16 natively, and BERT-style layers run a lean
forward with fewer ops (`layers.py`)."""
from __future__ import annotations

from pathlib import Path

import torch
import transformers
from torch import nn

from ..artifacts.manifest import check_inside
from ..artifacts.ticket import read_meta
from ..core.devices import auto_precision, autocast, cpu_flags
from ..core.errors import LthError
from ..core.files import load_json
from ..core.models import quiet_transformers, read_config
from .layers import lean_layers
from .quads import quad_kernel
from .sparse import SparseLinear, sparsify


class FastModel(nn.Module):
    """The model with its pruned layers swapped; calls run without gradients, in bf16 autocast where native.

    BERT-style encoder layers also get a lean forward (`lean_layers`)."""

    def __init__(self, model: nn.Module, precision: str, why: str = "as asked"):
        super().__init__()
        self.model, self.precision, self.why = model.eval(), precision, why
        # int8 is for the pruned layers' products; around them bf16 where native, else fp32
        self.rest = auto_precision(torch.device("cpu")) if precision == "int8" else precision
        self.config = model.config
        self.lean = lean_layers(model)
        if self.rest == "bf16":
            _linear_weights_in_bf16(model)

    def forward(self, **inputs):
        with torch.inference_mode(), autocast(torch.device("cpu"), self.rest):
            return self.model(**inputs)

    def train(self, mode: bool = True) -> "FastModel":
        """Always in evaluation: an engine for inference (callers that switch a model back to training after
        evaluating it, as lth's own evaluation does, leave its dropout off)."""
        return super().train(False)

    def layers(self) -> dict[str, str]:
        """Per swapped layer, which implementation each input size uses (after the first calls): 'sparse', 'dense',
        or in int8 'int8-dense' (the dense int8 product)."""
        return {name: ",".join(f"{b}:{m.implementation(c)}" for b, c in sorted(m.choice.items())) or "not run yet"
                for name, m in self.model.named_modules() if isinstance(m, SparseLinear)}


def _linear_weights_in_bf16(model: nn.Module) -> None:
    """Every nn.Linear's weight and bias (a sparse layer's dense path included) in bf16, once: bf16 autocast casts
    them to exactly these values on every call otherwise, which at batch 1 is a good part of the time (measured:
    benchmarks/results/design-measurements.md)."""
    for module in model.modules():
        if isinstance(module, nn.Linear):
            module.to(torch.bfloat16)


def load_fast(path: str | Path, precision: str = "auto") -> FastModel:
    """The trained ticket of an export folder (or any Hugging Face folder with pruned weights) on the fast engine.

    `precision`: 'auto' (int8 where the CPU has VNNI but no AMX and the export measured int8 within its tolerance of
    the dev metric; else bf16 where the CPU has it natively, unless the export measured that bf16 moves the
    ticket's dev metric by more than the tolerance: fp32 then and elsewhere), 'bf16', 'fp32' or 'int8' (the pruned
    layers in int8 on the VNNI kernel where that is faster, activations quantised per token; the rest as 'auto'
    without int8 would run it)."""
    if precision not in ("auto", "bf16", "fp32", "int8"):
        raise LthError(f"precision {precision!r}: give 'auto', 'bf16', 'fp32' or 'int8'")
    if precision == "int8" and not quad_kernel():
        raise LthError("precision 'int8' needs a CPU with AVX512-VNNI (and the compiled kernel), which this one has "
                       "not: use 'bf16' or 'fp32'")
    quiet_transformers()
    folder = Path(path).expanduser()
    folder = folder / "model" if (folder / "model" / "config.json").is_file() else folder
    if not (folder / "config.json").is_file():
        raise LthError(f"no model at {path}; give a folder written by lth export (or its model/ folder)")
    check_inside(folder)
    config = read_config(folder)
    try:
        model = getattr(transformers, config.architectures[0]).from_pretrained(folder, attn_implementation="eager")
    except Exception as exc:  # a damaged or foreign folder
        raise LthError(f"could not load the model in {folder} ({type(exc).__name__}); export it again") from None
    precision, why = choose_precision(folder.parent) if precision == "auto" else (precision, "as asked")
    sparsify(model, _pruned_names(folder.parent), bf16=precision == "bf16" or (
        precision == "int8" and auto_precision(torch.device("cpu")) == "bf16"), int8=precision == "int8")
    return FastModel(model, precision, why)


def choose_precision(export: Path) -> tuple[str, str]:
    """What precision='auto' runs an export in on this CPU, and why (lth speed and lth inspect say it): int8 where
    the CPU has VNNI but no AMX and `lth export` measured int8 within its tolerance of the dev metric; else bf16 where
    the CPU has it natively, unless the export measured bf16 moving the metric past its tolerance; else fp32."""
    native = auto_precision(torch.device("cpu"))
    if native == "fp32":
        precision, why = "fp32", "this CPU has no native bf16"
    elif not _bf16_keeps_the_metric(export):
        precision, why = "fp32", "lth export measured bf16 moving the dev metric past its tolerance"
    else:
        precision, why = "bf16", "native bf16 on this CPU"
    int8 = _measured(export, "int8_engine")
    if not quad_kernel():
        return precision, why + "; int8 needs AVX512-VNNI, not here"
    if "amx_bf16" in cpu_flags():  # measured: lth's int8 engine no faster than its bf16 one at batch 32 (docs/speed.md)
        return precision, why + ("; int8 left out: with AMX, lth's bf16 engine was as fast at batch 32 on a real "
                                 "ticket (--precision int8 was faster at batch 1)")
    if not int8:
        return precision, why + "; int8 not measured on the dev set (lth export ... --force with this lth measures it)"
    if not int8.get("within_tolerance"):
        return precision, why + (f"; int8 moved {int8.get('primary')} by {int8.get('moves_points', 0):+.2f} points "
                                 "on the dev set, past 0.5")
    return "int8", (f"lth export measured int8 moving {int8.get('primary')} by {int8.get('moves_points', 0):+.2f} "
                    "points on the dev set (within 0.5), and this CPU has VNNI without AMX")


def _measured(export: Path, key: str) -> dict:
    return (load_json(export / "ticket.json").get(key) or {}) if (export / "ticket.json").is_file() else {}


def _bf16_keeps_the_metric(export: Path) -> bool:
    """False where `lth export` measured the engine in bf16 moving the dev metric past the tolerance (ticket.json's
    `fast_engine`); True where it did not, or where nothing was measured."""
    engine = _measured(export, "fast_engine")
    return engine.get("precision") != "bf16" or engine.get("within_tolerance", True)


def _pruned_names(export: Path) -> list[str] | None:
    """The weights the ticket prunes, when the folder is an export with its ticket."""
    check_inside(export / "ticket.safetensors")  # an export's ticket, damaged or missing, is named
    if not (export / "ticket.safetensors").is_file():
        return None
    return list(read_meta(export / "ticket.safetensors")["shapes"])
