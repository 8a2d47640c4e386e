"""`lth report`: one self-contained HTML page of runs, verdicts and transfers, with every figure also as SVG
and PNG and every table as CSV and LaTeX. It only reads run directories; an unfinished run shows what exists
and says what is missing."""
from __future__ import annotations

import base64
import csv
import datetime
import html
import io
from pathlib import Path

import numpy as np

from ..core import masks
from ..core.console import say
from ..core.files import atomic_path, load_json
from ..core.version import __version__
from ..run.layout import DRAW_RECORD
from ..run.summary import RunView, read_run
from ..run.verdict import outcomes, summarize
from . import figures
from .tables import at, mark, mean_std, number, pct


class Page:
    """The HTML page being built, and the folder its figures and tables also go to."""

    def __init__(self, to: Path):
        self.to, self.parts, self.figures, self.tables = to, [], [], []

    def add(self, markup: str) -> None:
        self.parts.append(markup)

    def figure(self, fig, name: str, caption: str) -> None:
        svg = io.BytesIO()
        fig.savefig(svg, format="svg")
        (self.to / "figures").mkdir(parents=True, exist_ok=True)
        (self.to / "figures" / f"{name}.svg").write_bytes(svg.getvalue())
        fig.savefig(self.to / "figures" / f"{name}.png", dpi=130)
        figures.plt.close(fig)
        data = base64.b64encode(svg.getvalue()).decode()
        self.figures.append(name)
        self.add(f'<figure id="{name}"><img alt="{html.escape(caption)}" src="data:image/svg+xml;base64,{data}">'
                 f"<figcaption>{html.escape(caption)}</figcaption></figure>")

    def table(self, rows: list[list[str]], name: str, caption: str) -> None:
        (self.to / "tables").mkdir(parents=True, exist_ok=True)
        with open(self.to / "tables" / f"{name}.csv", "w", newline="") as handle:
            csv.writer(handle).writerows(rows)
        (self.to / "tables" / f"{name}.tex").write_text(latex(rows, caption))
        self.tables.append(name)
        head = "".join(f"<th>{html.escape(c)}</th>" for c in rows[0])
        body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in rows[1:])
        self.add(f'<table id="{name}"><caption>{html.escape(caption)}</caption><tr>{head}</tr>{body}</table>')


def latex(rows: list[list[str]], caption: str) -> str:
    escape = lambda text: "".join("\\" + c if c in "&%$#_{}" else c for c in text).replace("±", r"$\pm$")  # noqa
    lines = [r"\begin{table}", r"\centering", r"\begin{tabular}{" + "l" * len(rows[0]) + "}", r"\hline",
             " & ".join(map(escape, rows[0])) + r" \\", r"\hline"]
    lines += [" & ".join(map(escape, row)) + r" \\" for row in rows[1:]]
    return "\n".join(lines + [r"\hline", r"\end{tabular}", rf"\caption{{{escape(caption)}}}", r"\end{table}"]) + "\n"


def report(runs: list[str], to: str) -> Path:
    """Write `to`/index.html with `to`/figures and `to`/tables; returns the page's path."""
    views = [read_run(Path(run).expanduser()) for run in runs]
    page = Page(Path(to).expanduser())
    page.to.mkdir(parents=True, exist_ok=True)
    for view in views:
        run_section(page, view)
    if any(v.transfers for v in views) or len(views) > 1:
        across_runs(page, views)
    if (page.to / "index.html").exists():
        say(f"note: {page.to / 'index.html'} held an earlier report; it is replaced")
    with atomic_path(page.to / "index.html") as tmp:
        tmp.write_text(document(page, views))
    return page.to / "index.html"


def run_section(page: Page, v: RunView) -> None:
    name, s = v.run.name, v.info["settings"]
    page.add(f'<section><h2 id="run-{name}">{html.escape(name)}</h2>')
    keys = ("model", "task", "lr", "epochs", "steps", "batch_size", "max_length", "schedule", "rate", "strategy",
            "exclude", "precision") + (("distill", "distill_alpha", "distill_temperature") if s.get("distill") else ()) + (
            ("search", "draw_every") if s.get("search", "imp") != "imp" else ())
    recipe = ", ".join(f"{k} {s[k]}" for k in keys if s.get(k))
    sizes = ", ".join(f"{k} {n:,}" for k, n in v.info.get("sizes", {}).items())
    page.add(f"<p><b>Recipe:</b> {html.escape(recipe)}<br><b>Data:</b> {html.escape(sizes)}</p>")
    for note in v.info.get("notes", []):
        page.add(f'<p class="note">note: {html.escape(note)}</p>')
    status = "finished: every planned unit is done" if not v.missing else (
        f"unfinished: {len(v.missing)} planned units are not done yet ({', '.join(v.missing[:6])}"
        f"{' …' if len(v.missing) > 6 else ''}); the report shows what exists")
    page.add(f'<p class="status">{html.escape(status)}</p>')
    winning = (v.verdict or {}).get("winning", {}).get(v.primary)
    transfers = [(_sources(e), e["sparsity"], summarize(next(iter(e["table"]["levels"].values()))["imp"]).get(v.primary))
                 for e in v.transfers.values()]
    page.figure(figures.metric_vs_sparsity(v.levels, v.results, winning, v.primary, transfers,
                                           bool(s.get("distill")), s.get("search", "imp")), f"{name}-metric",
                f"{v.primary} against sparsity: the search, the full model's band, baselines and transfers")
    rows = [["level", "sparsity", *v.info["metrics"]]] + [
        [str(r["level"]), pct(r["sparsity"]), *(number(r["metrics"].get(m)) for m in v.info["metrics"])] for r in v.levels]
    page.table(rows, f"{name}-levels", "the search: every level's dev metrics (seed 1)")
    if v.verdict:
        verdict_table(page, v, name)
        cost_table(page, v, name)
    else:
        page.add('<p class="status">no seeds or baselines on disk yet: no verdict (lth find --seeds 3 --baselines all)</p>')
    if (v.run / DRAW_RECORD).is_file():
        drawn = load_json(v.run / DRAW_RECORD, {"search": str, "levels": list, "steps": int})
        page.figure(figures.drawing(drawn), f"{name}-draw", f"how {drawn['search']} drew each level's mask, step by step")
    for fingerprint, entry in v.transfers.items():
        transfer_table(page, v, fingerprint, entry)
    mask_sections(page, v, name)
    if v.losses:
        page.figure(figures.loss_curves(v.losses), f"{name}-loss", "training loss of every unit, by kind")
    page.add("</section>")


def _sources(entry: dict) -> str:
    return ", ".join(s["label"] for s in entry["sources"])


def verdict_table(page: Page, v: RunView, name: str) -> None:
    kinds = list(dict.fromkeys(k for row in v.results["levels"].values() for k in row))
    search = v.info["settings"].get("search", "imp")
    rows = [["sparsity", *(search if k == "imp" else k for k in kinds), "wins (1σ)", "wins (strict)"]]
    within, strict = outcomes(v.results, v.primary, "1sigma"), outcomes(v.results, v.primary, "strict")
    for sparsity, row in sorted(v.results["levels"].items(), key=lambda x: float(x[0])):
        rows.append([pct(float(sparsity)), *(mean_std(summarize(row.get(k, [])).get(v.primary)) for k in kinds),
                     _yes(within.get(float(sparsity))), _yes(strict.get(float(sparsity)))])
    full = mean_std(summarize(v.results["full"]).get(v.primary))
    win = v.verdict["winning"][v.primary]
    page.table(rows, f"{name}-verdict", f"{v.primary}, mean ± std over seeds; full model {full}; winning sparsity "
               f"{at(win['1sigma'])} within 1σ, {at(win['strict'])} strictly")
    for note in v.verdict["notes"]:
        page.add(f'<p class="note">note: {html.escape(note)}</p>')


def cost_table(page: Page, v: RunView, name: str) -> None:
    """Time to ticket: what each judged level's ticket cost to draw and to train, beside IMP's steps."""
    if not v.costs:
        return
    within = outcomes(v.results, v.primary, "1sigma")
    rows = [["sparsity", "steps to draw the mask", "steps to train the ticket", "in all", "× one dense fine-tuning",
             "IMP's steps", "minutes to draw", "wins (1σ)"]]
    for c in v.costs:
        rows.append([pct(c["sparsity"]), str(c["draw_steps"]), str(c["ticket_steps"]), str(c["steps"]),
                     f"{c['dense_multiple']:.2f}", str(c["imp_steps"]), f"{c['draw_seconds'] / 60:.1f}",
                     _yes(within.get(round(c["sparsity"], 6), within.get(c["sparsity"])))])
    page.table(rows, f"{name}-cost", f"time to ticket ({c['search']}): training steps to draw each mask and train its "
               f"ticket; one dense fine-tuning is {v.costs[0]['dense_steps']} steps")


def _yes(value) -> str:
    return {True: "yes", False: "no", None: "n/a"}[value]


def transfer_table(page: Page, v: RunView, fingerprint: str, entry: dict) -> None:
    row = next(iter(entry["table"]["levels"].values()))
    cells = [[k, mean_std(summarize(runs).get(v.primary))] for k, runs in row.items()]
    rows = [["", "mean ± std"], ["full model", mean_std(summarize(entry["table"]["full"]).get(v.primary))]] + [
        ["transfer" if k == "imp" else k, c] for k, c in cells]
    page.table(rows, f"{v.run.name}-transfer-{fingerprint}",
               f"transfer of {_sources(entry)} at {pct(entry['sparsity'])}, {v.primary}")
    for note in entry.get("notes", []):
        page.add(f'<p class="note">note: {html.escape(note)}</p>')


def mask_sections(page: Page, v: RunView, name: str) -> None:
    pruned = {level: masks.load(path) for level, path in v.masks.items() if level > 0}
    if not pruned:
        page.add('<p class="status">no pruned mask yet: the density map and overlaps appear after level 0</p>')
        return
    maps = {f"level {level} ({pct(masks.sparsity(m))})": masks.density_map(m) for level, m in pruned.items()}
    page.figure(figures.density_maps(maps), f"{name}-density", "share of weights kept per layer and matrix, by level"
                " (red outline: under 1%, the matrix is effectively cut out)")
    empty = [f"level {lvl}: {n} keeps {d:.1%}" for lvl, m in pruned.items() for n, d in masks.nearly_empty(m).items()]
    if empty:
        page.add(f'<p class="warning">nearly empty matrices: {html.escape("; ".join(empty))}</p>')
    labels = [f"level {level}" for level in pruned]
    page.figure(overlap_figure(list(pruned.values()), labels, f"mask overlap between levels of {name}"),
                f"{name}-overlap", "Jaccard overlap of the kept weights between levels (IMP masks are nested)")


def jaccard(a: masks.Mask, b: masks.Mask) -> float:
    """Kept in both over kept in either, over the weights both masks cover."""
    common = [k for k in a if k in b and a[k].shape == b[k].shape]
    inter = sum(int((a[k] & b[k]).count_nonzero()) for k in common)
    union = sum(int((a[k] | b[k]).count_nonzero()) for k in common)
    return inter / union if union else float("nan")


def overlap_figure(found: list[masks.Mask], labels: list[str], title: str):
    values = np.array([[jaccard(a, b) for b in found] for a in found])
    return figures.heatmap(values, labels, labels, title, "Jaccard (kept ∩ / kept ∪)")


def across_runs(page: Page, views: list[RunView]) -> None:
    page.add('<section><h2 id="across">Across runs</h2>')
    levels = sorted({lvl for v in views for lvl in v.masks if lvl > 0})
    shared = [lvl for lvl in levels if sum(lvl in v.masks for v in views) > 1]
    for level in shared:
        found = [(v.run.name, masks.load(v.masks[level])) for v in views if level in v.masks]
        shapes = lambda m: {k: tuple(t.shape) for k, t in m.items()}  # noqa: E731
        found = [(n, m) for n, m in found if shapes(m) == shapes(found[0][1])]  # masks of one base model only
        if len(found) < 2:
            continue
        density = np.mean([1 - masks.sparsity(m) for _, m in found])
        page.figure(overlap_figure([m for _, m in found], [n for n, _ in found], f"level {level} masks of each run"),
                    f"across-overlap-level-{level}", f"Jaccard overlap of the level-{level} tickets of different tasks; "
                    f"two independent random masks of this density would overlap {density / (2 - density):.2f}")
    cells = [(_sources(e), v.run.name, summarize(next(iter(e["table"]["levels"].values()))["imp"]).get(v.primary),
              summarize(e["table"]["full"]).get(v.primary), e) for v in views for e in v.transfers.values()]
    if cells:
        transfer_heatmap(page, cells + own_tickets(views, {c[0] for c in cells}))
    page.add("</section>")


def own_tickets(views: list[RunView], sources: set[str]) -> list:
    """The matrix's diagonal: a source that is a level of a run in the report, judged on that run itself."""
    found = []
    for v in views:
        for record in v.levels:
            label = f"{v.run.name} level {record['level']}"
            key = f"{record['sparsity']:.6f}"
            row = v.results.get("levels", {}).get(key)
            if label in sources and row and v.verdict:
                wins = {rule: outcomes(v.results, v.primary, rule).get(float(key)) for rule in ("1sigma", "strict")}
                entry = {"sparsity": record["sparsity"], "own": True, "verdict": {"primary": v.primary, "winning": {
                    v.primary: {rule: float(key) if won else None for rule, won in wins.items()}}}}
                found.append((label, v.run.name, summarize(row["imp"]).get(v.primary),
                              summarize(v.results["full"]).get(v.primary), entry))
    return found


def transfer_heatmap(page: Page, cells: list) -> None:
    sources = list(dict.fromkeys(c[0] for c in cells))
    targets = list(dict.fromkeys(c[1] for c in cells))
    values = np.full((len(sources), len(targets)), np.nan)
    text = [[""] * len(targets) for _ in sources]
    rows = [["source \\ target", *targets]] + [[s] + [""] * len(targets) for s in sources]
    for source, target, ticket, full, entry in cells:
        i, j = sources.index(source), targets.index(target)
        if ticket and full and ticket["mean"] is not None and full["mean"] is not None:
            values[i, j] = ticket["mean"] - full["mean"]
            judged = entry.get("verdict") or {}
            wins = judged.get("winning", {}).get(judged.get("primary"), {})
            won = mark(wins.get("strict") is not None, wins.get("1sigma") is not None)
            own = " (own)" if entry.get("own") else ""
            text[i][j] = f"{ticket['mean']:.3f}{won}{own}"
            rows[i + 1][j + 1] = f"{mean_std(ticket)}{won}{own} @{pct(entry['sparsity'])}"
    page.figure(figures.heatmap(values, sources, targets, "transfer: ticket minus the target's full model",
                                "difference in the target's primary metric", text, centered=True),
                "across-transfer", "transfer matrix: each cell the transferred ticket's mean (** wins strictly, * within "
                "1σ; (own): the target's own ticket), coloured by its difference to the target's full model")
    page.table(rows, "across-transfer", "transfer matrix: mean ± std on the target's primary metric")


STYLE = """body{font-family:sans-serif;max-width:1100px;margin:1em auto;color:#222}img{max-width:100%}
table{border-collapse:collapse;margin:.8em 0;font-size:13px}td,th{border:1px solid #bbb;padding:2px 6px}
caption{text-align:left;font-style:italic;padding:2px}.note{color:#555;font-size:13px}
.warning{color:#b00020}.status{background:#f3f3f3;padding:4px}figure{margin:1em 0}"""


def document(page: Page, views: list[RunView]) -> str:
    when = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
    index = "".join(f'<li><a href="#run-{v.run.name}">{html.escape(v.run.name)}</a></li>' for v in views)
    return (f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>lth report</title>'
            f"<style>{STYLE}</style></head><body><h1>lth report</h1><p>{len(views)} run(s), written by lth "
            f"{__version__} on {when}. Figures are also in figures/ (SVG, PNG), tables in tables/ (CSV, LaTeX).</p>"
            f"<ul>{index}</ul>{''.join(page.parts)}</body></html>\n")
