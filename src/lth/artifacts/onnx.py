"""ONNX export of a trained ticket for serving, checked against the model it came from."""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..core.batches import collate
from ..core.errors import LthError

INPUTS = ("input_ids", "attention_mask", "token_type_ids")
OUTPUTS = ("logits", "start_logits", "end_logits")


class _Positional(nn.Module):
    """The model with positional inputs and a tuple of tensors out, as the ONNX exporter wants."""

    def __init__(self, model: nn.Module, names: list[str], outputs: list[str]):
        super().__init__()
        self.model, self.names, self.outputs = model, names, outputs

    def forward(self, *args):
        out = self.model(**dict(zip(self.names, args)))
        return tuple(getattr(out, name) for name in self.outputs)


def export_onnx(model: nn.Module, features: list[dict], pad_id: int, path: Path, tolerance: float = 1e-3) -> dict:
    """Write `model` as ONNX with dynamic batch and length; compare ONNX Runtime's outputs with torch's on dev
    `features` of another shape. Returns what was checked."""
    model = model.cpu().eval()  # exported and checked on the CPU, whatever device trained it
    names, outputs = to_onnx(model, collate(features[:2], pad_id), path)
    return {"inputs": names, "outputs": outputs, **check_onnx(path, model, collate(features[:16], pad_id),
                                                              names, outputs, tolerance)}


def to_onnx(model: nn.Module, sample: dict, path: Path) -> tuple[list[str], list[str]]:
    """Write `model` as ONNX, dynamic in batch and length; returns its input and output names."""
    names = [k for k in INPUTS if k in sample]
    with torch.no_grad():
        produced = model(**{k: sample[k] for k in names})
    outputs = [k for k in OUTPUTS if getattr(produced, k, None) is not None]
    axes = {name: {0: "batch", 1: "length"} for name in names}
    axes.update({name: {0: "batch"} for name in outputs})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # eval() on the wrapper: the exporter restores the wrapper's mode afterwards, and a new module is in train mode
        torch.onnx.export(_Positional(model, names, outputs).eval(), tuple(sample[k] for k in names), str(path),
                          input_names=names, output_names=outputs, dynamic_axes=axes, opset_version=17, dynamo=False)
    return names, outputs


def check_onnx(path: Path, model: nn.Module, batch: dict, names: list[str], outputs: list[str], tolerance: float) -> dict:
    try:
        import onnxruntime
    except ImportError:
        return {"checked": "not checked: onnxruntime is not installed (pip install 'lth[onnx]')"}
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(outputs, {k: batch[k].numpy() for k in names})
    with torch.no_grad():
        want = model(**{k: batch[k] for k in names})
    diff = max(float(np.abs(g - getattr(want, k).numpy()).max()) for g, k in zip(got, outputs))
    if diff > tolerance:
        raise LthError(f"the ONNX model {path} differs from the trained model by {diff:.2e} (more than {tolerance}); "
                       "report it with your model type")
    return {"checked": f"{len(batch['input_ids'])} dev examples with ONNX Runtime {onnxruntime.__version__}",
            "max_abs_diff": diff}
