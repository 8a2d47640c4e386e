"""The one exception type that reaches users as a single line instead of a traceback."""


class LthError(Exception):
    """A problem with the user's input: the message names what was wrong and how to fix it."""


def short_reason(exc: Exception) -> str:
    """The first line of a library's exception, with its type: enough to tell offline from a wrong name."""
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0][:200]}" if lines else type(exc).__name__
