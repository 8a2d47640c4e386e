"""The one exception type that reaches users as a single line instead of a traceback."""


class LthError(Exception):
    """A problem with the user's input: the message names what was wrong and how to fix it."""
