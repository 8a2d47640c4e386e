"""lth: find, test and ship lottery tickets in pre-trained language models."""
from .config import FindSettings
from .errors import LthError


def find(settings: FindSettings | None = None, **overrides) -> dict:
    """Run or resume a ticket search (same options as `lth find`); returns its summary."""
    from .imp import find as _find

    return _find(settings, **overrides)


__all__ = ["FindSettings", "LthError", "find"]
__version__ = "0.1.0"
