"""Where everything of a run lives: one folder per unit of work (see the README's run directory)."""
from __future__ import annotations

import re
from pathlib import Path


def level_dir(run: Path, level: int) -> Path:
    """A level of the search itself: level_NN."""
    return run / f"level_{level:02d}"


DRAW_RECORD = "draw.json"  # in the run's folder: how and when every level's mask was drawn (early-bird, gradual)


def draw_dir(run: Path) -> Path:
    """The one fine-tuning that draws the masks of --search gradual."""
    return run / "draw"


def branch_dir(run: Path, kind: str, seed: int, level: int) -> Path:
    """A seed or baseline of one level: branches/<kind>/seed_<seed>/level_NN."""
    return run / "branches" / kind / f"seed_{seed}" / f"level_{level:02d}"


def transfer_dir(run: Path, fingerprint: str) -> Path:
    """A transferred mask and its seeds, named by the mask's content."""
    return run / "branches" / "transfer" / fingerprint


def random_dir(run: Path, seed: int, level: int | None, sparsity: float) -> Path:
    """A random mask's unit: the level's own when the sparsity is a level of the run, else one at the sparsity."""
    if level is not None:
        return branch_dir(run, "random-prune", seed, level)
    return run / "branches" / "random-prune" / f"seed_{seed}" / f"at_{sparsity:.6f}"


def run_name(task: str, model: str, digest: str) -> str:
    """The run's folder name: task, model and the hash of the settings and data."""
    return f"{_slug(task)}-{_slug(model)}-{digest}"


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", Path(text).stem)[:40]
