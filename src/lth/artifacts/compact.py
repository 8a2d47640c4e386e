"""The trained ticket in compact form: every weight of the model, each pruned matrix stored as its surviving
values (row-major) and its bit mask; safetensors, so loading never runs code."""
from __future__ import annotations

import json
import lzma
from pathlib import Path

import torch
import transformers
from torch import nn

from ..core import masks
from ..core.errors import LthError
from ..core.files import DamagedFile
from ..core.models import read_config
from ..core.tensors import load_tensors, save_tensors
from .manifest import check_inside
from .ticket import pack, read_meta, unpack

COMPACT = "lth-compact/1"


def save_compact(model: nn.Module, mask: masks.Mask, path: str | Path, dtype: torch.dtype, info: dict) -> None:
    """The model's weights with each masked matrix as its kept values (row-major) and its bit mask."""
    tensors, tied, seen = {}, [], {}
    for name, tensor in model.state_dict().items():
        key = (tensor.data_ptr(), tuple(tensor.shape))
        if key in seen and tensor.numel():
            tied.append([name, seen[key]])
            continue
        seen[key] = name
        value = tensor.detach().to(dtype) if tensor.is_floating_point() else tensor.detach()
        if name in mask:
            tensors[f"{name}::values"] = value[mask[name]].contiguous()
            tensors[f"{name}::mask"], encoding = pack(mask[name])
            info.setdefault("encodings", {})[name] = encoding
        else:
            tensors[name] = value.contiguous()
    meta = {"format": COMPACT, "shapes": {n: list(m.shape) for n, m in mask.items()}, "tied": tied,
            "dtype": str(dtype).replace("torch.", ""), **info}
    save_tensors(tensors, path, {k: json.dumps(v) for k, v in meta.items()})


def load_compact(path: str | Path, dtype: torch.dtype = torch.float32) -> nn.Module:
    """The Hugging Face model stored in a compact folder (config.json and compact.safetensors), in `dtype`."""
    folder = Path(path).expanduser()
    folder = folder / "compact" if (folder / "compact" / "compact.safetensors").is_file() else folder
    file = folder / "compact.safetensors"
    if not file.is_file():
        raise LthError(f"no compact model at {folder}; give the compact/ folder that lth export wrote")
    check_inside(folder)
    tensors, _ = load_tensors(file)
    meta = read_meta(file)
    if meta.get("format") != COMPACT:
        raise LthError(f"{file} is not an lth compact model (format {meta.get('format')!r})")
    config = read_config(folder)
    model = getattr(transformers, config.architectures[0])(config)
    state = {}
    try:
        for name, shape in meta["shapes"].items():
            keep = unpack(tensors.pop(f"{name}::mask"), meta["encodings"][name], shape)
            values = tensors.pop(f"{name}::values")
            full = torch.zeros(shape, dtype=values.dtype)
            full[keep] = values
            state[name] = full
    except (KeyError, ValueError, RuntimeError, lzma.LZMAError) as exc:
        raise DamagedFile(file, f"a masked matrix does not decode ({exc})") from None
    state.update(tensors)
    result = model.load_state_dict({k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()},
                                   strict=False)
    missing = set(result.missing_keys) - {name for name, _ in meta["tied"]}
    if missing:
        raise DamagedFile(file, f"it has no values for {sorted(missing)[0]} (and {len(missing) - 1} more)")
    return model.to(dtype).eval()
