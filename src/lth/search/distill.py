"""Knowledge distillation from the run's own dense fine-tuned model, the teacher: level 0 of the search (its seed),
trained without a teacher, its weights kept in level_00/final.safetensors.

    loss = (1 - α) · task loss + α · T² · KL(softmax(teacher / T) ‖ softmax(student / T))

for classification (regression: the squared error to the teacher's score; SQuAD: the KL on start and on end
logits, averaged; masked-LM: the KL over the vocabulary at the masked positions). Where a training example is the
same every epoch, the teacher's outputs on it (evaluation mode, no dropout) are computed once and stored in the run
(teacher.safetensors, checksummed; rebuilt from the kept weights when damaged): a step then costs what a plain
step costs. Masked-LM masks tokens afresh every step, so its teacher runs beside the student (one forward more a
step, without gradients)."""
from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..core.batches import ROW
from ..core.console import say
from ..core.files import DamagedFile
from ..core.tensors import load_into, load_tensors, save_tensors, verify_tensors
from .evaluate import predict
from .train import model_forward

TEACHER = "teacher.safetensors"
PAD = -1e4  # a sequence position past a row's end: no probability for teacher or student


def kl(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """T² · KL(softmax(teacher / T) ‖ softmax(student / T)), averaged over the rows."""
    return F.kl_div(F.log_softmax(student.float() / temperature, -1), F.log_softmax(teacher.float() / temperature, -1),
                    log_target=True, reduction="batchmean") * temperature ** 2


def distill_loss(student, teacher: dict[str, torch.Tensor], temperature: float, regression: bool,
                 mask: torch.Tensor | None = None) -> torch.Tensor:
    """The distillation term of a batch: `student` a model output, `teacher` its outputs by field; `mask` (batch x
    tokens), given for per-token outputs (SQuAD), leaves out padded positions."""
    if regression:
        return F.mse_loss(student.logits.float().reshape(-1), teacher["logits"].float().reshape(-1))
    terms = []
    for name, target in teacher.items():
        mine = getattr(student, name)
        if mask is not None:  # per token: the batch's width, past each row's end left out
            mine = mine.masked_fill(mask == 0, PAD)
            target = target[:, :mine.shape[1]].masked_fill(mask == 0, PAD)
        terms.append(kl(mine, target, temperature))
    return sum(terms) / len(terms)


class Distilled:
    """A task's training forward with the distillation term mixed into its loss (evaluation is left alone).

    `stored`: the teacher's outputs by field, one row per training feature (looked up by the batch's ROW); or
    `teacher`: the teacher model itself, run on the same batch."""

    def __init__(self, forward, alpha: float, temperature: float, regression: bool,
                 stored: dict[str, torch.Tensor] | None = None, teacher=None, fields: tuple[str, ...] = ("logits",),
                 per_token: bool = False):
        self.forward, self.alpha, self.temperature, self.regression = forward, alpha, temperature, regression
        self.stored, self.teacher, self.fields, self.per_token = stored, teacher, fields, per_token

    def __call__(self, model, batch: dict, train: bool):
        if not train or self.alpha == 0:
            return self.forward(model, batch, train)
        out = self.forward(model, batch, train)
        if self.stored is not None:
            rows = batch[ROW].cpu()
            targets = {k: v[rows].to(out.loss.device) for k, v in self.stored.items()}
        else:
            with torch.no_grad():
                found = self.forward(self.teacher, batch, True)
            targets = {k: getattr(found, k).detach() for k in self.fields}
        mask = batch["attention_mask"] if self.per_token else None
        term = distill_loss(out, targets, self.temperature, self.regression, mask)
        out.loss = (1 - self.alpha) * out.loss + self.alpha * term
        return out


class Teacher:
    """The teacher of one run: its outputs, stored or computed, and the forward a distilled unit trains with."""

    def __init__(self, search):
        self.search = search
        self.path: Path = search.run / TEACHER
        self.weights: Path = search.run / "level_00" / "final.safetensors"

    def check(self) -> None:
        """A damaged stored file is deleted (with a note): the next unit that needs it computes it again."""
        if self.path.exists():
            try:
                verify_tensors(self.path)
            except DamagedFile as damage:
                say(f"note: {damage.path} is damaged; deleted it: the teacher's outputs are computed again from its "
                    "kept weights when a unit needs them")
                self.path.unlink()

    def build(self) -> None:
        """Store the teacher's outputs on the training features; search.model holds the teacher's weights."""
        if not self.search.task.fixed_inputs:
            return
        s, task = self.search.s, self.search.task
        outputs = predict(self.search.model, self.search.train, self.search.pad_id, s.eval_batch_size, s.precision,
                          lambda batch, out: _rows(batch, out, task.distilled, task.distilled_per_token),
                          desc="teacher outputs",
                          forward=task.forward, ranks=self.search.ranks)
        save_tensors({name: _stack([row[name] for row in outputs]) for name in task.distilled}, self.path,
                     {"examples": str(len(outputs))})

    def forward(self):
        """The distilled training forward, reading (or rebuilding) the stored outputs, or loading the teacher."""
        task, s = self.search.task, self.search.s
        base = task.forward or model_forward
        if task.fixed_inputs:
            return Distilled(base, s.distill_alpha, s.distill_temperature, task.regression, stored=self.outputs(),
                             per_token=task.distilled_per_token)
        teacher = copy.deepcopy(self.search.model)
        load_into(teacher, self.weights)
        teacher.eval().requires_grad_(False)
        return Distilled(base, s.distill_alpha, s.distill_temperature, task.regression, teacher=teacher,
                         fields=task.distilled)

    def outputs(self) -> dict[str, torch.Tensor]:
        try:
            stored, _ = load_tensors(self.path)
            if any(len(v) != len(self.search.train) for v in stored.values()) or set(stored) != set(
                    self.search.task.distilled):
                raise DamagedFile(self.path, "it does not hold one row per training example")
            return stored
        except (DamagedFile, FileNotFoundError) as damage:
            say(f"note: {damage if isinstance(damage, DamagedFile) else self.path}: the teacher's outputs are "
                "computed again from its kept weights")
            self.rebuild()
            return load_tensors(self.path)[0]

    def rebuild(self) -> None:
        """The stored outputs again, from the teacher's kept weights (the search's model is rewound by every unit)."""
        load_into(self.search.model, self.weights)
        self.build()


def _rows(batch: dict, output, fields: tuple[str, ...], per_token: bool) -> list[dict]:
    """Per example, each distilled output (per-token ones trimmed to the example's length)."""
    lengths = batch["attention_mask"].sum(1).tolist()
    return [{name: (getattr(output, name)[i, :n] if per_token else getattr(output, name)[i]).float().numpy()
             for name in fields} for i, n in enumerate(lengths)]


def _stack(rows: list[np.ndarray]) -> torch.Tensor:
    """Rows of equal width stacked; of unequal width (per token), padded with PAD."""
    width = max(len(r) if r.ndim else 1 for r in rows)
    if all((len(r) if r.ndim else 1) == width for r in rows):
        return torch.from_numpy(np.stack(rows)).float()
    out = torch.full((len(rows), width), PAD)
    for i, r in enumerate(rows):
        out[i, :len(r)] = torch.from_numpy(r)
    return out


