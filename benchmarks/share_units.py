"""Copy finished full-model seeds and random-prune units between runs whose units are the same computation: the
same θ0 (init_sha256), data fingerprint and recipe, no --distill, differing only in --search (how the trunk's masks
are drawn, which neither kind uses), so that comparing searches does not train them once per search. A random mask
is copied only to a run that judges its level. tests/test_benchmarks.py checks that a copied unit is what the other
run trains itself.

    python benchmarks/share_units.py runs/mrpc-minilm-68712df352 runs/mrpc-minilm-d2a409b9c8 ...   (every way)
"""
import json
import shutil
import sys
from pathlib import Path

SAME = ("lr", "epochs", "batch_size", "weight_decay", "warmup", "seed", "precision", "max_length", "schedule", "rate",
        "strategy", "include", "exclude", "rewind_step", "model", "task", "train_limit", "eval_limit", "fast_dropout",
        "steps", "head_warmup")
runs = [Path(r) for r in sys.argv[1:]]
info = {r: json.loads((r / "settings.json").read_text()) for r in runs}


def key(run: Path) -> tuple:
    return (info[run]["init_sha256"], info[run]["data_fingerprint"],
            tuple(str(info[run]["settings"].get(k)) for k in SAME))


if len({key(r) for r in runs}) != 1:
    sys.exit("the runs differ in θ0, data or recipe: their units are not the same computation")
if any(info[r]["settings"].get("distill") for r in runs):
    sys.exit("a --distill run's units learn from its own teacher: they are not shared")
for src in runs:
    for unit in sorted(src.glob("branches/*/seed_*/level_*/metrics.json")):
        kind = unit.parts[-4]
        if kind not in ("full", "random-prune"):
            continue
        rel = unit.parent.relative_to(src)
        for dst in runs:
            level = int(rel.name.split("_")[1])
            if kind == "random-prune" and level not in info[dst].get("judged_levels", []):
                continue  # not a level that run judges
            if dst != src and not (dst / rel / "metrics.json").exists() and not (dst / rel / "checkpoint.pt").exists():
                (dst / rel).mkdir(parents=True, exist_ok=True)
                for name in ("train_loss.json", "metrics.json"):  # metrics.json last: it marks the unit done
                    shutil.copy2(src / rel / name, dst / rel / name)
                print(f"{src.name}/{rel} -> {dst.name}")
