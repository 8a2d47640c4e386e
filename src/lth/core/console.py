"""What lth tells the user while it works: one line at a time, above any progress bar."""
from __future__ import annotations

from tqdm.auto import tqdm


def say(line: str) -> None:
    tqdm.write(line)
