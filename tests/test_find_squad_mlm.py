"""SQuAD and masked-LM through the same `lth find` trunk and training loop, on a tiny random BERT."""
import json
import random
from pathlib import Path

import pytest
import torch

import lth
from lth.core import masks
from lth.core.models import load_model, prunable_weights
from tiny import NEGATIVE, NEUTRAL, POSITIVE, make_tiny

WORDS = POSITIVE + NEGATIVE + NEUTRAL


def squad_file(path: Path, articles: int = 6, seed: int = 0) -> str:
    rng = random.Random(seed)
    data = []
    for a in range(articles):
        context = " ".join(rng.choices(WORDS, k=30))
        answer = context.split()[7]
        start = len(" ".join(context.split()[:7])) + 1
        qas = [{"id": f"{a}-{q}", "question": " ".join(rng.choices(WORDS, k=4)),
                "answers": [{"text": answer, "answer_start": start}]} for q in range(4)]
        data.append({"title": f"article {a}", "paragraphs": [{"context": context, "qas": qas}]})
    path.write_text(json.dumps({"data": data, "version": "1.1"}))
    return str(path)


def text_file(path: Path, lines: int, seed: int) -> str:
    rng = random.Random(seed)
    path.write_text("\n".join(" ".join(rng.choices(WORDS, k=rng.randint(5, 20))) for _ in range(lines)) + "\n")
    return str(path)


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return make_tiny(tmp_path_factory.mktemp("m") / "bert")


COMMON = dict(batch_size=8, lr=3e-3, schedule="remaining", rate=0.5, max_sparsity=0.6, precision="fp32", threads=1)


def test_squad_imp_two_levels_with_article_split(model, tmp_path):
    summary = lth.find(model=model, task="squad", data=squad_file(tmp_path / "s.json"), split_articles="4:2",
                       max_length=32, doc_stride=8, epochs=1, runs_dir=str(tmp_path / "runs"), **COMMON)
    assert [round(r["sparsity"], 2) for r in summary["levels"]] == [0.0, 0.5]
    assert summary["primary"] == "f1"
    for r in summary["levels"]:
        assert 0 <= r["metrics"]["f1"] <= 100 and 0 <= r["metrics"]["exact_match"] <= r["metrics"]["f1"] + 1e-9
    notes = json.loads((Path(summary["run"]) / "settings.json").read_text())["notes"]
    assert any("articles 1-4" in n and "articles 5-6" in n for n in notes)


def test_mlm_imp_two_levels_resumes_and_its_mask_fits_a_classifier(model, tmp_path):
    args = dict(model=model, task="mlm", data=text_file(tmp_path / "train.txt", 60, 1),
                eval=text_file(tmp_path / "test.txt", 20, 2), max_length=16, steps=12,
                runs_dir=str(tmp_path / "runs"), **COMMON)
    summary = lth.find(**args)
    assert len(summary["levels"]) == 2 and summary["primary"] == "masked_accuracy"
    for r in summary["levels"]:
        assert 0 <= r["metrics"]["masked_accuracy"] <= 1 and r["metrics"]["perplexity"] > 1
    run = Path(summary["run"])
    assert any("no MLM head" in n for n in json.loads((run / "settings.json").read_text())["notes"])
    assert lth.find(**args)["levels"] == summary["levels"], "a rerun resumes, it does not retrain"
    mask = masks.load(run / "level_01" / "mask.safetensors")
    classifier = load_model(model, "classification", seed=0, num_labels=2)
    weights = prunable_weights(classifier)
    masks.check(mask, weights)  # same keys, same shapes: no renaming
    masks.apply_(weights, mask)
    assert masks.sparsity(mask) == pytest.approx(0.5, abs=1e-3)
    assert all(torch.count_nonzero(weights[k][~m]) == 0 for k, m in mask.items())


def test_mlm_needs_both_files(model, tmp_path):
    with pytest.raises(lth.LthError, match="--task mlm needs --eval"):
        lth.find(model=model, task="mlm", data=text_file(tmp_path / "t.txt", 5, 0), runs_dir=str(tmp_path))
    with pytest.raises(lth.LthError, match="--task mlm needs --data"):
        lth.find(model=model, task="mlm", runs_dir=str(tmp_path))


def test_squad_and_mlm_train_with_a_teacher(model, tmp_path):
    """--distill through every task kind: SQuAD's teacher outputs are stored per token (its windows padded), the
    masked-LM teacher runs beside the student; both differ from the plain run and alpha=0 equals it."""
    from lth.core.tensors import load_tensors
    from lth.search.distill import TEACHER

    squad = dict(model=model, task="squad", data=squad_file(tmp_path / "s.json"), split_articles="4:2", max_length=32,
                 doc_stride=8, epochs=1, runs_dir=str(tmp_path / "runs"), **COMMON)
    mlm = dict(model=model, task="mlm", data=text_file(tmp_path / "train.txt", 60, 1),
               eval=text_file(tmp_path / "test.txt", 20, 2), max_length=16, steps=12, runs_dir=str(tmp_path / "runs"),
               **COMMON)
    for args in (squad, mlm):
        plain, taught, zero = (lth.find(**args, **extra) for extra in
                               ({}, {"distill": True, "distill_alpha": 0.9}, {"distill": True, "distill_alpha": 0.0}))
        assert taught["levels"][0] == {**plain["levels"][0], "seconds": taught["levels"][0]["seconds"]}, \
            "the teacher (level 0) trains without one"
        losses = [json.loads((Path(r["run"]) / "level_01" / "train_loss.json").read_text())["step_losses"]
                  for r in (plain, taught, zero)]
        assert losses[1] != losses[0] and losses[2] == losses[0], "the teacher changes the loss; alpha=0 does not"
        assert zero["levels"][1]["metrics"] == plain["levels"][1]["metrics"]
    stored, _ = load_tensors(Path(lth.find(**squad, distill=True, distill_alpha=0.9)["run"]) / TEACHER)
    assert set(stored) == {"start_logits", "end_logits"} and stored["start_logits"].shape[1] <= 32
    assert not (Path(lth.find(**mlm, distill=True, distill_alpha=0.9)["run"]) / TEACHER).exists(), \
        "masked-LM's inputs change every step: its teacher is not stored"


@pytest.mark.parametrize("search", ["early-bird", "gradual"])
def test_squad_and_mlm_draw_their_masks_with_the_cheaper_searches(model, tmp_path, search):
    squad = lth.find(model=model, task="squad", data=squad_file(tmp_path / "s.json"), split_articles="4:2",
                     max_length=32, doc_stride=8, epochs=1, runs_dir=str(tmp_path / "runs"), search=search, **COMMON)
    mlm = lth.find(model=model, task="mlm", data=text_file(tmp_path / "train.txt", 60, 1),
                   eval=text_file(tmp_path / "test.txt", 20, 2), max_length=16, steps=12,
                   runs_dir=str(tmp_path / "runs"), search=search, draw_every=3, **COMMON)
    for summary in (squad, mlm):
        run = Path(summary["run"])
        drawn = json.loads((run / "draw.json").read_text())
        assert drawn["search"] == search and [r["level"] for r in drawn["levels"]] == [1]
        assert masks.sparsity(masks.load(run / "level_01" / "mask.safetensors")) == pytest.approx(0.5, abs=1e-3)
        assert [r["level"] for r in summary["levels"]] == [0, 1] and summary["time_to_ticket"][0]["level"] == 1
