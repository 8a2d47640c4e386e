"""The model card of an export (model/README.md, the Hugging Face format: YAML metadata, then text): what the
ticket is, how sparse, how well each exported form scores, whether it is a winning ticket, how to make it again,
and the licence it inherits from its base."""
from __future__ import annotations

from pathlib import Path

from huggingface_hub import EvalResult, ModelCard, ModelCardData

from ..report.tables import mean_std, pct

TAGS = ["lth", "lottery-ticket", "pruned", "sparse"]


def base_licence(base: str) -> str:
    """The licence in the base model's own card (a local folder), else 'unknown'."""
    card = Path(base) / "README.md"
    if card.is_file():
        try:
            return ModelCard.load(card).data.to_dict().get("license") or "unknown"
        except Exception:  # a README that is no model card: the licence is not known
            return "unknown"
    return "unknown"


def verdict_lines(judged: dict | None, primary: str) -> list[str]:
    """The verdict of the exported level against the full model, plainly; `judged`: its row, or None."""
    if judged is None:
        return ["This level was not judged against the full model (no seeds or baselines at it): it is a candidate, "
                "not a proven winning ticket. `lth find ... --seeds 3 --baselines random-prune --levels N` judges it."]
    wins = {"1sigma": "**a winning ticket** (within one standard deviation of the full model's mean)",
            "strict": "**a winning ticket** (at or above the full model's mean)"}
    rule = "strict" if judged["strict"] else "1sigma" if judged["1sigma"] else None
    lines = [f"- full model ({primary}): {mean_std(judged['full'])}",
             f"- this ticket, over seeds: {mean_std(judged['ticket'])}"]
    lines += [f"- {name}: {mean_std(stats)}" for name, stats in judged["baselines"].items()]
    lines.append(f"At this sparsity it is {wins[rule]}." if rule else
                 "At this sparsity it is **not a winning ticket**: its mean is more than one standard deviation below "
                 "the full model's.")
    return lines


def speed_section(speed: dict | None) -> str:
    """The speed measured at export (`lth export --speed`), against the fastest dense engine of the same run."""
    if not speed:
        return ""
    lines = [f"## Speed measured at export ({speed['threads']} threads, median of {speed['repeats']} interleaved "
             f"rounds, lth's engine in {speed['precision']})", "", "| batch x tokens | lth | fastest dense engine | "
             "lth's speed-up |", "|---|---|---|---|"]
    for shape, engines in speed["shapes"].items():
        dense = {k: v["seconds"] for k, v in engines.items() if not k.startswith("lth")}
        mine = next(v["seconds"] for k, v in engines.items() if k.startswith("lth"))
        best = min(dense, key=dense.get)
        lines.append(f"| {shape} | {mine * 1e3:.2f} ms | {best}: {dense[best] * 1e3:.2f} ms | {dense[best] / mine:.2f}x |")
    return "\n".join(lines) + "\n\nMeasured on the machine that exported the ticket: rerun `lth speed` on yours.\n\n"


def write_card(folder: Path, result: dict, density: dict[str, float], judged: dict | None, commands: list[str]) -> str:
    """Write folder/README.md from what the export measured (`result`: ticket.json's content so far)."""
    primary = next(iter(result["metrics"]["run"]))
    results = [EvalResult(task_type="text-classification" if result["head"].endswith("Classification") else
                          "question-answering" if "Question" in result["head"] else "fill-mask",
                          dataset_type=result["task"], dataset_name=result["task"], metric_type=name,
                          metric_value=value, metric_name=f"{name} ({form})")
               for form, values in result["metrics"].items() for name, value in values.items() if value is not None]
    data = ModelCardData(base_model=result["base_name"], license=base_licence(result["base_name"]), tags=TAGS,
                         model_name=f"{Path(result['base_name']).name} {result['task']} ticket, "
                                    f"{pct(result['sparsity'])} sparse", eval_results=results)
    metrics = "\n".join(f"| {form} | " + ", ".join(f"{k} {v:.4f}" for k, v in values.items() if v is not None) + " |"
                        for form, values in result["metrics"].items())
    text = f"""---
{data.to_yaml()}
---

# A lottery ticket of {result['base_name']} for {result['task']}, {pct(result['sparsity'])} sparse

Found by lth with iterative magnitude pruning and rewinding (Chen et al., NeurIPS 2020):
{pct(result['sparsity'])} of the encoder's prunable weights are exact zeros; the rest was trained from the
pre-trained weights. Level {result['level']} of the run `{result['run']}`. Base fingerprint
`{result['base_fingerprint']}` (of its pre-trained prunable weights; `lth.apply_ticket` checks it).

## Density by matrix type (share of weights kept)

{chr(10).join(f"- {name}: {value:.1%}" for name, value in density.items())}

## Dev metrics of every exported form

| form | metrics |
|---|---|
{metrics}

## Is it a winning ticket?

{chr(10).join(verdict_lines(judged, primary))}

{speed_section(result.get("speed"))}## How it was made

Recipe: {", ".join(f"{k} {v}" for k, v in result['recipe'].items() if v is not None)}; schedule:
{", ".join(f"{k} {v}" for k, v in result['schedule'].items())}.

```bash
{chr(10).join(commands)}
```

Licence: {data.license}, as the base model's card states (`unknown` where lth could not read it).
"""
    card = ModelCard(text)
    (folder / "README.md").write_text(str(card))
    return str(card)
