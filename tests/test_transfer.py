"""Transfer: a ticket found on one task trained on another, on tiny random BERTs, checked against training the
same mask by hand through the same loop."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch

import lth
from lth.cli import main
from lth.core import masks
from lth.core.models import load_model, load_tokenizer, prunable_weights
from lth.core.tensors import load_into
from lth.search.evaluate import predict
from lth.search.train import Recipe, finetune
from lth.tasks.classify import encode
from lth.tasks.text import load_text_files
from test_find_squad_mlm import squad_file, text_file
from tiny import make_tiny, sentiment_rows, toy_task, write_csv

RECIPE = dict(epochs=3, batch_size=8, lr=3e-3, schedule="remaining", rate=0.5, max_sparsity=0.8, precision="fp32",
              threads=1)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A tiny model, a classification and a regression task, and an MLM run and a classification run on it."""
    root = tmp_path_factory.mktemp("transfer")
    model = make_tiny(root / "model")
    train, dev = toy_task(root / "data")
    scores = [(text, float(label) * 4 + 0.5 + (i % 3) / 10) for i, (text, label) in enumerate(sentiment_rows(96, 3))]
    regression = write_csv(root / "data" / "scores.csv", scores)
    runs = root / "runs"
    mlm = lth.find(model=model, task="mlm", data=text_file(root / "wiki.txt", 60, 1), eval=text_file(root / "t.txt", 20, 2),
                   max_length=16, steps=12, runs_dir=str(runs), **{**RECIPE, "epochs": 1})
    toy = lth.find(model=model, task=train, runs_dir=str(runs), seeds=2, levels="1", **RECIPE)  # 10% held out
    return {"root": root, "model": model, "train": train, "eval": dev, "regression": regression,
            "runs": runs, "mlm": Path(mlm["run"]), "toy": Path(toy["run"])}


def target_flags(world, **kw) -> dict:
    return dict(model=world["model"], runs_dir=str(world["runs"]), seeds=2, **RECIPE, **kw)


@pytest.mark.slow
def test_a_transfer_equals_training_the_mask_by_hand(world, monkeypatch):
    import lth.search.search as search

    optimizers, checked = [], []
    real_step, real_finetune = torch.optim.AdamW.step, search.finetune

    def spy(self, *a, **k):
        optimizers.append(self)
        return real_step(self, *a, **k)

    def check_exact(model, mask, *args, **kw):  # after a transfer: pruned weights and their Adam moments are zero
        losses = real_finetune(model, mask, *args, **kw)
        if kw["desc"].startswith("transfer"):
            params = dict(model.named_parameters())
            for name, keep in mask.items():
                moments = optimizers[-1].state[params[name]]
                assert torch.count_nonzero(params[name][~keep]) == 0
                assert torch.count_nonzero(moments["exp_avg"][~keep]) == 0
                assert torch.count_nonzero(moments["exp_avg_sq"][~keep]) == 0
            checked.append(kw["desc"])
        return losses

    monkeypatch.setattr(torch.optim.AdamW, "step", spy)
    monkeypatch.setattr(search, "finetune", check_exact)
    out = lth.transfer(str(world["mlm"]), task=world["train"], level=1, **target_flags(world))
    monkeypatch.undo()
    assert len(checked) == 2, "both seeds of the transfer were trained and checked"
    summary = out["targets"][world["train"]]
    run = Path(summary["run"])
    assert run == world["toy"], "the transfer is a branch of the target's own run"
    (fingerprint, entry), = summary["transfers"].items()
    assert entry["sources"][0]["label"] == f"{world['mlm'].name} level 1" and entry["level"] == 1
    source = masks.load(world["mlm"] / "level_01" / "mask.safetensors")
    stored = masks.load(run / "branches" / "transfer" / fingerprint / "mask.safetensors")
    assert stored.keys() == source.keys() and all(torch.equal(stored[k], source[k]) for k in source)
    # by hand: the target's θ0, the mask, the same recipe and seed, the same loop and score
    model = load_model(world["model"], "classification", seed=1, num_labels=2)
    load_into(model, run / "init.safetensors")
    masks.apply_(prunable_weights(model), source)
    tokenizer = load_tokenizer(world["model"])
    data = load_text_files(world["train"], None, seed=1)  # the search's split: 10% held out with its seed
    losses = finetune(model, source, encode(data.train, tokenizer, 128), Recipe(batch_size=8, lr=3e-3, epochs=3, seed=2),
                      tokenizer.pad_token_id, world["root"] / "by-hand.pt")
    logits = np.stack(predict(model, encode(data.evals["dev"], tokenizer, 128), tokenizer.pad_token_id, 128, "fp32"))
    unit = run / "branches" / "transfer" / fingerprint / "seed_2"
    assert json.loads((unit / "train_loss.json").read_text())["step_losses"] == [round(x, 6) for x in losses]
    accuracy = float((logits.argmax(-1) == np.array(data.evals["dev"].labels)).mean())
    assert json.loads((unit / "metrics.json").read_text())["metrics"]["accuracy"] == pytest.approx(accuracy)
    # judged like a ticket: its table has the full model, the target's own level-1 ticket and random masks
    row = entry["table"]["levels"]["0.500000"]
    assert len(row["imp"]) == 2 and len(row["own-ticket"]) == 2 and len(row["random-prune"]) == 2
    assert len(entry["table"]["full"]) == 2 and set(entry["verdict"]["winning"]["accuracy"]) == {"1sigma", "strict"}


def test_a_mask_of_another_base_with_the_same_shapes_is_refused(world, tmp_path):
    other = make_tiny(tmp_path / "other", seed=7)  # same config, other weights
    with pytest.raises(lth.LthError, match="was found on another base model"):
        lth.transfer(str(world["mlm"]), task=world["train"], level=1,
                     **{**target_flags(world), "model": other, "runs_dir": str(tmp_path)})
    assert not list(tmp_path.rglob("branches")), "nothing is trained for a refused source"


@pytest.mark.slow
def test_a_qa_mask_keeps_the_classifier_pooler_dense_and_says_so(world, tmp_path, capsys):
    squad = lth.find(model=world["model"], task="squad", data=squad_file(tmp_path / "s.json"), split_articles="4:2",
                     max_length=32, doc_stride=8, runs_dir=str(tmp_path), **{**RECIPE, "epochs": 1})
    capsys.readouterr()
    out = lth.transfer(squad["run"], task=world["train"], sparsity=0.5, **target_flags(world))
    printed = capsys.readouterr().out
    assert "not in the mask and stay dense: bert.pooler.dense.weight" in printed
    assert "--sparsity 0.5 -> level 1 (50%), the nearest" in printed
    (fingerprint, entry), = [(k, v) for k, v in out["targets"][world["train"]]["transfers"].items()
                             if v["sources"][0]["run"] == squad["run"]]
    mask = masks.load(Path(out["targets"][world["train"]]["run"]) / "branches" / "transfer" / fingerprint /
                      "mask.safetensors")
    assert mask["bert.pooler.dense.weight"].all() and entry["level"] is None, "a dense pooler: no level's sparsity"
    assert entry["sparsity"] < 0.5 and len(entry["table"]["levels"][f"{entry['sparsity']:.6f}"]["random-prune"]) == 2


@pytest.mark.slow
def test_the_mlm_ticket_applies_to_regression_and_squad_heads(world, tmp_path):
    out = lth.transfer(str(world["mlm"]), task=world["regression"], level=1, **target_flags(world))
    summary = out["targets"][world["regression"]]
    assert summary["primary"] == "pearson" and len(summary["transfers"]) == 1
    squad = lth.transfer(str(world["mlm"]), task="squad", level=2, data=squad_file(tmp_path / "s.json"),
                         split_articles="4:2", max_length=32, doc_stride=8,
                         **{**target_flags(world), "runs_dir": str(tmp_path), "seeds": 1, "epochs": 1})
    (entry,) = squad["targets"]["squad"]["transfers"].values()
    assert entry["sparsity"] == pytest.approx(0.75, abs=0.01) and entry["sparsity"] != pytest.approx(0.75, abs=1e-6)
    assert "are not prunable here and are ignored: bert.pooler.dense.weight" in entry["notes"][0]  # QA: no pooler
    assert squad["matrix"]["cells"][0]["metric"] == "f1"


@pytest.mark.slow
def test_an_interrupted_transfer_resumes_to_the_same_result(world, tmp_path, monkeypatch):
    import lth.search.search as search

    flags = {**target_flags(world), "runs_dir": str(tmp_path / "a")}
    straight = lth.transfer(str(world["mlm"]), task=world["train"], level=2, **flags)
    real, calls = search.finetune, []

    def interrupt_the_transfer(*args, **kw):
        calls.append(kw["desc"])
        if kw["desc"].startswith("transfer"):
            def stop(step):
                if step == 20:
                    raise KeyboardInterrupt
            kw["on_step"] = stop
        return real(*args, **kw)

    flags["runs_dir"] = str(tmp_path / "b")
    monkeypatch.setattr(search, "finetune", interrupt_the_transfer)
    with pytest.raises(KeyboardInterrupt):
        lth.transfer(str(world["mlm"]), task=world["train"], level=2, **flags)
    assert len(list((tmp_path / "b").rglob("transfer/*/seed_*/checkpoint.pt"))) == 1
    monkeypatch.setattr(search, "finetune", real)
    resumed = lth.transfer(str(world["mlm"]), task=world["train"], level=2, **flags)
    strip = lambda out: {k: v for k, v in out["targets"][world["train"]]["transfers"].items()}
    assert json.dumps(strip(resumed)) == json.dumps(strip(straight))


def test_a_matrix_of_two_sources_and_two_targets_fills_every_cell(world, tmp_path, capsys):
    out_json = tmp_path / "matrix.json"
    code = main(["transfer", str(world["mlm"]), str(world["toy"]), "--task", f"{world['train']},{world['regression']}",
                 "--level", "1", "--model", world["model"], "--runs-dir", str(world["runs"]), "--seeds", "2",
                 "--epochs", "3", "--batch-size", "8", "--lr", "3e-3", "--schedule", "remaining", "--rate", "0.5",
                 "--precision", "fp32", "--threads", "1", "--json", str(out_json)])
    assert code == 0
    cells = json.loads(out_json.read_text())["cells"]
    assert len(cells) == 4 and all(c["ticket"] and c["ticket"]["n"] >= 1 and c["full"]["n"] == 2 for c in cells)
    own = [c for c in cells if c["kind"] == "own ticket"]
    assert len(own) == 1 and own[0]["source"] == f"{world['toy'].name} level 1" and own[0]["target"] == "train"
    printed = capsys.readouterr().out
    assert "source \\ target" in printed and "(own)" in printed and "full model" in printed


@pytest.mark.parametrize("args, message", [
    (["nowhere", "--task", "mrpc"], "no such run directory or mask file"),
    (["{mlm}", "--task", "mrpc"], "say which of its masks to transfer with --level N or --sparsity S"),
    (["{mlm}", "--task", "mrpc", "--level", "7"], "has no finished mask at level 7"),
    (["{mlm}", "--task", "mrpc", "--sparsity", "1.5"], "each must be a fraction in (0, 1)"),
    (["{mlm}", "--task", "mrpc", "--level", "x"], "give numbers separated by commas"),
])
def test_bad_transfer_input_is_one_line(world, capsys, args, message):
    args = [a.format(mlm=world["mlm"]) for a in args]
    assert main(["transfer", *args, "--runs-dir", str(world["runs"])]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("lth: error:") and message in err and len(err.splitlines()) == 1
