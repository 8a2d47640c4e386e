"""`lth speed --data`: every timed engine scored on the ticket's dev set, checked against the exported model scored
here by hand; and the errors that name a wrong --data or a task it cannot score."""
import csv
import re
from pathlib import Path

import pytest
import torch

import lth
from lth.cli import main
from tiny import make_tiny


@pytest.fixture(scope="module")
def rte_ticket(tmp_path_factory, shared_data):
    root = tmp_path_factory.mktemp("devspeed")
    glue = str(Path(shared_data) / "glue")
    run = lth.find(model=make_tiny(root / "model"), task="rte", data=glue, train_limit=32, eval_limit=16, epochs=1,
                   batch_size=8, lr=3e-3, levels=1, runs_dir=str(root / "runs"), precision="fp32", threads=1)["run"]
    lth.export(run, root / "ticket", level=1)
    return {"to": root / "ticket", "glue": glue}


def by_hand(export: Path, glue: str) -> float:
    """The exported model's accuracy on all of RTE's dev pairs, one pair at a time."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(export / "model")
    model = AutoModelForSequenceClassification.from_pretrained(export / "model").eval()
    names = model.config.label2id
    right = total = 0
    with open(Path(glue) / "RTE" / "dev.tsv", newline="") as handle:
        for row in csv.DictReader(handle, delimiter="\t", quoting=csv.QUOTE_NONE):
            batch = tokenizer(row["sentence1"], row["sentence2"], truncation=True, max_length=128, return_tensors="pt")
            with torch.no_grad():
                right += int(model(**batch).logits.argmax(-1).item() == names[row["label"]])
            total += 1
    return right / total


@pytest.mark.slow
@pytest.mark.subprocess
def test_speed_scores_every_engine_on_the_dev_set(rte_ticket, capsys):
    assert main(["speed", str(rte_ticket["to"]), "--data", rte_ticket["glue"], "--batch-size", "2", "--length", "16",
                 "--repeats", "1", "--threads", "1", "--precision", "fp32"]) == 0
    out = capsys.readouterr().out
    table = out[out.index("dev set (accuracy; points against torch fp32):"):]
    scores = {m.group(1).strip(): (float(m.group(2)), float(m.group(3)))
              for m in re.finditer(r"^  (.+?)\s+(\d\.\d{4})\s+([+-]\d+\.\d\d)$", table, re.M)}
    for engine in ("torch fp32", "torch bf16", "onnxruntime fp32", "onnxruntime int8 (dynamic)", "openvino f32",
                   "openvino bf16", "openvino int8 (nncf)", "lth sparse (native, fp32)"):
        assert engine in scores, engine
    expected = by_hand(rte_ticket["to"], rte_ticket["glue"])
    assert scores["torch fp32"] == (pytest.approx(expected, abs=5e-5), 0.0)
    assert scores["lth sparse (native, fp32)"][0] == pytest.approx(expected, abs=5e-5)  # fp32: the model's outputs
    for accuracy, moved in scores.values():
        assert moved == pytest.approx(100 * (accuracy - expected), abs=0.01)
    assert "calibrated on 100 training sentences of the task" in out


def test_speed_names_a_wrong_data_folder_and_a_task_it_cannot_score(shared_data, tmp_path):
    from lth.search.devspeed import ticket_task

    (tmp_path / "ticket.json").write_text('{"task": "rte"}')
    assert len(ticket_task(tmp_path, str(Path(shared_data) / "glue")).data.evals["dev"].labels) == 277
    with pytest.raises(lth.LthError, match="RTE"):
        ticket_task(tmp_path, str(tmp_path))  # no RTE folder there: named before any engine is timed
    (tmp_path / "ticket.json").write_text('{"task": "train"}')  # an export of the user's own files
    with pytest.raises(lth.LthError, match="not an export of a GLUE or demo classification task"):
        ticket_task(tmp_path, str(Path(shared_data) / "glue"))
