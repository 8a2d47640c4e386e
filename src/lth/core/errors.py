"""The one exception type that reaches users as a single line instead of a traceback."""


class LthError(Exception):
    """A problem with the user's input: the message names what was wrong and how to fix it."""


def first_line(exc: Exception) -> str:
    """The first line of an exception's message, or its type when it has none."""
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def short_reason(exc: Exception) -> str:
    """The first line of a library's exception, with its type: enough to tell offline from a wrong name."""
    return f"{type(exc).__name__}: {first_line(exc)[:200]}" if str(exc).strip() else type(exc).__name__
