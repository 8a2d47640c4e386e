"""Settings of a ticket search, their command-line flags and the hash that names a run."""
from __future__ import annotations

import hashlib
import json
import math
import re
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path

from ..core.datafiles import FORMATS as DATA_FILES
from ..core.devices import auto_precision, resolve_device
from ..core.errors import LthError
from ..core.models import patterns
from .kinds import BASELINES

SCHEDULES = ("original", "remaining")
STRATEGIES = ("global", "layerwise")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
SEARCHES = ("imp", "early-bird", "gradual")
# The settings in groups: how each unit trains (the recipe: the fields of search.train.Recipe), how the search
# prunes, what is judged, and where and how fast it runs; every other field says what is trained on. The flags
# stay flat, one per field, and settings.json keeps one flat dict (the run's hash depends on it).
GROUPS = {
    "recipe": ("steps", "batch_size", "lr", "epochs", "weight_decay", "warmup", "seed", "precision", "grad_accum",
               "checkpoint_minutes", "fast_dropout"),
    "pruning": ("search", "schedule", "rate", "max_sparsity", "strategy", "include", "exclude", "rewind_step",
                "draw_every", "early_bird_epsilon"),
    "judging": ("levels", "seeds", "baselines"),
    "run": ("device", "eval_batch_size", "runs_dir", "threads", "keep_weights"),
    "teacher": ("distill", "distill_alpha", "distill_temperature"),
}


def _opt(help: str, hashed: bool = True, **kw):
    return field(metadata={"help": help, "hashed": hashed, **kw.pop("meta", {})}, **kw)


@dataclass
class FindSettings:
    """Everything `lth find` needs; fields marked hashed=False do not change results."""

    model: str = _opt("Hugging Face hub id, local model folder, or 'minilm' (the offline MiniLM-L6)",
                      default="minilm")
    task: str = _opt("GLUE name (cola, sst2, mrpc, stsb, qqp, mnli, qnli, rte, wnli), 'bbc' (BBC News), "
                     "or your own .csv/.tsv/.jsonl training file; none = the offline demo", default="bbc")
    data: str | None = _opt("GLUE: the task folder (train.tsv, dev.tsv) or the GLUE root; none = the hub",
                            default=None)
    eval: str | None = _opt("own data: the evaluation file (default: hold out 10%% of the training file)",
                            default=None)
    text_column: str = _opt("own data: column with the text", default="text")
    text_pair_column: str | None = _opt("own data: column with the second text of a pair", default=None)
    label_column: str = _opt("own data: column with the label (numbers with decimals = regression)",
                             default="label")
    train_limit: int | None = _opt("use only the first N training examples", default=None)
    eval_limit: int | None = _opt("use only the first N examples of each evaluation split", default=None)
    max_length: int | None = _opt("tokens per input (default 384 for squad, 128 otherwise; MLM block size)",
                                  default=None)
    doc_stride: int = _opt("squad: overlap of the windows over a long context, in tokens", default=128)
    split_articles: str = _opt("squad without --eval: TRAIN:EVAL article counts of the --data file, first "
                               "articles to train, next ones to evaluate", default="40:8")
    steps: int | None = _opt("train exactly this many steps a level instead of --epochs (e.g. for mlm)",
                             default=None)
    batch_size: int = _opt("training batch size", default=32)
    lr: float = _opt("peak learning rate of AdamW (linear decay to 0, every level)", default=2e-5)
    epochs: float = _opt("training epochs per level", default=3.0)
    weight_decay: float = _opt("AdamW weight decay", default=0.0)
    warmup: float = _opt("fraction of each level's steps spent warming up the learning rate", default=0.0)
    seed: int = _opt("seed of the task head, data order and dropout", default=1)
    search: str = _opt("how the candidate masks are drawn: 'imp' (iterative magnitude pruning, a fine-tuning per "
                       "level), 'early-bird' (every level's mask drawn while the dense model trains, once it stops "
                       "changing) or 'gradual' (one fine-tuning that prunes a little every few steps, cubic "
                       "schedule); each candidate is then trained and judged as an IMP level is",
                       default="imp", meta={"choices": SEARCHES})
    draw_every: int | None = _opt("early-bird and gradual: steps between two mask checks (early-bird) or two pruning "
                                  "steps (gradual) (default: 5%% of a level's steps)", default=None)
    early_bird_epsilon: float = _opt("early-bird: a level's mask is drawn when the fraction of its weights whose mask "
                                     "changed since the last check falls below this (0: never early)", default=0.1)
    schedule: str = _opt("'original': each level removes RATE of the original prunable weights (the paper); "
                         "'remaining': each level removes RATE of the weights still alive",
                         default="original", meta={"choices": SCHEDULES})
    rate: float | None = _opt("pruning rate per level (default 0.1 for original, 0.2 for remaining)", default=None)
    max_sparsity: float = _opt("highest sparsity (fraction of prunable weights removed) to reach; "
                               "raising it later continues the same run", default=0.9, hashed=False)
    levels: str | None = _opt("levels to run and judge: '4', '2,4,6' or '2-6' (level 0 is the dense model); the "
                              "search runs every level up to the highest, seeds and baselines run at the chosen "
                              "ones (default: every level up to --max-sparsity)", default=None, hashed=False)
    seeds: int | None = _opt("train the full model and each judged level with N seeds: --seed, --seed+1, ... "
                             "(default: 3 with --baselines, else 1)", default=None, hashed=False)
    baselines: str | None = _opt("comma-separated baselines trained at each judged level, N seeds each: "
                                 "random-prune, random-reinit, oneshot, standard, or 'all'", default=None,
                                 hashed=False)
    strategy: str = _opt("'global' magnitude over all prunable weights, or 'layerwise' (same rate per matrix)",
                         default="global", meta={"choices": STRATEGIES})
    include: list[str] = _opt("regex of parameter names to prune in addition to the rule (repeatable)",
                              default_factory=list)
    exclude: list[str] = _opt("regex of parameter names never to prune (repeatable)", default_factory=list)
    rewind_step: int = _opt("rewind to the weights after this many steps of level 0 instead of the "
                            "pre-trained weights", default=0)
    precision: str = _opt("'bf16' or 'fp16' autocast (fp16 with a gradient scaler, GPUs only), 'fp32', or 'auto': "
                          "bf16 where the device computes it natively (Ampere+ GPUs, CPUs with avx512_bf16), fp16 "
                          "on older GPUs, else fp32", default="auto", meta={"choices": PRECISIONS})
    fast_dropout: bool = _opt("draw dropout's masks from random bits, four 16-bit draws per random int64, instead "
                              "of one torch random number per element (p rounded to 1/65536; attention as eager "
                              "attention): faster training steps on a CPU (benchmarks/dropout_cost.py), another "
                              "random stream",
                              default=False)
    device: str = _opt("where to train: 'auto' (CUDA if present, else Apple's MPS, else the CPU), 'cpu', 'cuda', "
                       "'cuda:N' or 'mps'; a run moves between devices and resumes", default="auto", hashed=False)
    grad_accum: int = _opt("split each batch into this many micro-batches (the same step, a fraction of the "
                           "memory): --batch-size 32 --grad-accum 4 fits the paper's batch on a small GPU",
                           default=1, hashed=False)
    eval_batch_size: int = _opt("evaluation batch size", default=128, hashed=False)
    runs_dir: str = _opt("where run directories live", default="runs", hashed=False)
    checkpoint_minutes: float = _opt("save a resumable checkpoint at least this often (and every epoch)",
                                     default=10.0, hashed=False)
    threads: int | None = _opt("torch threads (default: all cores)", default=None, hashed=False)
    head_warmup: int | None = _opt("mlm: steps that fit a new MLM head alone (encoder frozen) on the run's text "
                                   "before θ0 is saved (default: 300 when the checkpoint has no MLM head; 0: none)",
                                   default=None, meta={"same_as_default": (0,)})
    keep_weights: str | None = _opt("levels of the search whose trained weights the run keeps, so that lth export of "
                                    "them needs no training: '2,3', '2-4' or 'all' (one model file each)",
                                    default=None, hashed=False)
    distill: bool = _opt("train every pruned unit (levels, seeds, baselines, transfers) with knowledge distillation "
                         "from the run's own dense fine-tuned model (level 0), as high-sparsity methods do",
                         default=False)
    distill_alpha: float = _opt("with --distill: the weight of the distillation loss; the task loss has 1 - alpha",
                                default=0.5)
    distill_temperature: float = _opt("with --distill: the temperature of the teacher's and student's softmax "
                                      "(classification, SQuAD, masked-LM)", default=2.0)

    def __post_init__(self) -> None:
        if self.rate is None:
            self.rate = 0.1 if self.schedule == "original" else 0.2
        if self.max_length is None:
            self.max_length = 384 if self.task == "squad" else 128
        if isinstance(self.levels, int):
            self.levels = str(self.levels)
        for name in ("include", "exclude"):  # one pattern given as a string through the API
            if isinstance(getattr(self, name), str):
                setattr(self, name, [getattr(self, name)])
        if isinstance(self.baselines, (list, tuple)):
            self.baselines = ",".join(self.baselines)
        validate(self)
        if self.precision == "auto":  # resolved before hashing: bf16 and fp32 runs give different numbers
            self.precision = auto_precision(resolve_device(self.device))
        if self.precision == "fp16" and resolve_device(self.device).type == "cpu":
            raise LthError("--precision fp16 is for GPUs (CPU autocast in fp16 is slow and unscaled); use bf16 or fp32")

    def hashed(self) -> dict:
        """The settings that change results and differ from their defaults (as OpenLTH does: adding a
        new setting with a default later leaves every existing run's name unchanged)."""
        return {f.name: getattr(self, f.name) for f in fields(self)
                if f.metadata["hashed"] and getattr(self, f.name) != _default(f)
                and getattr(self, f.name) not in f.metadata.get("same_as_default", ())
                or f.name == "max_sparsity" and self.search != "imp"}  # it sets the masks a drawing search makes

    def digest(self, data: str | None = None) -> str:
        """The run's name: a hash of the settings that change results and, given `data` (a fingerprint of the
        examples' content), of the data itself instead of the paths it was read from."""
        hashed = self.hashed()
        if data is not None:
            hashed = {k: v for k, v in hashed.items() if k not in ("data", "eval")}
            if Path(self.task).suffix.lower() in DATA_FILES:
                hashed["task"] = "own data file"
            hashed["data_fingerprint"] = data
        blob = json.dumps(hashed, sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:10]

    def to_dict(self) -> dict:
        return asdict(self)

    def group(self, name: str, hashed: bool = False) -> dict:
        """The fields of one group (see GROUPS; "data" is every field of no other group), e.g. the recipe every unit
        trains with; `hashed`: only those that change results."""
        grouped = {n for names in GROUPS.values() for n in names}
        return {f.name: getattr(self, f.name) for f in fields(self)
                if (f.name in GROUPS[name] if name in GROUPS else f.name not in grouped)
                and (f.metadata["hashed"] or not hashed)}

    def chosen_levels(self) -> list[int] | None:
        """The levels given with --levels, sorted; None when every planned level is wanted."""
        return None if self.levels is None else parse_levels(self.levels)

    def kept_levels(self, planned: int) -> list[int]:
        """The levels given with --keep-weights ('all': every one of the `planned` levels)."""
        if self.keep_weights is None:
            return []
        if str(self.keep_weights).strip() == "all":
            return list(range(planned))
        return parse_levels(self.keep_weights, "--keep-weights")

    def baseline_names(self) -> list[str]:
        names = [n.strip() for n in (self.baselines or "").split(",") if n.strip()]
        return list(BASELINES) if names == ["all"] else names

    def seed_list(self) -> list[int]:
        """The seeds of the full model and of every judged level; the first is the search's own."""
        count = self.seeds or (3 if self.baseline_names() else 1)
        return [self.seed + i for i in range(count)]


# `lth find` with no task: MiniLM on BBC News, offline, to 66% sparsity in minutes on 2 cores. The paper's
# recipe (3 epochs a level, 10% of the weights a level) takes many times as long. The pooler stays
# dense: this sentence-transformers checkpoint never trained it (weight std 0.009 against 0.04-0.1 in the
# encoder), so global magnitude pruning deletes all of it by ~50% sparsity and the classifier sees a constant.
DEMO = {"model": "minilm", "task": "bbc", "epochs": 1.0, "lr": 1e-4, "max_length": 128,
        "schedule": "remaining", "rate": 0.3, "max_sparsity": 0.7, "exclude": ["pooler"]}


def _default(f):
    return f.default if f.default is not MISSING else f.default_factory()


def find_settings(**given) -> FindSettings:
    """Settings from explicit values; without a task, the offline demo preset fills what is not given."""
    if given.get("task") is None:
        given = {**DEMO, **{k: v for k, v in given.items() if k != "task"}}
    return FindSettings(**given)


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise LthError(message)


# The allowed range of every numeric setting, in one place: (kind, test, words for the message).
WHOLE, REAL = int, float
AT_LEAST_1 = (WHOLE, lambda v: v >= 1, "1 or more")
AT_LEAST_0 = (WHOLE, lambda v: v >= 0, "0 or more")
RANGES = {
    "train_limit": AT_LEAST_1, "eval_limit": AT_LEAST_1, "steps": AT_LEAST_1, "batch_size": AT_LEAST_1,
    "eval_batch_size": AT_LEAST_1, "seeds": AT_LEAST_1, "threads": AT_LEAST_1, "doc_stride": AT_LEAST_1,
    "grad_accum": AT_LEAST_1,
    "seed": AT_LEAST_0, "rewind_step": AT_LEAST_0, "head_warmup": AT_LEAST_0,
    "max_length": (WHOLE, lambda v: v >= 8, "8 or more tokens"),
    "lr": (REAL, lambda v: v > 0, "a positive number, e.g. 2e-5"),
    "epochs": (REAL, lambda v: v > 0, "a positive number of epochs, e.g. 3"),
    "checkpoint_minutes": (REAL, lambda v: v > 0, "a positive number of minutes"),
    "weight_decay": (REAL, lambda v: v >= 0, "0 or more, e.g. 0.01"),
    "warmup": (REAL, lambda v: 0 <= v < 1, "a fraction of the steps in [0, 1), e.g. 0.1"),
    "rate": (REAL, lambda v: 0 < v < 1, "in (0, 1): the fraction pruned each level, e.g. 0.2"),
    "max_sparsity": (REAL, lambda v: 0 <= v < 1, "in [0, 1): the fraction of prunable weights removed, e.g. 0.6"),
    "draw_every": AT_LEAST_1,
    "early_bird_epsilon": (REAL, lambda v: 0 <= v < 1, "in [0, 1): a fraction of the prunable weights, e.g. 0.1"),
    "distill_alpha": (REAL, lambda v: 0 <= v <= 1, "in [0, 1], e.g. 0.5"),
    "distill_temperature": (REAL, lambda v: v > 0, "a positive temperature, e.g. 2"),
}


# The same ranges for the flags of the other commands (speed, predict, export), which are not search settings.
COMMAND_RANGES = {**RANGES, "repeats": AT_LEAST_1, "level": AT_LEAST_0,
                  "length": (WHOLE, lambda v: v >= 1, "1 or more tokens"),
                  "sparsity": (REAL, lambda v: 0 <= v < 1, "in [0, 1): the fraction of prunable weights removed")}


def check_flags(values: dict) -> None:
    """Every numeric flag a command was given, against its range (strings, such as a list of levels, are checked
    where they are parsed)."""
    for name, value in values.items():
        if name in COMMAND_RANGES and isinstance(value, (int, float)) and not isinstance(value, bool):
            check_number("--" + name.replace("_", "-"), value, COMMAND_RANGES[name])


def check_number(flag: str, value, rule: tuple) -> None:
    """One line naming the flag, the value and the allowed range, for a value of the wrong type or range."""
    kind, test, allowed = rule
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise LthError(f"{flag} {value!r} is not a number; it must be {allowed}")
    if kind is WHOLE and not float(value).is_integer():
        raise LthError(f"{flag} {value} is not a whole number; it must be {allowed}")
    if not math.isfinite(value):
        raise LthError(f"{flag} {value} is not a finite number; it must be {allowed}")
    if not test(value):
        raise LthError(f"{flag} {value} is outside its range: it must be {allowed}")


def validate(s: FindSettings) -> None:
    """Reject values that cannot work, naming the flag and the allowed range."""
    for name, rule in RANGES.items():
        value = getattr(s, name)
        if value is not None:
            check_number("--" + name.replace("_", "-"), value, rule)
            setattr(s, name, rule[0](value))  # 3.0 given for an int flag through the API becomes 3
    _check(s.schedule in SCHEDULES, f"--schedule {s.schedule!r}: choose one of {', '.join(SCHEDULES)}")
    _check(s.strategy in STRATEGIES, f"--strategy {s.strategy!r}: choose one of {', '.join(STRATEGIES)}")
    _check(s.search in SEARCHES, f"--search {s.search!r}: choose one of {', '.join(SEARCHES)}")
    _check(s.search != "imp" or s.draw_every is None, "--draw-every is for --search early-bird or gradual")
    _check(s.search == "early-bird" or s.early_bird_epsilon == 0.1, "--early-bird-epsilon needs --search early-bird")
    _check(s.precision in PRECISIONS, f"--precision {s.precision!r}: choose one of {', '.join(PRECISIONS)}")
    s.chosen_levels()  # raises on a malformed list
    s.kept_levels(0)
    unknown = [n for n in s.baseline_names() if n not in BASELINES]
    _check(not unknown, f"--baselines: unknown baseline {', '.join(map(repr, unknown))}; choose from "
           f"{', '.join(BASELINES)} or 'all', separated by commas")
    _check(s.task != "squad" or s.doc_stride < s.max_length,
           f"--doc-stride {s.doc_stride} must be smaller than --max-length {s.max_length}")
    _check(s.task != "squad" or bool(re.fullmatch(r"\s*\d+\s*:\s*\d+\s*", str(s.split_articles))),
           f"--split-articles {s.split_articles!r} is not TRAIN:EVAL; use article counts, e.g. 40:8")
    patterns([*s.include, *s.exclude])
    _check(isinstance(s.distill, bool), f"--distill {s.distill!r}: give True or False")
    _check(isinstance(s.fast_dropout, bool), f"--fast-dropout {s.fast_dropout!r}: give True or False")
    _check(s.task == "mlm" or not s.head_warmup, "--head-warmup is for --task mlm (it fits a new masked-LM head)")
    _check(s.distill or (s.distill_alpha, s.distill_temperature) == (0.5, 2.0),
           "--distill-alpha and --distill-temperature shape the distillation: they need --distill")


def parse_levels(text: str, flag: str = "--levels") -> list[int]:
    """'4' -> [4], '2,4,6' -> [2, 4, 6], '2-4' -> [2, 3, 4]."""
    chosen = set()
    for part in str(text).split(","):
        match = re.fullmatch(r"\s*(\d+)\s*(?:-\s*(\d+)\s*)?", part)
        if not match or (match[2] is not None and int(match[2]) < int(match[1])):
            raise LthError(f"{flag} {text!r}: give level numbers like '4', '2,4,6' or '2-6' (0 is the dense model)")
        first = int(match[1])
        chosen.update(range(first, int(match[2] or first) + 1))
    return sorted(chosen)
