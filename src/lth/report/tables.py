"""Text tables, in one place: the aligner, the number formats and the win mark every printed table uses (the level
table `lth find` prints, the verdict, the transfer matrix, density per layer, speed)."""
from __future__ import annotations

from ..run.verdict import full_stats, lower_is_better, outcomes, pct, summarize, table_levels, verdict


def align(rows: list[list[str]], right: bool = False, rule: bool = False) -> list[str]:
    """Fixed-width columns two spaces apart, left-aligned (trailing spaces cut) or `right`-aligned; `rule`: a line
    of dashes under the header."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.rjust(w) if right else cell.ljust(w) for cell, w in zip(row, widths)) for row in rows]
    lines = lines if right else [line.rstrip() for line in lines]
    if rule:
        lines.insert(1, "  ".join("-" * w for w in widths))
    return lines


def number(value: float | None) -> str:
    return "undefined" if value is None else f"{value:.4f}"


def at(sparsity: float | None) -> str:
    return "none" if sparsity is None else pct(sparsity)


def mean_std(stats: dict | None) -> str:
    """A summary of runs (`verdict.summarize`'s entry) as 'mean ±std'."""
    if stats is None:
        return "-"
    if stats["mean"] is None:
        return f"undefined in {stats['undefined']} of {stats['n']}"
    spread = "n/a" if stats["std"] is None else f"{stats['std']:.4f}"
    return f"{stats['mean']:.4f} ±{spread}"


def mark(strict: bool | None, within: bool | None) -> str:
    """'**' for a ticket at or above the full model's mean, '*' for one within one std of it."""
    return "**" if strict else "*" if within else ""


MARKS = "** at or above the full model's mean   * within one std of it"


# -- the search's levels --------------------------------------------------------------------------------------

def level_line(record: dict) -> str:
    metrics = "  ".join(f"{k} {number(v)}" for k, v in record["metrics"].items())
    minutes, seconds = divmod(int(record["seconds"]), 60)
    where = "" if record["level"] is None else f"level {record['level']:2d}  "
    return f"{where}sparsity {record['sparsity']:6.1%}  {metrics}  ({minutes}m{seconds:02d}s)"


def levels_table(summary: dict) -> str:
    """One row per level, one column per metric (primary first)."""
    names = summary["metrics"]
    rows = [["level", "sparsity", *names]] + [
        [str(r["level"]), f"{r['sparsity']:.1%}", *(number(r["metrics"][n]) for n in names)] for r in summary["levels"]]
    return "\n".join(align(rows, right=True, rule=True))


# -- the verdict ----------------------------------------------------------------------------------------------

def _baselines(table: dict) -> list[str]:
    names = [name for _, entry in table_levels(table) for name in entry if name != "imp"]
    return list(dict.fromkeys(names))


def verdict_table(table: dict, metrics: list[str], primary: str, judged: str = "imp") -> str:
    """A table like the paper's, on `primary`, with winning rows marked and the verdict below.

    `judged` names the column of the ticket being judged (a transfer's table judges the transferred mask)."""
    result, full = verdict(table, metrics, primary), full_stats(table, primary)
    baselines = _baselines(table)
    strict, within = outcomes(table, primary, "strict"), outcomes(table, primary, "1sigma")
    rows = [["sparsity", judged, "win", *baselines]]
    for sparsity, entry in table_levels(table):
        stats = {name: summarize(runs).get(primary) for name, runs in entry.items()}
        rows.append([pct(sparsity), mean_std(stats.get("imp")), mark(strict.get(sparsity), within.get(sparsity)),
                     *(mean_std(stats.get(name)) for name in baselines)])
    op = "≤" if lower_is_better(primary) else "≥"
    sign = "+" if lower_is_better(primary) else "−"
    lines = [f"{primary} ({result['direction'][primary]} is better); full model: {mean_std(full)} over "
             f"{full['n']} seed{'s' if full['n'] != 1 else ''}", "", *align(rows), "",
             f"*  wins within 1σ ({judged} mean {op} full mean {sign} std)    ** wins strictly ({judged} mean {op} full mean)"]
    order = [primary, *(m for m in result["winning"] if m != primary)]
    for rule, label in (("1sigma", "within 1σ"), ("strict", "strict")):
        found = [f"{m} {'none' if s is None else pct(s)}" for m in order for s in [result["winning"][m][rule]]]
        lines.append(f"winning sparsity ({label}): {', '.join(found)}")
    lines += [f"note: {note}" for note in result["notes"]]
    return "\n".join(lines)


# -- time to ticket -------------------------------------------------------------------------------------------

def cost_table(costs: list[dict], table: dict | None = None, primary: str | None = None) -> str:
    """What each judged level's ticket cost (run.costs.time_to_ticket), in steps and minutes, with its win mark on
    `primary` when the verdict's `table` is given."""
    if not costs:
        return "time to ticket: no finished ticket yet"
    strict = outcomes(table, primary, "strict") if table and table.get("full") else {}
    within = outcomes(table, primary, "1sigma") if table and table.get("full") else {}
    win = {round(s, 6): (strict.get(s), within.get(s)) for s in strict}
    rows = [["sparsity", "draw steps", "ticket steps", "in all", "x dense", "IMP steps", "draw min", "ticket min",
             "win"]]
    for c in costs:
        minutes = lambda s: "-" if s is None else f"{s / 60:.1f}"  # noqa: E731
        rows.append([pct(c["sparsity"]), str(c["draw_steps"]), str(c["ticket_steps"]), str(c["steps"]),
                     f"{c['dense_multiple']:.2f}", str(c["imp_steps"]), minutes(c["draw_seconds"]),
                     minutes(c["ticket_seconds"]), mark(*win.get(round(c["sparsity"], 6), (None, None)))])
    search = costs[0]["search"]
    return "\n".join([f"time to ticket ({search}; one dense fine-tuning is {costs[0]['dense_steps']} steps)", "",
                      *align(rows, right=True)])


# -- the transfer matrix --------------------------------------------------------------------------------------

def matrix_table(cells: list[dict]) -> str:
    """Sources down, targets across; each cell the ticket's mean ± std on the target's primary metric, marked
    ** (at or above the full model's mean) or * (within one std of it)."""
    if not cells:
        return "no transfers"
    targets = list(dict.fromkeys(c["target"] for c in cells))
    sources = list(dict.fromkeys(c["source"] for c in cells))
    rows = [["source \\ target", *[f"{t} ({next(c['metric'] for c in cells if c['target'] == t)})" for t in targets]]]
    for source in sources:
        found = {}
        for cell in cells:  # the first cell of each target, as a matrix has one per source and target
            if cell["source"] == source:
                found.setdefault(cell["target"], cell)
        rows.append([source, *(_cell_text(found.get(target)) for target in targets)])
    rows.append(["full model", *[_stat(next(c["full"] for c in cells if c["target"] == t)) for t in targets]])
    return "\n".join(align(rows, rule=True) + [f"{MARKS}   (own) the target's own ticket   @ the sparsity on the target"])


def _stat(stats: dict | None) -> str:
    """A matrix cell's mean ± std: the mean alone for one seed, so that cells stay narrow."""
    if stats is None:
        return "-"
    return number(stats["mean"]) + (f" ±{stats['std']:.4f}" if stats["std"] is not None else "")


def _cell_text(cell: dict | None) -> str:
    if cell is None or cell["ticket"] is None:
        return "-"
    wins = cell["wins"] or {}
    own = " (own)" if cell["kind"] == "own ticket" else ""
    return f"{_stat(cell['ticket'])}{mark(wins.get('strict'), wins.get('1sigma'))}{own} @{pct(cell['sparsity'])}"
