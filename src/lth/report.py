"""Tables of levels, sparsities and metrics, read from a run's records."""
from __future__ import annotations


def _fmt(value: float | None) -> str:
    return "undefined" if value is None else f"{value:.4f}"


def level_line(record: dict) -> str:
    metrics = "  ".join(f"{k} {_fmt(v)}" for k, v in record["metrics"].items())
    minutes, seconds = divmod(int(record["seconds"]), 60)
    at = "" if record["level"] is None else f"level {record['level']:2d}  "
    return f"{at}sparsity {record['sparsity']:6.1%}  {metrics}  ({minutes}m{seconds:02d}s)"


def table(summary: dict) -> str:
    """A fixed-width table: one row per level, one column per metric (primary first)."""
    names = summary["metrics"]
    header = ["level", "sparsity", *names]
    rows = [[str(r["level"]), f"{r['sparsity']:.1%}", *(_fmt(r["metrics"][n]) for n in names)]
            for r in summary["levels"]]
    widths = [max(len(x) for x in col) for col in zip(header, *rows)]
    lines = ["  ".join(x.rjust(w) for x, w in zip(line, widths)) for line in [header, *rows]]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)
