"""The report's figures, each a function of plain data returning a matplotlib Figure (no files, no run folders)."""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")  # no screen: figures are only ever written to files
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from ..core.masks import matrix_types, short_column  # noqa: E402
from ..run.verdict import summarize  # noqa: E402

plt.rcParams.update({"svg.fonttype": "path", "font.size": 9, "axes.spines.top": False, "axes.spines.right": False})
COLORS = {"imp": "#1f4e9c", "full": "#7a7a7a", "random-prune": "#d1495b", "random-reinit": "#edae49",
          "oneshot": "#00798c", "standard": "#66a182", "transfer": "#8e44ad", "trunk": "#1f4e9c"}
EMPTY = 0.01  # a matrix keeping less than this is effectively cut out (the warning `lth find` prints)


def metric_vs_sparsity(levels: list[dict], results: dict | None, winning: dict | None, metric: str,
                       transfers: list[tuple[str, float, dict]] = (), distilled: bool = False,
                       search: str = "imp") -> plt.Figure:
    """The search's tickets over sparsity, the full model's mean ± std band, every baseline and transfer as mean ± std,
    and the winning sparsities under both rules. `levels`: the search's records; `results`: the verdict's table;
    `distilled`: the pruned units learned from the dense model (--distill), which the figure says; `search`: how the
    masks were drawn (--search)."""
    name = "IMP" if search == "imp" else search
    fig, ax = plt.subplots(figsize=(8.6, 3.9), layout="constrained")
    trunk = [(r["sparsity"] * 100, r["metrics"].get(metric)) for r in levels if r["metrics"].get(metric) is not None]
    if trunk:
        ax.plot(*zip(*trunk), "o-", color=COLORS["imp"], zorder=3,
                label=f"{name} with distillation (the search, seed 1)" if distilled else f"{name} (the search, seed 1)")
    if distilled:
        ax.set_title("every pruned unit trained with distillation from the dense model (--distill)", fontsize=8)
    if results and results.get("full"):
        full = summarize(results["full"]).get(metric)
        if full and full["mean"] is not None:
            spread = full["std"] or 0.0
            ax.axhspan(full["mean"] - spread, full["mean"] + spread, color=COLORS["full"], alpha=0.18,
                       label=f"full model, mean ± std ({full['n']} seeds)")
            ax.axhline(full["mean"], color=COLORS["full"], lw=1)
    for kind, points in _columns(results, metric).items():
        xs, means, stds = zip(*points)
        ax.errorbar(xs, means, yerr=stds, fmt="s--" if kind != "imp" else "D", capsize=3, ms=4,
                    color=COLORS.get(kind, "black"), label=f"{kind}, mean ± std" if kind != "imp" else f"{name}, mean ± std")
    sources = list(dict.fromkeys(label.rsplit(" level ", 1)[0] for label, _, _ in transfers))
    palette = plt.get_cmap("Dark2").colors
    for label, sparsity, stats in transfers:
        if stats and stats["mean"] is not None:  # one colour per source run, its levels side by side
            color = palette[sources.index(label.rsplit(" level ", 1)[0]) % len(palette)]
            ax.errorbar([sparsity * 100], [stats["mean"]], yerr=[stats["std"] or 0], fmt="*", ms=10, capsize=3,
                        color=color, label=f"transfer: {label}")
    for rule, style in (("1sigma", ":"), ("strict", "-.")):
        at = (winning or {}).get(rule)
        if at is not None:
            ax.axvline(at * 100, color="black", ls=style, lw=1,
                       label=f"winning sparsity ({'within 1σ' if rule == '1sigma' else 'strict'}): {at:.1%}")
    ax.set_xlabel("sparsity (% of prunable weights removed)")
    ax.set_ylabel(metric)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    return fig


def _columns(results: dict | None, metric: str) -> dict[str, list[tuple[float, float, float]]]:
    """Per kind: (sparsity %, mean, std) at every judged level with more than the search's own run."""
    columns: dict[str, list] = {}
    for sparsity, row in sorted(((float(s), row) for s, row in ((results or {}).get("levels") or {}).items())):
        for kind, runs in row.items():
            stats = summarize(runs).get(metric)
            if stats and stats["mean"] is not None and (kind != "imp" or stats["n"] > 1):
                columns.setdefault(kind, []).append((sparsity * 100, stats["mean"], stats["std"] or 0.0))
    return columns


def density_maps(maps: dict[str, dict[str, dict[str, float]]]) -> plt.Figure:
    """One heatmap per level: encoder layers down, matrix types across, the share of weights kept in each;
    matrices outside the layers (the pooler) in an extra row; cells under 1% outlined in red."""
    count = len(maps)
    cols = min(count, 4)
    rows = -(-count // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.6 * rows + 0.3), squeeze=False, layout="constrained")
    for ax in axes.flat[count:]:
        ax.axis("off")
    image = None
    for ax, (title, layers) in zip(axes.flat, maps.items()):
        names, types, grid = _grid(layers)
        image = ax.imshow(grid, vmin=0, vmax=1, cmap="viridis", aspect="auto")
        ax.set_title(title, fontsize=8)
        ax.set_xticks(range(len(types)), types, rotation=45, ha="right", fontsize=6)
        ax.set_yticks(range(len(names)), names, fontsize=6)
        for (i, j), value in np.ndenumerate(grid):
            if not np.isnan(value):
                ax.text(j, i, f"{value:.0%}", ha="center", va="center", fontsize=5,
                        color="white" if value < 0.6 else "black")
                if value < EMPTY:
                    ax.add_patch(plt.Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, ec="red", lw=2))
    if image is not None:
        fig.colorbar(image, ax=axes.ravel().tolist(), shrink=0.6, label="share of weights kept")
    return fig


def _grid(layers: dict[str, dict[str, float]]) -> tuple[list[str], list[str], np.ndarray]:
    types = matrix_types(layers)
    names = list(layers)
    grid = np.full((len(names), max(1, len(types))), np.nan)
    for i, name in enumerate(names):
        for j, column in enumerate(types):
            if column in layers[name]:
                grid[i, j] = layers[name][column]
        if "" in layers[name]:  # a matrix outside the layers: its one value in the first column
            grid[i, 0] = layers[name][""]
    return names, [short_column(t) for t in types] or ["matrix"], grid


def heatmap(values: np.ndarray, rows: list[str], columns: list[str], title: str, label: str,
            text: list[list[str]] | None = None, centered: bool = False) -> plt.Figure:
    """A labelled matrix: mask overlaps (Jaccard) or transfer results (ticket minus full model)."""
    fig, ax = plt.subplots(figsize=(2.5 + 1.1 * len(columns), 1.5 + 0.45 * len(rows)), layout="constrained")
    finite = values[np.isfinite(values)]
    if centered:
        reach = max(float(np.abs(finite).max()) if finite.size else 1.0, 1e-6)
        image = ax.imshow(values, cmap="RdBu", vmin=-reach, vmax=reach, aspect="auto")
    else:
        image = ax.imshow(values, cmap="viridis", vmin=0, vmax=1, aspect="auto")
    ax.set_xticks(range(len(columns)), columns, rotation=30, ha="right", fontsize=7)
    ax.set_yticks(range(len(rows)), rows, fontsize=7)
    for (i, j), value in np.ndenumerate(values):
        shown = text[i][j] if text else ("" if not np.isfinite(value) else f"{value:.2f}")
        r, g, b, _ = image.cmap(image.norm(value)) if np.isfinite(value) else (1, 1, 1, 1)
        dark = 0.299 * r + 0.587 * g + 0.114 * b < 0.5  # white text on dark cells, black on light
        ax.text(j, i, shown, ha="center", va="center", fontsize=6, color="white" if dark else "black")
    ax.set_title(title, fontsize=9)
    fig.colorbar(image, ax=ax, label=label, shrink=0.8)
    return fig


def loss_curves(curves: dict[str, list[float]], window: int = 20) -> plt.Figure:
    """Every unit's training loss per step (a moving average over `window` steps), one panel per kind."""
    kinds = list(dict.fromkeys(label.split(" ")[0] for label in curves))
    fig, axes = plt.subplots(1, len(kinds), figsize=(3.3 * len(kinds), 2.8), squeeze=False, sharey=True,
                             layout="constrained")
    for ax, kind in zip(axes.flat, kinds):
        for label, losses in curves.items():
            if label.split(" ")[0] == kind and losses:
                smooth = np.convolve(losses, np.ones(min(window, len(losses))) / min(window, len(losses)), "valid")
                ax.plot(smooth, lw=0.8, label=label.split(" ", 1)[1])
        ax.set_title(kind, fontsize=8)
        ax.set_xlabel("step")
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=5, frameon=False)
    axes.flat[0].set_ylabel(f"training loss (mean of {window} steps)")
    return fig


def drawing(record: dict) -> plt.Figure:
    """How a drawing search drew its masks (draw.json): early-bird's mask distance between consecutive checks per
    level against ε, or gradual's sparsity schedule; each level's mask marked where it was drawn."""
    fig, ax = plt.subplots(figsize=(8.6, 3.4), layout="constrained")
    palette = plt.get_cmap("viridis")
    levels = record["levels"]
    if record["search"] == "early-bird":
        for i, level in enumerate(levels):
            curve = record.get("distances", {}).get(str(level["level"]), [])
            color = palette(i / max(1, len(levels) - 1))
            if curve:
                ax.plot(*zip(*curve), "-", color=color, lw=1, label=f"level {level['level']} ({level['sparsity']:.0%})")
            drawn = [d for s, d in curve if s == level["step"]]
            if drawn:
                ax.plot([level["step"]], drawn, "o", color=color, ms=5)
        ax.axhline(record["epsilon"], color="black", ls=":", lw=1, label=f"ε = {record['epsilon']:g}")
        ax.set_yscale("symlog", linthresh=1e-4)
        ax.set_ylabel("mask change since the last check\n(fraction of the weights)")
    else:
        if record.get("schedule"):
            ax.plot(*zip(*[(s, 100 * v) for s, v in record["schedule"]]), "-", color=COLORS["imp"], lw=1.2,
                    label="sparsity of the training mask")
        for level in levels:
            ax.plot([level["step"]], [100 * level["sparsity"]], "o", color="black", ms=4)
            ax.annotate(f"level {level['level']}", (level["step"], 100 * level["sparsity"]), fontsize=7,
                        xytext=(4, -10), textcoords="offset points")
        ax.set_ylabel("sparsity (%)")
    ax.set_xlabel(f"training step (of {record['steps']})")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    return fig
