"""Is it a winning ticket? The paper's two rules applied to a plain table of results over seeds.

A table is plain data:
    {"full": [run, ...], "levels": {sparsity: {"imp": [run, ...], "random-prune": [run, ...], ...}}}
where a run is {metric name: value} for one seed. Sparsity keys may be floats or their strings (as after JSON).

Rules, for a metric where higher is better:
    "1sigma" (the paper's): the ticket's mean >= the full model's mean - its sample std;
    "strict":               the ticket's mean >= the full model's mean.
Metrics whose name contains "loss" or "perplexity" are lower-is-better: the ticket must stay <= the full
mean + std (1sigma) or <= the full mean (strict). Ties win (up to float rounding, see TOLERANCE).

The winning sparsity is the HIGHEST sparsity on the grid whose IMP ticket wins, as in the paper, even when
a lower level loses (a noisy dip); it is not "the last level before the first loss". `verdict` notes such dips.

verdict() returns {"primary": metric, "winning": {metric: {"1sigma": s | None, "strict": s | None}},
"direction": {metric: "higher" | "lower"}, "gaps": {s: {baseline: imp mean - baseline mean}}, "notes": [str]}.
"""
from __future__ import annotations

import statistics

from ..core.errors import LthError

RULES = ("1sigma", "strict")
# Two means of the same values summed in another order can differ in the last bit; that is still a tie.
TOLERANCE = 1e-12
SINGLE_SEED_NOTE = ("only one seed of the full model: its standard deviation is undefined, so the 1σ rule "
                    "cannot be applied; run with --seeds 2 or more")


def lower_is_better(metric: str) -> bool:
    """True for losses and perplexities, False for every other metric."""
    name = metric.lower()
    return "loss" in name or "perplexity" in name


def summarize(runs: list[dict[str, float]]) -> dict[str, dict]:
    """Per metric over the runs: mean, sample standard deviation (None for one run) and n.

    A metric that is undefined (None) in any run has an undefined mean: a collapsed seed is not averaged away."""
    values: dict[str, list] = {}
    for run in runs:
        for metric, value in run.items():
            values.setdefault(metric, []).append(None if value is None else float(value))
    result = {}
    for metric, v in values.items():
        defined = [x for x in v if x is not None]
        if len(defined) < len(v):
            result[metric] = {"mean": None, "std": None, "n": len(v), "undefined": len(v) - len(defined)}
        else:  # statistics.mean/stdev are exactly rounded, so equal runs in any order give equal means
            result[metric] = {"mean": statistics.mean(v), "std": statistics.stdev(v) if len(v) > 1 else None,
                              "n": len(v)}
    return result


def table_levels(table: dict) -> list[tuple[float, dict]]:
    return sorted(((float(s), entry) for s, entry in (table.get("levels") or {}).items()), key=lambda x: x[0])


def full_stats(table: dict, metric: str) -> dict:
    full = summarize(table.get("full") or [])
    if not full:
        raise LthError("the results have no run of the full model, so no ticket can be judged; "
                       "run the full-model baseline (no pruning) first")
    if metric not in full:
        raise LthError(f"the full model's runs have no metric '{metric}' (they have: {', '.join(sorted(full))}); "
                       "pick one of those")
    return full[metric]


def _bar(full: dict, rule: str, lower: bool) -> float | None:
    """The value a ticket must reach (or stay under, for losses); None when the rule is undefined."""
    if rule not in RULES:
        raise LthError(f"unknown rule '{rule}'; use one of: {', '.join(RULES)}")
    if full["mean"] is None:
        return None
    if rule == "strict":
        return full["mean"]
    if full["std"] is None:
        return None
    return full["mean"] + full["std"] if lower else full["mean"] - full["std"]


def _wins(mean: float, bar: float, lower: bool) -> bool:
    slack = TOLERANCE * max(1.0, abs(bar))
    return mean <= bar + slack if lower else mean >= bar - slack


def outcomes(table: dict, metric: str, rule: str) -> dict[float, bool | None]:
    """Per sparsity with an IMP result on `metric`: does the ticket win (None: the rule is undefined)."""
    lower = lower_is_better(metric)
    bar = _bar(full_stats(table, metric), rule, lower)
    result = {}
    for sparsity, entry in table_levels(table):
        imp = summarize(entry.get("imp") or []).get(metric)
        if imp is not None:
            result[sparsity] = None if bar is None else imp["mean"] is not None and _wins(imp["mean"], bar, lower)
    return result


def winning_sparsity(table: dict, metric: str, rule: str) -> float | None:
    """The highest sparsity whose IMP ticket wins under `rule`; None if none wins or the rule is undefined.

    0.0 (not None) means only the dense level on the grid wins."""
    winners = [s for s, won in outcomes(table, metric, rule).items() if won]
    return max(winners) if winners else None


def gaps(table: dict, metric: str) -> dict[float, dict[str, float]]:
    """Per sparsity and baseline: IMP's mean minus the baseline's mean on `metric` (raw, not sign-adjusted)."""
    result = {}
    for sparsity, entry in table_levels(table):
        imp = summarize(entry.get("imp") or []).get(metric)
        if imp is None or imp["mean"] is None:
            continue
        row = {name: imp["mean"] - other["mean"] for name, runs in entry.items() if name != "imp"
               for other in [summarize(runs).get(metric)] if other is not None and other["mean"] is not None}
        if row:
            result[sparsity] = row
    return result


def pct(sparsity: float) -> str:
    """0.6 -> '60%', 0.488 -> '48.8%'."""
    return f"{sparsity * 100:.4g}%"


def _dip_note(table: dict, metric: str, rule: str, winner: float | None) -> str | None:
    if winner is None:
        return None
    lost = [s for s, won in outcomes(table, metric, rule).items() if s < winner and won is False]
    if not lost:
        return None
    return (f"{metric}, {rule} rule: the ticket loses at {', '.join(map(pct, lost))} but wins at {pct(winner)}; "
            "the winning sparsity is the highest winning level on the grid (as in the paper), "
            "not the last level before the first loss")


def _notes(table: dict, primary: str, winning: dict) -> list[str]:
    notes = []
    full = full_stats(table, primary)
    if full["mean"] is None:
        notes.append(f"the full model's {primary} is undefined in {full['undefined']} of its {full['n']} seeds "
                     "(a collapsed model): no ticket can be judged against it on this metric")
    elif full["n"] == 1:
        notes.append(SINGLE_SEED_NOTE)
    notes += [n for rule in RULES if (n := _dip_note(table, primary, rule, winning[primary][rule]))]
    single = [s for s, entry in table_levels(table) if summarize(entry.get("imp") or []).get(primary, {}).get("n") == 1]
    if single:
        notes.append(f"IMP has a single seed at {', '.join(map(pct, single))}: those means are one run each")
    if lower_is_better(primary):
        notes.append(f"lower is better for {primary}: a ticket wins at or below the bar, "
                     "and a negative gap means IMP beats the baseline")
    return notes


def verdict(table: dict, metrics: list[str], primary: str) -> dict:
    """Winning sparsities per metric and rule, IMP's gaps to each baseline on `primary`, and notes."""
    names = list(dict.fromkeys([*metrics, primary]))
    winning = {m: {rule: winning_sparsity(table, m, rule) for rule in RULES} for m in names}
    return {"primary": primary, "winning": winning,
            "direction": {m: "lower" if lower_is_better(m) else "higher" for m in names},
            "gaps": gaps(table, primary), "notes": _notes(table, primary, winning)}
