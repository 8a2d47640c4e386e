"""lth: find, test and ship lottery tickets in pre-trained language models."""
from .config import FindSettings
from .errors import LthError


def find(settings: FindSettings | None = None, **overrides) -> dict:
    """Run or resume a ticket search (same options as `lth find`); returns its summary."""
    from .search import find as _find

    return _find(settings, **overrides)


def transfer(sources: list[str] | str, task: str, level: str | int | None = None, sparsity: str | float | None = None,
             json_path: str | None = None, **flags) -> dict:
    """Train ticket(s) found elsewhere on task(s) (same options as `lth transfer`); returns the targets'
    summaries and the matrix."""
    from .transfers import transfer as _transfer

    return _transfer(sources, task, level, sparsity, json_path, **flags)


def export(run: str, to: str, level: int | None = None, sparsity: float | None = None, fp16: bool = False,
           onnx: bool = False) -> dict:
    """Write a level's ticket, trained model and compact model (as `lth export`); returns ticket.json's content."""
    from .exports import export as _export

    return _export(run, to, level, sparsity, fp16, onnx)


def apply_ticket(model, path: str, check_base: bool = True):
    """Zero the weights a ticket prunes in a Hugging Face model (checks it is the ticket's base); returns the mask."""
    from .tickets import apply_ticket as _apply

    return _apply(model, path, check_base)


def load_compact(path: str, dtype=None):
    """The trained ticket stored in an export's compact/ folder, as a Hugging Face model."""
    import torch

    from .tickets import load_compact as _load

    return _load(path, dtype or torch.float32)


def load_fast(path: str, precision: str = "auto"):
    """An exported ticket on lth's fast CPU engine: an nn.Module with the Hugging Face forward."""
    from .fast import load_fast as _load

    return _load(path, precision)


__all__ = ["FindSettings", "LthError", "apply_ticket", "export", "find", "load_compact", "load_fast", "transfer"]
__version__ = "0.1.0"
