"""Levels of a run as ticket files, without training them again: the mask (bit-packed, xz-compressed) with the
metadata `lth export` writes (base model and per-weight fingerprints, rule, task, level, metrics, recipe).

A run folder stays on the machine that made it; a ticket file of a level is ~1 MB and can be committed, so a later
session on a fresh machine transfers the mask without searching again:

    python benchmarks/save_tickets.py runs/mlm-minilm-7b1b05bbb6 --levels 2,3,5,7 --to benchmarks/tickets
    lth transfer benchmarks/tickets/mlm-minilm-7b1b05bbb6-level3.safetensors ... --task rte ...

`lth export` writes the same ticket.safetensors, and also trains the level again for its weights (for masked-LM,
12-17 minutes a level on 2 cores); a transfer needs the mask alone.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from lth.artifacts.ticket import load_ticket, save_ticket
from lth.core.errors import LthError
from lth.report.tables import pct
from lth.run.layout import level_dir
from lth.run.records import read_record
from lth.run.settings import FindSettings
from lth.run.summary import read_settings
from lth.search.export import choose_level, describe
from lth.search.search import open_search


def save_tickets(run: Path, levels: list[int], to: Path) -> list[Path]:
    """One ticket file a level, `<run name>-level<N>.safetensors` in `to`; each is read back and checked."""
    info = read_settings(run)
    settings = FindSettings(**{"head_warmup": 0, **info["settings"], "levels": None, "baselines": None,
                               "seeds": None})
    search = open_search(settings, judging=False, at=run)
    to.mkdir(parents=True, exist_ok=True)
    written = []
    for level in levels:
        level = choose_level(run, level, None)
        record = read_record(level_dir(run, level) / "metrics.json")
        mask = search.masks.level(level)
        path = to / f"{run.name}-level{level}.safetensors"
        save_ticket(mask, path, describe(search, level, record))
        back, _ = load_ticket(path)
        if back.keys() != mask.keys() or any(not (back[k] == mask[k]).all() for k in mask):
            raise LthError(f"{path} does not read back as level {level}'s mask")
        print(f"{path}: level {level}, {pct(record['sparsity'])} sparse, {path.stat().st_size:,} bytes, "
              f"dev {record['metrics']}")
        written.append(path)
    return written


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", type=Path, help="a run folder made by lth find")
    parser.add_argument("--levels", required=True, help="finished levels, comma-separated, e.g. 2,3,5,7")
    parser.add_argument("--to", type=Path, required=True, help="the folder to write the ticket files in")
    args = parser.parse_args()
    try:
        save_tickets(args.run.expanduser(), [int(v) for v in args.levels.split(",")], args.to.expanduser())
    except LthError as exc:
        raise SystemExit(f"error: {exc}") from None


if __name__ == "__main__":
    main()
