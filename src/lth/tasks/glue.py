"""The nine GLUE tasks, from a local folder in the original TSV layout or from the Hugging Face hub."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..core.datafiles import read_table
from ..core.errors import LthError, short_reason
from .examples import ClassificationData, Examples

GLUE_HINT = "the file is not in the GLUE TSV layout (was it saved with quoting or edited?)"
BINARY = ("0", "1")
ENTAILMENT = ("entailment", "not_entailment")
DEV = (("dev", "dev.tsv", "validation"),)


@dataclass(frozen=True)
class GlueTask:
    """Where one GLUE task's data lives and how to read it."""

    folder: str                        # folder name in the original GLUE download
    text: str | int                    # header name, or column index when there is no header
    pair: str | int | None
    label: str | int
    labels: tuple[str, ...]            # class names in id order; () for regression
    metrics: tuple[str, ...]           # first is the primary
    hub_text: str
    hub_pair: str | None
    evals: tuple[tuple[str, str, str], ...] = DEV  # (split name, TSV file, hub split)
    width: int | None = None           # field count of a headerless TSV
    hub_labels: tuple[str, ...] | None = None  # the hub's id order, when it differs from `labels`

    @property
    def header(self) -> bool:
        return self.width is None


GLUE_TASKS: dict[str, GlueTask] = {
    "cola": GlueTask("CoLA", 3, None, 1, BINARY, ("mcc",), "sentence", None, width=4),
    "sst2": GlueTask("SST-2", "sentence", None, "label", BINARY, ("accuracy",), "sentence", None),
    "mrpc": GlueTask("MRPC", "#1 String", "#2 String", "Quality", BINARY, ("accuracy", "f1"),
                     "sentence1", "sentence2"),
    "stsb": GlueTask("STS-B", "sentence1", "sentence2", "score", (), ("pearson", "spearman"),
                     "sentence1", "sentence2"),
    "qqp": GlueTask("QQP", "question1", "question2", "is_duplicate", BINARY, ("accuracy", "f1"),
                    "question1", "question2"),
    "mnli": GlueTask("MNLI", "sentence1", "sentence2", "gold_label",
                     ("contradiction", "entailment", "neutral"), ("accuracy",), "premise", "hypothesis",
                     evals=(("matched", "dev_matched.tsv", "validation_matched"),
                            ("mismatched", "dev_mismatched.tsv", "validation_mismatched")),
                     hub_labels=("entailment", "neutral", "contradiction")),
    "qnli": GlueTask("QNLI", "question", "sentence", "label", ENTAILMENT, ("accuracy",),
                     "question", "sentence"),
    "rte": GlueTask("RTE", "sentence1", "sentence2", "label", ENTAILMENT, ("accuracy",),
                    "sentence1", "sentence2"),
    "wnli": GlueTask("WNLI", "sentence1", "sentence2", "label", BINARY, ("accuracy",),
                     "sentence1", "sentence2"),
}


def _task(name: str) -> GlueTask:
    if name not in GLUE_TASKS:
        raise LthError(f"unknown GLUE task '{name}'; use one of: {', '.join(GLUE_TASKS)}")
    return GLUE_TASKS[name]


def _files(task: GlueTask) -> str:
    return ", ".join(["train.tsv"] + [file for _, file, _ in task.evals])


def _task_folder(task: GlueTask, data: str) -> Path:
    """The task's own folder: `data` itself, or `data/<Folder>` when `data` is the GLUE root."""
    root = Path(data).expanduser()
    if not root.is_dir():
        raise LthError(f"GLUE data folder {root} does not exist; pass --data with the {task.folder} "
                       f"folder ({_files(task)}) or the GLUE folder that contains {task.folder}/")
    return root / task.folder if (root / task.folder).is_dir() else root


def _tsv(folder: Path, file: str, task: GlueTask) -> Path:
    path = folder / file
    if not path.is_file():
        raise LthError(f"{path} not found; --data must be the GLUE {task.folder} folder ({_files(task)}) "
                       f"or the GLUE folder that contains {task.folder}/")
    return path


def _column(path: Path, header: list[str], column: str | int | None) -> int | None:
    if column is None or isinstance(column, int):
        return column
    if column not in header:
        raise LthError(f"{path} has no column '{column}' (columns: {', '.join(header)}); {GLUE_HINT}")
    return header.index(column)


def _label(path: Path, line: int, value: str, task: GlueTask) -> int | float:
    if not task.labels:
        try:
            return float(value)
        except ValueError:
            raise LthError(f"{path}:{line}: score '{value}' is not a number; {GLUE_HINT}") from None
    if value not in task.labels:
        raise LthError(f"{path}:{line}: label '{value}' is not one of {', '.join(task.labels)}; "
                       f"check that the file belongs to GLUE {task.folder}")
    return task.labels.index(value)


def _read_split(path: Path, task: GlueTask) -> Examples:
    """Every row of one GLUE TSV, field counts and labels checked."""
    header, rows = read_table(path, tab=True, hint=GLUE_HINT, width=task.width)
    if not rows:
        raise LthError(f"{path} has no rows; {GLUE_HINT}")
    text, pair, label = (_column(path, header, c) for c in (task.text, task.pair, task.label))
    texts = [row[text] for _, row in rows]
    pairs = None if pair is None else [row[pair] for _, row in rows]
    labels = [_label(path, line, row[label], task) for line, row in rows]
    return Examples(texts, labels, pairs)


def _hub_examples(columns: dict, task: GlueTask) -> Examples:
    labels = list(columns["label"])
    if not task.labels:
        labels = [float(x) for x in labels]
    elif task.hub_labels is not None:
        labels = [task.labels.index(task.hub_labels[x]) for x in labels]
    pairs = None if task.hub_pair is None else list(columns[task.hub_pair])
    return Examples(list(columns[task.hub_text]), labels, pairs)


def _from_hub(name: str, task: GlueTask, train_limit: int | None, eval_limit: int | None
              ) -> ClassificationData:
    splits = [("train", "train", train_limit)] + [(split, hub, eval_limit) for split, _, hub in task.evals]
    try:
        import datasets

        dataset = datasets.load_dataset("nyu-mll/glue", name)
        columns = {split: dataset[hub][:limit] for split, hub, limit in splits}
    except Exception as exc:  # network, auth, cache and format errors all mean the same to the user
        raise LthError(f"could not download GLUE {name} from the Hugging Face hub ({short_reason(exc)}); "
                       f"pass --data with a local folder in the GLUE TSV layout") from exc
    examples = {split: _hub_examples(cols, task) for split, cols in columns.items()}
    train = examples.pop("train")
    return ClassificationData(name, train, examples, list(task.labels), task.metrics)


def load_glue(name: str, data: str | None, train_limit: int | None = None,
              eval_limit: int | None = None) -> ClassificationData:
    """A GLUE task from a local TSV folder (or the GLUE root above it), or from the hub when data is None."""
    task = _task(name)
    if data is None:
        return _from_hub(name, task, train_limit, eval_limit)
    folder = _task_folder(task, data)
    paths = {split: _tsv(folder, file, task) for split, file, _ in (("train", "train.tsv", ""),) + task.evals}
    examples = {split: _read_split(path, task) for split, path in paths.items()}
    train = examples.pop("train").head(train_limit)
    evals = {split: ex.head(eval_limit) for split, ex in examples.items()}
    return ClassificationData(name, train, evals, list(task.labels), task.metrics)
