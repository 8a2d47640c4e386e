"""The `lth` command: subcommands over the Python API, one clear line for every bad input."""
from __future__ import annotations

import argparse
import sys
from dataclasses import MISSING, fields

from .config import FindSettings, find_settings
from .errors import LthError


def _flag_type(annotation: str):
    """'int | None' -> int, 'list[str]' -> str ... (annotations are strings under __future__)."""
    for name, kind in (("int", int), ("float", float)):
        if annotation.startswith(name):
            return kind
    return str


def add_settings_flags(parser: argparse.ArgumentParser, cls=FindSettings) -> None:
    """One flag per settings field; flags not given stay absent, so presets can fill them."""
    for f in fields(cls):
        default = f.default if f.default is not MISSING else f.default_factory()
        extra = {"choices": f.metadata["choices"]} if "choices" in f.metadata else {}
        if str(f.type).startswith("list"):
            extra["action"] = "append"
        parser.add_argument("--" + f.name.replace("_", "-"), dest=f.name, type=_flag_type(str(f.type)),
                            default=argparse.SUPPRESS, help=f"{f.metadata['help']} (default: {default})",
                            **extra)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lth", description="Find, test and ship lottery tickets in "
                                     "pre-trained language models.")
    sub = parser.add_subparsers(dest="command", required=True)
    find = sub.add_parser("find", help="search for a ticket with iterative magnitude pruning and rewinding",
                          description="Fine-tune, prune by magnitude, rewind, repeat; prints a table of "
                          "level, sparsity and metrics. Rerunning the same command resumes. Without "
                          "--task: the offline demo (MiniLM on BBC News, 1 epoch a level, 30%% of the "
                          "remaining weights a level, to 66%% sparsity); any flag given overrides it.")
    add_settings_flags(find)
    prunable = sub.add_parser("prunable", help="list the weights a search would prune")
    for name in ("model", "include", "exclude"):
        f = next(f for f in fields(FindSettings) if f.name == name)
        kw = {"action": "append"} if name != "model" else {"default": "minilm"}
        prunable.add_argument("--" + name, help=f.metadata["help"], **kw)
    prunable.add_argument("--verbose", action="store_true", help="one line per weight matrix")
    judge = sub.add_parser("verdict", help="is it a winning ticket? the table of a run's seeds and baselines",
                           description="Reads a run directory (finished or not) and prints, for each judged "
                           "level, the full model's and the IMP ticket's mean ± std and every baseline's, "
                           "with the winning sparsity under the paper's 1σ rule and the strict rule.")
    judge.add_argument("run", help="a run directory made by lth find (runs/<task>-<model>-<hash>)")
    judge.add_argument("--metric", help="the metric of the table (default: the task's primary metric)")
    return parser


def cmd_find(args) -> None:
    from .imp import find

    given = {k: v for k, v in vars(args).items() if k != "command"}
    find(find_settings(**given))


def cmd_prunable(args) -> None:
    from .models import load_model, prunable_weights

    model = load_model(args.model, "classification", seed=0, num_labels=2)
    weights = prunable_weights(model, args.include or [], args.exclude or [])
    if args.verbose:
        for name, w in weights.items():
            print(f"{name}  {tuple(w.shape)}  {w.numel():,}")
    total = sum(w.numel() for w in weights.values())
    params = sum(p.numel() for p in model.parameters())
    print(f"{len(weights)} matrices, {total:,} prunable weights ({total / params:.1%} of {params:,} parameters)")


def cmd_verdict(args) -> None:
    from pathlib import Path

    from .runs import collect_results, load_json
    from .verdict import format_verdict_table

    run = Path(args.run)
    if not (run / "settings.json").is_file():
        raise LthError(f"{run} is not a run directory (it has no settings.json); give a folder that lth find "
                       "printed as 'run directory', e.g. runs/mrpc-minilm-1a2b3c4d5e")
    info = load_json(run / "settings.json")
    if "primary" not in info:
        raise LthError(f"{run} was made by an older lth that did not record the task's metrics; run the same "
                       "lth find command again (nothing finished is retrained) and then lth verdict")
    metric = args.metric or info["primary"]
    if metric not in info["metrics"]:
        raise LthError(f"--metric {metric}: this task reports {', '.join(info['metrics'])}; pick one of those")
    results = collect_results(run, info["settings"]["seed"], info.get("judged_levels"))
    print(format_verdict_table(results, info["metrics"], metric))


COMMANDS = {"find": cmd_find, "prunable": cmd_prunable, "verdict": cmd_verdict}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        COMMANDS[args.command](args)
    except LthError as e:
        print(f"lth: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\nlth: interrupted; run the same command again to resume from the last checkpoint",
              file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
