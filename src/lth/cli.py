"""The `lth` command: subcommands over the Python API, one clear line for every bad input.

Each command imports what it runs when it runs (the report needs matplotlib, speed the kernels...), so `lth --help`
and a mistyped flag answer without loading them."""
from __future__ import annotations

import argparse
import errno
import os
import sys
from dataclasses import MISSING, fields
from pathlib import Path

from .core.errors import LthError, short_reason
from .run.settings import FindSettings, check_flags, find_settings


def _flag_type(annotation: str):
    """'int | None' -> int, 'list[str]' -> str ... (annotations are strings under __future__)."""
    for name, kind in (("int", int), ("float", float)):
        if annotation.startswith(name):
            return kind
    return str


def add_settings_flags(parser: argparse.ArgumentParser, cls=FindSettings, skip: tuple = ()) -> None:
    """One flag per settings field; flags not given stay absent, so presets can fill them."""
    for f in fields(cls):
        if f.name in skip:
            continue
        default = f.default if f.default is not MISSING else f.default_factory()
        extra = {"choices": f.metadata["choices"]} if "choices" in f.metadata else {}
        if str(f.type).startswith("list"):
            extra["action"] = "append"
        if str(f.type) == "bool":  # a switch: given means True
            parser.add_argument("--" + f.name.replace("_", "-"), dest=f.name, action="store_true",
                                default=argparse.SUPPRESS, help=f.metadata["help"])
            continue
        text = f.metadata["help"]
        if default not in (None, []) and "default" not in text:
            text += f" (default: {default})"
        parser.add_argument("--" + f.name.replace("_", "-"), dest=f.name, type=_flag_type(str(f.type)),
                            default=argparse.SUPPRESS, help=text, **extra)


class Parser(argparse.ArgumentParser):
    """argparse with its errors on one line, like every other error of lth."""

    def error(self, message: str):
        self.exit(2, f"lth: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="lth", description="Find, test and ship lottery tickets in "
                                     "pre-trained language models.")
    sub = parser.add_subparsers(dest="command", required=True)
    find = sub.add_parser("find", help="search for a ticket with iterative magnitude pruning and rewinding",
                          description="Fine-tune, prune by magnitude, rewind, repeat; prints a table of "
                          "level, sparsity and metrics. Rerunning the same command resumes. Without "
                          "--task: the offline demo (MiniLM on BBC News, 1 epoch a level, 30% of the "
                          "remaining weights a level, to 66% sparsity); any flag given overrides it.")
    add_settings_flags(find)
    find.add_argument("--list-units", action="store_true", help="print every unit of the run (its id, and whether "
                      "it is done, ready, or waiting for inputs) and train nothing")
    find.add_argument("--unit", help="train this one unit (an id from --list-units) and stop: for a scheduler's "
                      "job array; it waits for its inputs, and a unit another process holds is left to it")
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
    move = sub.add_parser("transfer", help="train a ticket found on one task on others, and judge it",
                          description="Trains each source's mask on each --task from that task's θ0 with its "
                          "recipe (the same flags as find), next to the task's full model and random masks of "
                          "the same sparsity, with N seeds; prints each verdict and the matrix of sources x tasks. "
                          "Transfers are branches of the task's run: rerunning resumes.")
    move.add_argument("sources", nargs="+", metavar="SOURCE",
                      help="a run directory made by lth find (choose its levels with --level or --sparsity), "
                      "or a mask .safetensors file")
    move.add_argument("--task", required=True, help="target task(s), comma-separated: GLUE names, squad, or "
                      "your own .csv/.tsv/.jsonl file (as in find)")
    move.add_argument("--level", help="the source runs' levels to transfer, e.g. 3 or 2,3")
    move.add_argument("--sparsity", help="or sparsities: each picks the source level nearest to it, e.g. 0.5,0.7")
    move.add_argument("--json", dest="json_path", help="also write the matrix to this JSON file")
    add_settings_flags(move, skip=("task", "levels", "baselines", "max_sparsity"))
    ship = sub.add_parser("export", help="write a level's ticket, trained model, compact model (and ONNX)",
                          description="Writes ticket.safetensors (the mask, one bit a weight, with its base model's "
                          "fingerprint), model/ (a plain Hugging Face folder), compact/ (only the surviving weights) "
                          "and ticket.json; the level is trained again from the run to get its weights.")
    ship.add_argument("run", help="a run directory made by lth find")
    ship.add_argument("--level", type=int, help="the level to export")
    ship.add_argument("--sparsity", type=float, help="or the finished level nearest to this sparsity")
    ship.add_argument("--to", required=True, help="the folder to write")
    ship.add_argument("--fp16", action="store_true", help="store the compact model in fp16 (half the size)")
    ship.add_argument("--onnx", action="store_true", help="also write model.onnx, checked with ONNX Runtime")
    ship.add_argument("--threads", type=int, help="torch threads (default: all cores)")
    ship.add_argument("--force", action="store_true", help="replace another export (or other files) in --to, or write this one again (e.g. to measure "
                      "what a newer lth measures)")
    ship.add_argument("--speed", action="store_true", help="also time the ticket on this machine against the dense "
                      "engines (as lth speed does, 5 rounds) and put the result in ticket.json and the model card")
    look = sub.add_parser("inspect", help="what an artifact is, and its density per layer",
                          description="Describes an export folder, ticket.safetensors, a compact model, a model "
                          "folder, model.onnx, a run's mask.safetensors or a run directory.")
    look.add_argument("path")
    clock = sub.add_parser("speed", help="how fast an exported ticket runs here, against the dense engines",
                           description="Times lth's engine (sparse kernels where they pay, bf16 where native) "
                           "against torch fp32 and bf16, ONNX Runtime and OpenVINO (where installed), interleaved, "
                           "at batch x 128 tokens and 1 x 128; prints medians and ratios. With --data, also every "
                           "engine's dev metric.")
    clock.add_argument("export", help="a folder written by lth export")
    clock.add_argument("--batch-size", type=int, default=32)
    clock.add_argument("--length", type=int, default=128)
    clock.add_argument("--repeats", type=int, default=10)
    clock.add_argument("--threads", type=int, help="threads for every engine (default: all cores)")
    clock.add_argument("--data", help="the ticket's task data (the GLUE folder; for the bbc demo, any value): also "
                       "score every engine on its dev set, OpenVINO int8 calibrated on 100 of its training sentences")
    label = sub.add_parser("predict", help="label a file of texts with an exported classifier, on the fast engine")
    label.add_argument("export", help="a folder written by lth export")
    label.add_argument("--input", required=True, help="a .csv, .tsv or .jsonl file")
    label.add_argument("--output", required=True, help="the TSV to write: row, label, scores")
    label.add_argument("--text-column", default="text")
    label.add_argument("--text-pair-column")
    label.add_argument("--batch-size", type=int, default=64)
    label.add_argument("--max-length", type=int, help="truncate inputs at this many tokens (default: the length the "
                       "ticket was trained and evaluated with, recorded in ticket.json)")
    for engine in (clock, label):
        engine.add_argument("--precision", choices=["auto", "bf16", "fp32", "int8"], default="auto",
                            help="the engine's: bf16 where the CPU has it natively (auto), or as given; fp32 gives "
                            "the exported model's outputs")
    share = sub.add_parser("push", help="upload an export to the Hugging Face Hub (online)",
                           description="Uploads exactly the files lth inspect verifies (ticket, model/, compact/, "
                           "model.onnx, ticket.json) and the model card as the repository's README.md.")
    share.add_argument("export", help="a folder written by lth export")
    share.add_argument("--repo", required=True, help="the Hub repository, owner/name (created if missing)")
    share.add_argument("--private", action="store_true", help="create the repository private")
    share.add_argument("--token", help="a Hugging Face token (default: the one `hf auth login` stored)")
    share.add_argument("--message", help="the commit message")
    show = sub.add_parser("report", help="one self-contained HTML page of runs, verdicts and transfers",
                          description="Writes TO/index.html (opens offline, figures inline) with, per run: the "
                          "recipe, metric against sparsity, the verdict, density per layer, mask overlaps, "
                          "transfers and training losses; and TO/figures (SVG, PNG) and TO/tables (CSV, LaTeX).")
    show.add_argument("runs", nargs="+", metavar="RUN", help="run directories made by lth find")
    show.add_argument("--to", required=True, help="the folder to write")
    return parser


def cmd_find(args) -> None:
    from .search.find import find

    given = {k: v for k, v in vars(args).items() if k not in ("command", "unit", "list_units")}
    find(find_settings(**given), unit=args.unit, list_units=args.list_units)


def cmd_transfer(args) -> None:
    from .search.transfer import transfer

    given = {k: v for k, v in vars(args).items() if k not in ("command", "sources", "task", "level", "sparsity",
                                                             "json_path")}
    transfer(args.sources, args.task, args.level, args.sparsity, args.json_path, **given)


def cmd_prunable(args) -> None:
    from .core.models import load_model, prunable_weights

    model = load_model(args.model, "classification", seed=0, num_labels=2)
    weights = prunable_weights(model, args.include or [], args.exclude or [])
    if args.verbose:
        for name, w in weights.items():
            print(f"{name}  {tuple(w.shape)}  {w.numel():,}")
    total = sum(w.numel() for w in weights.values())
    params = sum(p.numel() for p in model.parameters())
    print(f"{len(weights)} matrices, {total:,} prunable weights ({total / params:.1%} of {params:,} parameters)")


def cmd_verdict(args) -> None:
    from .core.files import DamagedFile
    from .report.tables import cost_table, verdict_table
    from .run.costs import time_to_ticket
    from .run.plan import Plan
    from .run.records import check_run
    from .run.summary import read_results, read_settings

    run = Path(args.run)
    info = read_settings(run)
    if "primary" not in info:
        raise LthError(f"{run} was made by an older lth that did not record the task's metrics; run the same "
                       "lth find command again (nothing finished is retrained) and then lth verdict")
    metric = args.metric or info["primary"]
    if metric not in info["metrics"]:
        raise LthError(f"--metric {metric}: this task reports {', '.join(info['metrics'])}; pick one of those")
    try:
        check_run(run)
    except DamagedFile as damage:  # the table needs only the records; say what else is damaged, and go on
        if damage.path.name == "metrics.json":
            raise
        print(f"lth: warning: {damage}", file=sys.stderr)
    found = read_results(run, info["metrics"], info["primary"], info["settings"]["seed"], info.get("judged_levels") or [])
    print(verdict_table(found.table, info["metrics"], metric, info["settings"].get("search", "imp")))
    costs = time_to_ticket(Plan(FindSettings(**info["settings"]), run))
    if costs:
        print()
        print(cost_table(costs, found.table, metric))


def cmd_export(args) -> None:
    from .search.export import export

    export(args.run, args.to, args.level, args.sparsity, args.fp16, args.onnx, args.threads, args.force, args.speed)


def cmd_inspect(args) -> None:
    from .artifacts.inspect import inspect

    print(inspect(args.path))
    export = Path(args.path).expanduser()
    if (export / "ticket.json").is_file() and (export / "model").is_dir():
        from .engine.engine import choose_precision

        precision, why = choose_precision(export)
        print(f"on this machine lth.load_fast and lth predict/speed run it in {precision}: {why}")


def cmd_speed(args) -> None:
    import torch
    from transformers import AutoTokenizer

    from .artifacts.hf import reload_hf
    from .core.files import load_json
    from .core.models import position_limit
    from .engine.bench import compare, engines, inputs, table
    from .engine.engine import load_fast
    from .engine.kernels import backend
    from .search.devspeed import calibration_batches, dev_metrics, metrics_table, ticket_task

    threads = args.threads or os.cpu_count() or 1
    torch.set_num_threads(threads)
    fast = load_fast(args.export, args.precision)
    if args.length > (limit := position_limit(fast.model)):
        raise LthError(f"--length {args.length} is beyond what {args.export} takes ({limit} tokens, its position "
                       f"embeddings); use --length {limit} or less")
    dense = reload_hf(fast.model.name_or_path, type(fast.model).__name__)
    print(f"sparse kernel: {backend()[1]}; {threads} threads, median of {args.repeats} interleaved rounds")
    print(f"lth's engine runs in {fast.precision}: {fast.why}")
    sample = inputs(dense.config, 2, 16)
    calibration = task = None
    if args.data is not None:  # before any timing: a wrong --data is named at once
        task = ticket_task(Path(args.export).expanduser(), args.data)
        tokenizer = AutoTokenizer.from_pretrained(fast.model.name_or_path)
        length = load_json(Path(args.export).expanduser() / "ticket.json").get("recipe", {}).get("max_length", 128)
        calibration = calibration_batches(task, tokenizer, length, list(sample))
    runs = engines(dense, fast, sample, threads, calibration)
    results = compare(dense, fast, [(args.batch_size, args.length), (1, args.length)], args.repeats, threads,
                      runs=runs)
    print(table(results))
    if task is not None:
        print(metrics_table(dev_metrics(runs, task, tokenizer, length, list(sample)), task))
        if "openvino int8 (nncf)" in runs:
            print(f"openvino int8 (nncf) was calibrated on {len(calibration)} training sentences of the task")
    elif "openvino int8 (nncf)" in runs:
        print("openvino int8 (nncf) was calibrated on random token ids: its speed is a user's, its outputs are not "
              "(--data scores every engine on the dev set, calibrated on the task's own sentences)")


def cmd_predict(args) -> None:
    from .engine.predict import predict_file

    rows = predict_file(args.export, args.input, args.output, args.text_column, args.text_pair_column,
                        args.batch_size, args.precision, args.max_length)
    print(f"{rows} rows labelled: {args.output}")


def cmd_push(args) -> None:
    from .artifacts.hub import push

    print(f"pushed {args.export} to {args.repo}: {push(args.export, args.repo, args.private, args.token, args.message)}")


def cmd_report(args) -> None:
    from .report.html import report

    print(f"report written to {report(args.runs, args.to)}")


COMMANDS = {"find": cmd_find, "prunable": cmd_prunable, "verdict": cmd_verdict, "transfer": cmd_transfer,
            "export": cmd_export, "inspect": cmd_inspect, "report": cmd_report, "speed": cmd_speed,
            "predict": cmd_predict, "push": cmd_push}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        check_flags(vars(args))
        COMMANDS[args.command](args)
    except LthError as e:
        print(f"lth: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\nlth: interrupted; run the same command again to resume from the last checkpoint",
              file=sys.stderr)
        return 130
    except OSError as e:  # the file layer turns its own into LthError; this is any other file lth touched
        print(f"lth: error: {os_error_line(e)}", file=sys.stderr)
        return 2
    except Exception as e:  # a bug, not the user's input: one line, the traceback on request
        if os.environ.get("LTH_DEBUG"):
            raise
        print(f"lth: internal error: {short_reason(e)}; this is a bug in lth: rerun with LTH_DEBUG=1 for the "
              "traceback and report it (finished work in the run directory is kept)", file=sys.stderr)
        return 3
    return 0


def os_error_line(e: OSError) -> str:
    where = f"{e.filename}: " if e.filename else ""
    if e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        fix = "check the permissions, or choose another folder (--runs-dir)"
    elif e.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        fix = "free some space, then rerun the same command: finished work is kept"
    else:
        fix = "check the path"
    return f"{where}{e.strerror or short_reason(e)}; {fix}"


if __name__ == "__main__":
    sys.exit(main())
