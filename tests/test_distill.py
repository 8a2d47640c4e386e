"""Knowledge distillation from the run's dense model: the loss by hand for each task kind, α = 0 equals a plain run,
the teacher's stored outputs are reused and equal recomputed ones, a damaged teacher file is rebuilt."""
import json
import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

import lth
from lth.core import masks
from lth.search.distill import TEACHER, Distilled, distill_loss
from tiny import make_tiny, toy_task

RECIPE = dict(epochs=2, batch_size=8, lr=3e-3, schedule="remaining", rate=0.5, max_sparsity=0.8, precision="fp32",
              threads=1)


def by_hand_kl(student: list[list[float]], teacher: list[list[float]], t: float) -> float:
    """T² · mean over rows of Σ p_teacher (log p_teacher - log p_student), softmax at temperature t."""
    total = 0.0
    for s_row, t_row in zip(student, teacher):
        ps = [math.exp(x / t) for x in s_row]
        pt = [math.exp(x / t) for x in t_row]
        ps = [p / sum(ps) for p in ps]
        pt = [p / sum(pt) for p in pt]
        total += sum(q * (math.log(q) - math.log(p)) for p, q in zip(ps, pt))
    return t * t * total / len(student)


def test_classification_kl_by_hand():
    student, teacher = [[1.0, -0.5, 0.25], [0.0, 2.0, -1.0]], [[0.5, 0.5, -1.0], [1.5, 1.0, 0.0]]
    got = distill_loss(SimpleNamespace(logits=torch.tensor(student)), {"logits": torch.tensor(teacher)}, 2.0, False)
    assert got.item() == pytest.approx(by_hand_kl(student, teacher, 2.0), rel=1e-6)


def test_regression_is_the_squared_error_to_the_teacher():
    got = distill_loss(SimpleNamespace(logits=torch.tensor([[1.0], [3.0]])), {"logits": torch.tensor([[2.0], [0.0]])},
                       2.0, True)
    assert got.item() == pytest.approx((1.0 + 9.0) / 2)


def test_squad_kl_on_start_and_end_leaves_padding_out():
    start, end = [[2.0, 0.0, 1.0, 9.0]], [[0.0, 1.0, 3.0, -9.0]]  # the last position is padding
    t_start, t_end = [[1.0, 1.0, 0.0, -5.0]], [[0.5, 0.0, 2.0, 7.0]]
    student = SimpleNamespace(start_logits=torch.tensor(start), end_logits=torch.tensor(end))
    teacher = {"start_logits": torch.tensor(t_start), "end_logits": torch.tensor(t_end)}
    got = distill_loss(student, teacher, 1.0, False, torch.tensor([[1, 1, 1, 0]]))
    want = (by_hand_kl([start[0][:3]], [t_start[0][:3]], 1.0) + by_hand_kl([end[0][:3]], [t_end[0][:3]], 1.0)) / 2
    assert got.item() == pytest.approx(want, rel=1e-5)


def test_mlm_kl_runs_over_the_masked_positions_and_mixes_with_alpha():
    """Masked-LM's forward returns logits at the masked positions only: the KL averages over those rows."""
    student_logits = torch.tensor([[0.3, 0.1, -0.2, 0.0], [1.0, 0.0, 0.0, 2.0]])
    teacher_logits = torch.tensor([[0.0, 1.0, 0.0, 0.0], [0.5, 0.5, 0.5, 0.5]])
    forward = lambda model, batch, train: SimpleNamespace(  # noqa: E731
        loss=torch.tensor(1.25), logits=student_logits if model == "student" else teacher_logits)
    mixed = Distilled(forward, 0.75, 3.0, False, teacher="teacher", fields=("logits",))("student", {}, True)
    kd = by_hand_kl(student_logits.tolist(), teacher_logits.tolist(), 3.0)
    assert mixed.loss.item() == pytest.approx(0.25 * 1.25 + 0.75 * kd, rel=1e-6)
    assert Distilled(forward, 0.75, 3.0, False, teacher="teacher")("student", {}, False).loss.item() == 1.25


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    root = tmp_path_factory.mktemp("distill")
    train, dev = toy_task(root / "data")
    return {"model": make_tiny(root / "model"), "task": train, "eval": dev, "root": root}


def levels(run: Path) -> dict:
    return {p.parent.name: (json.loads(p.read_text())["metrics"],
                            json.loads((p.parent / "train_loss.json").read_text())["step_losses"])
            for p in sorted(run.glob("level_*/metrics.json"))}


def test_alpha_zero_trains_bit_identically_to_a_plain_run(toy, tmp_path):
    plain = Path(lth.find(model=toy["model"], task=toy["task"], eval=toy["eval"], runs_dir=str(tmp_path), **RECIPE)["run"])
    zero = Path(lth.find(model=toy["model"], task=toy["task"], eval=toy["eval"], runs_dir=str(tmp_path), distill=True,
                         distill_alpha=0.0, **RECIPE)["run"])
    assert plain != zero, "--distill is part of the run's name"
    assert levels(plain) == levels(zero)
    for level in ("level_01", "level_02"):
        a, b = (masks.load(run / level / "mask.safetensors") for run in (plain, zero))
        assert all(torch.equal(a[k], b[k]) for k in a)
    assert (zero / TEACHER).exists() and (zero / "level_00" / "final.safetensors").exists()


def test_the_teacher_is_stored_reused_after_a_resume_and_rebuilt_when_damaged(toy, tmp_path, monkeypatch, capsys):
    import lth.search.distill as distill
    from lth.core.models import load_model
    from lth.core.tensors import load_into, load_tensors
    from lth.search.evaluate import predict

    summary = lth.find(model=toy["model"], task=toy["task"], eval=toy["eval"], runs_dir=str(tmp_path), distill=True,
                       seeds=2, baselines="random-prune", levels="1", **{**RECIPE, "max_sparsity": 0.5})
    run = Path(summary["run"])
    assert summary["teacher"]["metrics"] == summary["levels"][0]["metrics"]
    stored, _ = load_tensors(run / TEACHER)
    # the same as the teacher's outputs computed again from its kept weights, in evaluation mode
    model = load_model(toy["model"], "classification", seed=1, num_labels=2)
    load_into(model, run / "level_00" / "final.safetensors")
    from lth.core.models import load_tokenizer
    from lth.tasks.classify import encode
    from lth.tasks.text import load_text_files
    features = encode(load_text_files(toy["task"], toy["eval"]).train, load_tokenizer(toy["model"]), 128)
    again = torch.from_numpy(np.stack(predict(model, features, 0, 7, "fp32")))
    assert torch.allclose(stored["logits"], again, atol=1e-5)
    # a resume that asks for more reads the stored outputs: the teacher is never computed again
    monkeypatch.setattr(distill.Teacher, "build", lambda self: pytest.fail("the teacher's outputs were recomputed"))
    more = lth.find(model=toy["model"], task=toy["task"], eval=toy["eval"], runs_dir=str(tmp_path), distill=True,
                    seeds=2, baselines="random-prune", levels="1,2", **RECIPE)
    assert len(more["levels"]) == 3
    monkeypatch.undo()
    # damaged: detected when the next distilled unit reads it, and rebuilt from the kept weights, bit-identical
    original = (run / TEACHER).read_bytes()
    (run / TEACHER).write_bytes(original[:-1] + bytes([original[-1] ^ 1]))
    capsys.readouterr()
    lth.find(model=toy["model"], task=toy["task"], eval=toy["eval"], runs_dir=str(tmp_path), distill=True,
             seeds=3, baselines="random-prune", levels="1,2", **RECIPE)
    assert "the teacher's outputs are computed again" in capsys.readouterr().out
    assert (run / TEACHER).read_bytes() == original


def test_distill_flags_are_checked(toy, tmp_path):
    with pytest.raises(lth.LthError, match="need --distill"):
        lth.FindSettings(task="mrpc", distill_alpha=0.9, precision="fp32")
    with pytest.raises(lth.LthError, match="--distill-alpha 1.5"):
        lth.FindSettings(task="mrpc", distill=True, distill_alpha=1.5, precision="fp32")
    with pytest.raises(lth.LthError, match="--distill-temperature 0"):
        lth.FindSettings(task="mrpc", distill=True, distill_temperature=0, precision="fp32")
