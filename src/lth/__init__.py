"""lth: find, test and ship lottery tickets in pre-trained language models.

The package is in layers; a module imports only from its own layer and the ones below it (tests/test_layers.py
keeps it so):

    core/       masks, pruning, files and tensor files, metrics, models, devices, data files, errors
    tasks/      one Task protocol and one registry: GLUE, BBC, the user's own files, SQuAD, masked-LM
    run/        a run directory as data: settings, the kinds table, the plan of units, records, verdict, summary
    report/     text tables (the one aligner, number format and win mark), figures, the HTML report
    artifacts/  what an export writes: the ticket, the compact model, the Hugging Face folder, ONNX; inspect
    engine/     the fast CPU engine: C++ kernels (csrc/), sparse layers, lean layers, load_fast, predict, bench
    search/     training: the one loop, the work queue, the search, find, transfer, export
    cli.py      the `lth` command over the API below
"""
from .core.errors import LthError
from .core.version import __version__
from .run.settings import FindSettings


def find(settings: FindSettings | None = None, **overrides) -> dict:
    """Run or resume a ticket search (same options as `lth find`); returns its summary."""
    from .search.find import find as _find  # the API loads each command's modules when it is called

    return _find(settings, **overrides)


def transfer(sources: list[str] | str, task: str, level: str | int | None = None, sparsity: str | float | None = None,
             json_path: str | None = None, **flags) -> dict:
    """Train ticket(s) found elsewhere on task(s) (same options as `lth transfer`); returns the targets'
    summaries and the matrix."""
    from .search.transfer import transfer as _transfer

    return _transfer(sources, task, level, sparsity, json_path, **flags)


def export(run: str, to: str, level: int | None = None, sparsity: float | None = None, fp16: bool = False,
           onnx: bool = False, force: bool = False, speed: bool = False) -> dict:
    """Write a level's ticket, trained model and compact model (as `lth export`); returns ticket.json's content."""
    from .search.export import export as _export

    return _export(run, to, level, sparsity, fp16, onnx, force=force, speed=speed)


def apply_ticket(model, path: str, check_base: bool = True):
    """Zero the weights a ticket prunes in a Hugging Face model (checks it is the ticket's base); returns the mask."""
    from .artifacts.ticket import apply_ticket as _apply

    return _apply(model, path, check_base)


def load_compact(path: str, dtype=None):
    """The trained ticket stored in an export's compact/ folder, as a Hugging Face model."""
    import torch

    from .artifacts.compact import load_compact as _load

    return _load(path, dtype or torch.float32)


def load_fast(path: str, precision: str = "auto"):
    """An exported ticket on lth's fast CPU engine: an nn.Module with the Hugging Face forward."""
    from .engine.engine import load_fast as _load

    return _load(path, precision)


__all__ = ["FindSettings", "LthError", "__version__", "apply_ticket", "export", "find", "load_compact", "load_fast",
           "transfer"]
