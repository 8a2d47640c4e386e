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

import math
from dataclasses import replace
from pathlib import Path

import torch
from safetensors import safe_open

from . import __version__, masks
from .config import FindSettings
from .errors import LthError
from .files import load_into, load_json, load_tensors, save_json, save_model, share
from .runs import level_dir, read_record
from .search import Search, open_search, rewind
from .tickets import entropy_bytes, load_compact, save_compact, save_ticket
from .train import finetune
from .transfers import base_fingerprint
from .verdict import pct
from .work import say

HEADS = {"ClassificationTask": "AutoModelForSequenceClassification", "SquadTask": "AutoModelForQuestionAnswering",
         "MaskedLMTask": "AutoModelForMaskedLM"}


def export(run: str | Path, to: str | Path, level: int | None = None, sparsity: float | None = None,
           fp16: bool = False, onnx: bool = False, threads: int | None = None) -> dict:
    """Write a level's ticket, trained model, compact model (and ONNX model); returns what ticket.json holds."""
    run, to = Path(run).expanduser(), Path(to).expanduser()
    if not (run / "settings.json").is_file():
        raise LthError(f"{run} is not a run directory (no settings.json); give a folder that lth find printed")
    level = choose_level(run, level, sparsity)
    record = read_record(level_dir(run, level) / "metrics.json")
    info = load_json(run / "settings.json", {"settings": dict})
    settings = FindSettings(**{**info["settings"], "runs_dir": str(run.parent), "levels": None, "baselines": None,
                               "seeds": None, **({"threads": threads} if threads else {})})
    search = open_search(settings, judging=False)
    if search.run.resolve() != run.resolve():
        raise LthError(f"the settings recorded in {run} now make another run ({search.run.name}): its data or model "
                       "changed since; restore them to export from this run")
    mask = search.mask(level)
    metrics = trained(search, level, record)
    to.mkdir(parents=True, exist_ok=True)
    about = describe(search, level, record)
    save_ticket(mask, to / "ticket.safetensors", about)
    head = HEADS[type(search.task).__name__]
    save_hf_folder(search, to / "model")
    share(to / "model")
    dtype = torch.float16 if fp16 else torch.float32
    save_compact(search.model, mask, to / "compact" / "compact.safetensors", dtype, dict(about))
    search.model.config.save_pretrained(to / "compact")
    search.tokenizer.save_pretrained(to / "compact")
    share(to / "compact")
    result = {**about, "head": head, "files": {}, "metrics": {"run": record["metrics"], "retrained": metrics}}
    result["metrics"]["model"] = search.evaluate("exported model", reload_hf(to / "model", head))
    result["metrics"][f"compact ({'fp16' if fp16 else 'fp32'})"] = search.evaluate("compact", load_compact(to / "compact"))
    engine = fast_engine(search, to, result["metrics"]["model"])
    if engine is not None:
        result["fast_engine"] = engine
        if "metrics" in engine:
            result["metrics"][f"fast engine ({engine['precision']})"] = engine["metrics"]
    if onnx:
        from .serving import export_onnx

        result["onnx"] = export_onnx(search, to / "model.onnx")
    result["files"] = sizes(to, mask, search.model, dtype)
    save_json(result, to / "ticket.json")
    print(report(result, to))
    return result


TOLERANCE_POINTS = 0.2  # how far bf16 may move the dev metric before the engine runs the ticket in fp32


def fast_engine(search: Search, to: Path, exported: dict[str, float]) -> dict | None:
    """The dev metrics of lth's fast engine (`load_fast`: bf16 where the CPU has it) on the export, and how many
    points its primary metric lies from the exported model's; None where the task's own forward reaches inside the
    model (masked-LM), which the engine does not wrap."""
    if getattr(search.task, "forward", None) is not None:
        return None
    from .fast import load_fast
    from .parallel import auto_precision

    try:  # the precision 'auto' picks on this CPU before any measurement (an older ticket.json could sway it)
        engine = load_fast(to, auto_precision(torch.device("cpu")))
        metrics = search.evaluate(f"fast engine ({engine.precision})", engine)
    except Exception as exc:  # a secondary measurement: the export stands without it, and says why
        return {"error": f"{type(exc).__name__}: {str(exc).strip()[:200]}"}
    primary = search.task.primary
    moved = (metrics[primary] - exported[primary]) * (1 if getattr(search.task, "percent", False) else 100)
    return {"precision": engine.precision, "metrics": metrics, "primary": primary, "moves_points": moved,
            "within_tolerance": abs(moved) <= TOLERANCE_POINTS + 1e-9}


def choose_level(run: Path, level: int | None, sparsity: float | None) -> int:
    done = {read_record(p)["level"]: read_record(p)["sparsity"] for p in sorted(run.glob("level_*/metrics.json"))}
    if not done:
        raise LthError(f"{run} has no finished level yet; let lth find train one first")
    if level is None and sparsity is None:
        raise LthError("say which level to export: --level N or --sparsity S (the finished level nearest to S)")
    if level is None:
        level = min(done, key=lambda lvl: abs(done[lvl] - sparsity))
        say(f"--sparsity {sparsity:g} -> level {level} ({pct(done[level])}), the nearest finished level")
    if level not in done:
        raise LthError(f"level {level} of {run} is not finished (finished: {', '.join(map(str, sorted(done)))}); "
                       "export one of those or let the search go on")
    return level


def trained(search: Search, level: int, record: dict) -> dict:
    """Put the level's trained weights into search.model (kept, or trained again); returns their dev metrics."""
    final = level_dir(search.run, level) / "final.safetensors"
    if final.exists():
        load_into(search.model, final)
        return search.evaluate(f"level {level}")
    unit = search.unit("trunk", level, search.seeds[0], level_dir(search.run, level))
    mask = search.mask(level)
    point, first_step = search.start(unit)
    rewind(search.model, point, mask, search.weights)
    say(f"training level {level} again from the run's rewind point to get its weights (the run keeps only masks)")
    finetune(search.model, mask, search.train, replace(search.recipe, seed=unit.seed), search.pad_id,
             unit.where / "export.checkpoint.pt", start_step=first_step, desc=f"level {level} export train",
             prepare=getattr(search.task, "prepare", None), forward=getattr(search.task, "forward", None),
             ranks=search.ranks)
    metrics = search.evaluate(f"level {level}")
    if metrics != record["metrics"]:
        say(f"warning: the retrained level {level} scores {metrics}, the run recorded {record['metrics']}: this machine "
            "computes differently from the one that ran the search; the export keeps the weights it trained")
    save_model(search.model, final)
    (unit.where / "export.checkpoint.pt").unlink(missing_ok=True)
    return metrics


def describe(search: Search, level: int, record: dict) -> dict:
    """The ticket's metadata: what it is relative to, how it was found, and how well it did."""
    init, _ = load_tensors(search.run / "init.safetensors")
    fingerprints = base_fingerprint({k: init[k] for k in search.weights})
    s = search.s
    return {"base_model": s.model, "base_name": getattr(search.model.config, "_name_or_path", s.model),
            "base_fingerprints": fingerprints, "base_fingerprint": _combined(fingerprints),
            "rule": {"include": s.include, "exclude": s.exclude}, "task": search.task.name, "level": level,
            "metrics": record["metrics"], "run": search.run.name,
            "schedule": {"schedule": s.schedule, "rate": s.rate, "strategy": s.strategy,
                         "rewind_step": s.rewind_step},
            "recipe": {"lr": s.lr, "epochs": s.epochs, "steps": s.steps, "batch_size": s.batch_size,
                       "max_length": s.max_length, "seed": s.seed, "precision": s.precision},
            "lth_version": __version__}


def _combined(fingerprints: dict[str, str]) -> str:
    import hashlib

    return hashlib.sha256("".join(f"{k}={v};" for k, v in sorted(fingerprints.items())).encode()).hexdigest()[:16]


def save_hf_folder(search: Search, folder: Path) -> None:
    """config, weights and tokenizer as `save_pretrained` writes them: loadable with transformers alone."""
    labels = getattr(getattr(search.task, "data", None), "label_names", None)
    if labels:
        search.model.config.id2label = dict(enumerate(labels))
        search.model.config.label2id = {name: i for i, name in enumerate(labels)}
    search.model.save_pretrained(folder)
    search.tokenizer.save_pretrained(folder)


def reload_hf(folder: Path, head: str):
    """A model folder loaded with `head`, an Auto class or an architecture's class name."""
    import transformers

    from .models import quiet_transformers

    quiet_transformers()
    return getattr(transformers, head).from_pretrained(folder, attn_implementation="eager")


def sizes(to: Path, mask: masks.Mask, model, dtype: torch.dtype) -> dict:
    """Bytes of every file written, and the bounds they are judged against."""
    kept, total = masks.count(mask)
    params = {name for name, _ in model.named_parameters()}
    others = sum(t.numel() for name, t in model.state_dict().items() if name not in mask and name in params)
    width = torch.finfo(dtype).bits // 8
    files = {str(p.relative_to(to)): p.stat().st_size for p in sorted(to.rglob("*")) if p.is_file()}
    with safe_open(to / "compact" / "compact.safetensors", "pt") as handle:  # the pruned matrices' share of it
        encoder = sum(math.prod(handle.get_slice(k).get_shape()) * _itemsize(handle.get_slice(k).get_dtype())
                      for k in handle.keys() if k.endswith(("::values", "::mask")))
    return {"bytes": files, "compact_prunable_bytes": encoder, "prunable_weights": total, "kept_weights": kept,
            "ticket_bits_bytes": math.ceil(total / 8), "ticket_entropy_bytes": round(entropy_bytes(mask)),
            "ticket_entropy_per_matrix_bytes": round(entropy_bytes(mask, per_matrix=True)),
            "compact_bound_bytes": kept * width + sum(math.ceil(m.numel() / 8) for m in mask.values()) + others * width,
            "dense_prunable_bytes": total * 4}


def _itemsize(dtype: str) -> int:
    """Bytes per element of a safetensors dtype name (F32, BF16, U8, ...)."""
    return {"BOOL": 1, "U8": 1, "I8": 1, "I16": 2, "F16": 2, "BF16": 2, "I32": 4, "F32": 4, "I64": 8, "F64": 8}[dtype]


def report(result: dict, to: Path) -> str:
    files, mb = result["files"], lambda n: f"{n / 2**20:,.2f} MiB"
    lines = [f"exported level {result['level']} of {result['run']} ({pct(masks_sparsity(result))} sparse) to {to}",
             f"  ticket.safetensors   {mb(files['bytes']['ticket.safetensors'])}  (one bit a weight: "
             f"{mb(files['ticket_bits_bytes'])}; entropy bound {mb(files['ticket_entropy_bytes'])} at one density, "
             f"{mb(files['ticket_entropy_per_matrix_bytes'])} at each matrix's)",
             f"  model/               {mb(files['bytes']['model/model.safetensors'])}  (dense, zeros in place)",
             f"  compact/             {mb(files['bytes']['compact/compact.safetensors'])}  (bound "
             f"{mb(files['compact_bound_bytes'])}); its pruned matrices {mb(files['compact_prunable_bytes'])}, "
             f"{files['compact_prunable_bytes'] / files['dense_prunable_bytes']:.1%} of their dense "
             f"{mb(files['dense_prunable_bytes'])}"]
    if "model.onnx" in files["bytes"]:
        lines.append(f"  model.onnx           {mb(files['bytes']['model.onnx'])}")
    for name, values in result["metrics"].items():
        lines.append(f"  dev metrics, {name}: " + ", ".join(f"{k} {v:.4f}" for k, v in values.items() if v is not None))
    engine = result.get("fast_engine")
    if engine and "error" in engine:
        lines.append(f"  the fast engine (lth.load_fast) could not run this model: {engine['error']}")
    elif engine and engine["precision"] != "fp32":
        moved = f"the fast engine in {engine['precision']} moves {engine['primary']} by {engine['moves_points']:+.2f} points"
        lines.append(f"  {moved}" + ("" if engine["within_tolerance"] else
                     f": more than {TOLERANCE_POINTS}, so lth.load_fast and lth predict/speed run this ticket in "
                     "fp32 unless told --precision bf16"))
    return "\n".join(lines)


def masks_sparsity(result: dict) -> float:
    files = result["files"]
    return 1 - files["kept_weights"] / files["prunable_weights"]
