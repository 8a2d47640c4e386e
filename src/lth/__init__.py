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


__all__ = ["FindSettings", "LthError", "find", "transfer"]
__version__ = "0.1.0"
