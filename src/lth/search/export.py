"""`lth export`: a level of a run as files a user keeps, shares and loads without lth.

    ticket.safetensors   the mask alone, one bit per prunable weight (xz-compressed when smaller), with what it is
    model/               the trained ticket as a plain Hugging Face folder (pruned weights are exact zeros)
    compact/             the same model storing only the surviving weights and the bit masks (lth.load_compact)
    model.onnx           with --onnx: the trained ticket for serving
    ticket.json          what was exported, file sizes, and the dev metrics of the exported files

The trained weights come from the run: the level is trained again from the run's rewind point, mask, recipe
and seed (deterministic, so it reproduces the run's own training; the export checks that its metrics equal the
level's recorded ones) and kept as level_NN/final.safetensors, so a second export is immediate."""
from __future__ import annotations

import shlex
from pathlib import Path

import torch

from ..artifacts.card import write_card
from ..artifacts.compact import load_compact, save_compact
from ..artifacts.hf import keep_sentence_transformers, reload_hf, save_hf_folder
from ..artifacts.manifest import CHECKPOINT, RECORD, verify
from ..artifacts.manifest import read_record as read_export
from ..artifacts.onnx import export_onnx
from ..artifacts.sizes import export_report, sizes
from ..artifacts.ticket import save_ticket
from ..core import masks
from ..core.console import say
from ..core.devices import auto_precision
from ..core.errors import LthError
from ..core.files import save_json, share
from ..core.fingerprints import base_fingerprint, combined
from ..core.models import HEADS, resolve_model
from ..core.tensors import load_into, load_tensors, save_model
from ..core.version import __version__
from ..engine.bench import compare
from ..engine.engine import load_fast
from ..engine.quads import quad_kernel
from ..report.tables import pct
from ..run.layout import DRAW_RECORD, level_dir
from ..run.records import read_record
from ..run.settings import FindSettings, check_number
from ..run.summary import read_results, read_settings
from ..run.verdict import outcomes, summarize
from .search import Search, open_search


def export(run: str | Path, to: str | Path, level: int | None = None, sparsity: float | None = None,
           fp16: bool = False, onnx: bool = False, threads: int | None = None, force: bool = False,
           speed: bool = False) -> dict:
    """Write a level's ticket, trained model, compact model (and ONNX model); returns what ticket.json holds.

    The run is only read (the level's kept weights, final.safetensors, are the one file written into it). `to`
    already holding this export, complete and intact, is left as it is; holding another export or other files, it
    is refused unless `force`."""
    run, to = Path(run).expanduser(), Path(to).expanduser()
    info = read_settings(run)
    if sparsity is not None:
        check_number("--sparsity", sparsity, (float, lambda v: 0 <= v < 1, "in [0, 1), e.g. 0.7"))
    level = choose_level(run, level, sparsity)
    record = read_record(level_dir(run, level) / "metrics.json")
    identity = {"run": run_identity(info), "level": level}
    options = {"fp16": fp16, "onnx": onnx, "speed": speed}
    kept = existing_export(to, identity, options, force)
    if kept is not None:
        print(f"{to} already holds this export (level {level} of {run.name}), complete and intact: nothing to do")
        return kept
    settings = FindSettings(**{"head_warmup": 0, **info["settings"], "levels": None, "baselines": None, "seeds": None,
                               **({"threads": threads} if threads else {})})
    search = open_search(settings, judging=False, at=run)
    mask = search.masks.level(level)
    to.mkdir(parents=True, exist_ok=True)
    metrics = trained(search, level, record, to / CHECKPOINT)
    (to / RECORD).unlink(missing_ok=True)  # until the new one is written, the folder reads as an incomplete export
    about = describe(search, level, record)
    save_ticket(mask, to / "ticket.safetensors", about)
    head = HEADS[search.task.head]
    save_hf_folder(search.model, search.tokenizer, to / "model", search.task.label_names)
    base = Path(resolve_model(search.s.model))
    if base.is_dir() and keep_sentence_transformers(base, to / "model"):
        say("the base is a Sentence-Transformers model: its modules are kept in model/, so "
            "SentenceTransformer(model/) loads the pruned encoder")
    dtype = torch.float16 if fp16 else torch.float32
    save_compact(search.model, mask, to / "compact" / "compact.safetensors", dtype, dict(about))
    search.model.config.save_pretrained(to / "compact")
    search.tokenizer.save_pretrained(to / "compact")
    share(to / "compact")
    if onnx:
        onnx_check = export_onnx(search.model, next(iter(search.evals.values())), search.pad_id, to / "model.onnx")
    else:
        (to / "model.onnx").unlink(missing_ok=True)  # an earlier export's, with --onnx
    result = {**about, "export": {**identity, **options}, "head": head, "files": {},
              "metrics": {"run": record["metrics"], "retrained": metrics}}
    result["metrics"]["model"] = search.evaluate("exported model", reload_hf(to / "model", head))
    result["metrics"][f"compact ({'fp16' if fp16 else 'fp32'})"] = search.evaluate("compact", load_compact(to / "compact"))
    engine = fast_engine(search, to, result["metrics"]["model"])
    for key, measured in (("fast_engine", engine), ("int8_engine", fast_engine(
            search, to, result["metrics"]["model"], "int8", INT8_TOLERANCE_POINTS) if quad_kernel() else None)):
        if measured is not None:
            result[key] = measured
            if "metrics" in measured:
                result["metrics"][f"fast engine ({measured['precision']})"] = measured["metrics"]
    if onnx:
        result["onnx"] = onnx_check
    if speed and "metrics" in (engine or {}):
        result["speed"] = timed(to, head, search.s.max_length, threads or torch.get_num_threads())
    result["sparsity"] = masks.sparsity(mask)
    write_card(to / "model", result, masks.type_density(mask), judged_at(search, result["sparsity"]),
               reproduce(search, level, to))
    result["files"] = sizes(to, mask, search.model, dtype)
    save_json(result, to / RECORD)
    print(export_report(result, to, TOLERANCE_POINTS))
    return result


def timed(to: Path, head: str, length: int, threads: int, repeats: int = 5) -> dict:
    """The exported ticket on lth's engine against the dense engines here (`lth speed`), at batch 32 and 1."""
    fast, dense = load_fast(to), reload_hf(to / "model", head)
    shapes = compare(dense, fast, [(32, length), (1, length)], repeats, threads)
    return {"threads": threads, "repeats": repeats, "precision": fast.precision, "shapes": shapes}


def judged_at(search: Search, sparsity: float) -> dict | None:
    """The verdict at the exported level for the card: the full model, the ticket over seeds and each baseline on
    the primary metric, and whether it wins; None where the level has no seeds on disk or the full model one seed."""
    primary = search.task.primary
    found = read_results(search.run, search.task.metric_names, primary, search.seeds[0], search.judged)
    row, key = found.table["levels"].get(f"{sparsity:.6f}"), float(f"{sparsity:.6f}")
    full = summarize(found.table["full"]).get(primary)
    if not row or not full or full["n"] < 2:
        return None
    stats = {name: summarize(runs).get(primary) for name, runs in row.items()}
    return {"full": full, "ticket": stats.pop("imp"), "baselines": stats,
            **{rule: outcomes(found.table, primary, rule).get(key) for rule in ("1sigma", "strict")}}


def reproduce(search: Search, level: int, to: Path) -> list[str]:
    """The commands that make this export again: the search (the settings that change results, the data as it
    was given, how far it went) and the export."""
    s = search.s
    given = {**s.hashed(), "data": s.data, "eval": s.eval, "max_sparsity": s.max_sparsity}
    words = ["lth", "find"]
    for name, value in given.items():
        flag = "--" + name.replace("_", "-")
        if value is None or value is False:
            continue
        values = value if isinstance(value, list) else [value]
        words += [flag] if value is True else [w for v in values for w in (flag, shlex.quote(str(v)))]
    return [" ".join(words), f"lth export runs/{search.name} --level {level} --to {shlex.quote(to.name)}"]


def run_identity(info: dict) -> dict:
    """What identifies a run wherever its folder is: the settings that change results, the data and θ0."""
    return {key: info.get(key) for key in ("settings_digest", "data_fingerprint", "init_sha256")}


def existing_export(to: Path, identity: dict, options: dict, force: bool) -> dict | None:
    """ticket.json's content when `to` already holds this export with these options, complete and intact (nothing
    to do, unless `force`); None when the export is to be written; refused when `to` holds something else and not
    `force`."""
    if not to.exists() or not any(to.iterdir()):
        return None
    if not to.is_dir():
        raise LthError(f"--to {to} is a file; give a folder (new, or an earlier export of the same level)")
    if not (to / RECORD).is_file():
        if force or any((to / name).exists() for name in ("ticket.safetensors", "model", "compact", CHECKPOINT)):
            return None  # an interrupted export: written again
        raise LthError(f"--to {to} is not empty and holds no lth export; choose a new or empty folder, or pass --force "
                       "to write the export into it")
    try:
        info = read_export(to)
    except LthError:
        return None  # a damaged ticket.json: the export is written again
    previous = info.get("export", {})
    same = {k: previous.get(k) for k in identity} == identity
    if not same and not force:
        raise LthError(f"--to {to} holds another export (level {info.get('level')} of {info.get('run')}); choose "
                       "another folder, or pass --force to replace it")
    if same and {k: previous.get(k) for k in options} == options and not force:  # --force: write it again
        try:
            verify(to)
            return info
        except LthError as damage:
            say(f"note: {damage}; writing the export again")
    return None


TOLERANCE_POINTS = 0.2  # how far bf16 may move the dev metric before the engine runs the ticket in fp32
INT8_TOLERANCE_POINTS = 0.5  # how far int8 may move it before 'auto' leaves int8 out


def fast_engine(search: Search, to: Path, exported: dict[str, float], precision: str | None = None,
                tolerance: float = TOLERANCE_POINTS) -> dict | None:
    """The dev metrics of lth's fast engine (`load_fast` in `precision`; by default bf16 where the CPU has it) on the
    export, and how many points its primary metric lies from the exported model's; None where the task's own forward
    reaches inside the model (masked-LM), which the engine does not wrap."""
    if search.task.forward is not None:
        return None
    try:  # the precision 'auto' picks on this CPU before any measurement (an older ticket.json could sway it)
        engine = load_fast(to, precision or auto_precision(torch.device("cpu")))
        metrics = search.evaluate(f"fast engine ({engine.precision})", engine)
    except Exception as exc:  # a secondary measurement: the export stands without it, and says why
        return {"error": f"{type(exc).__name__}: {str(exc).strip()[:200]}"}
    primary = search.task.primary
    moved = (metrics[primary] - exported[primary]) * (1 if search.task.percent else 100)
    return {"precision": engine.precision, "metrics": metrics, "primary": primary, "moves_points": moved,
            "tolerance_points": tolerance, "within_tolerance": abs(moved) <= tolerance + 1e-9}


def choose_level(run: Path, level: int | None, sparsity: float | None) -> int:
    done = {read_record(p)["level"]: read_record(p)["sparsity"] for p in sorted(run.glob("level_*/metrics.json"))}
    if not done:
        raise LthError(f"{run} has no finished level yet; let lth find train one first")
    if level is None and sparsity is None:
        raise LthError("say which level to export: --level N or --sparsity S (the finished level nearest to S)")
    if level is None:
        level = min(done, key=lambda lvl: abs(done[lvl] - sparsity))
        say(f"--sparsity {sparsity:g} -> level {level} ({pct(done[level])}), the nearest finished level")
    if level not in done and (run / f"level_{level:02d}" / "mask.safetensors").exists() and (run / DRAW_RECORD).exists():
        levels = ",".join(map(str, sorted({*read_settings(run).get("judged_levels", []), level})))
        raise LthError(f"level {level} of {run} has its mask drawn (--search) but no trained ticket yet: rerun the lth "
                       f"find command that made the run with --levels {levels}, which trains and judges it, then "
                       "export it")
    if level not in done:
        raise LthError(f"level {level} of {run} is not finished (finished: {', '.join(map(str, sorted(done)))}); "
                       "export one of those or let the search go on")
    return level


def trained(search: Search, level: int, record: dict, checkpoint: Path) -> dict:
    """Put the level's trained weights into search.model (kept, or trained again, resumable from `checkpoint`);
    returns their dev metrics."""
    final = level_dir(search.run, level) / "final.safetensors"
    if final.exists():
        load_into(search.model, final)
        return search.evaluate(f"level {level}")
    unit = search.kind_units("trunk", [level])[0]
    minutes, seconds = divmod(int(record.get("seconds", 0)), 60)
    say(f"training level {level} again from the run's rewind point to get its weights (the run keeps only masks; "
        f"the search took {minutes}m{seconds:02d}s for it here; lth find --keep-weights {level} keeps them)")
    search.train_unit(unit, checkpoint, desc=f"level {level} export train", keep_rewind=False)
    metrics = search.evaluate(f"level {level}")
    if metrics != record["metrics"]:
        say(f"warning: the retrained level {level} scores {metrics}, the run recorded {record['metrics']}: this machine "
            "computes differently from the one that ran the search; the export keeps the weights it trained")
    try:
        save_model(search.model, final)
    except LthError as refused:  # a read-only run: the export goes on, the next one trains again
        say(f"note: the trained weights are not kept in the run ({refused}); the next export of this level trains "
            "them again")
    checkpoint.unlink(missing_ok=True)
    return metrics


def describe(search: Search, level: int, record: dict) -> dict:
    """The ticket's metadata: what it is relative to, how it was found, and how well it did."""
    init, _ = load_tensors(search.run / "init.safetensors")
    fingerprints = base_fingerprint({k: init[k] for k in search.weights})
    s = search.s
    return {"base_model": s.model, "base_name": getattr(search.model.config, "_name_or_path", s.model),
            "base_fingerprints": fingerprints, "base_fingerprint": combined(fingerprints),
            "rule": {"include": s.include, "exclude": s.exclude}, "task": search.task.name, "level": level,
            "metrics": record["metrics"], "run": search.name,
            "schedule": {"schedule": s.schedule, "rate": s.rate, "strategy": s.strategy,
                         "rewind_step": s.rewind_step},
            "recipe": {**s.group("recipe", hashed=True), "max_length": s.max_length,
                       **(s.group("teacher") if s.distill else {})},
            "lth_version": __version__}
