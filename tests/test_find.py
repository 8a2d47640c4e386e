"""End-to-end ticket searches on a tiny random BERT: resume, reproducibility, interruption, bad input."""
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import lth
from lth.cli import main
from lth.core import masks
from tiny import make_tiny, toy_task

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    root = tmp_path_factory.mktemp("toy")
    train, dev = toy_task(root / "data")
    return {"model": make_tiny(root / "model"), "task": train, "eval": dev}


def settings(toy, runs, **kw):
    base = dict(toy, runs_dir=str(runs), epochs=2, batch_size=8, lr=3e-3, schedule="remaining", rate=0.5,
                max_sparsity=0.8, precision="fp32", threads=1)
    return {**base, **kw}


def run_masks(run: str) -> dict:
    return {p.parent.name: masks.load(p) for p in sorted(Path(run).glob("level_*/mask.safetensors"))}


def test_find_reports_every_level_and_writes_the_run(toy, tmp_path):
    summary = lth.find(**settings(toy, tmp_path))
    assert [round(r["sparsity"], 3) for r in summary["levels"]] == [0.0, 0.5, 0.75]
    run = Path(summary["run"])
    on_disk = json.loads((run / "summary.json").read_text())
    assert on_disk["levels"] == summary["levels"] and on_disk["primary"] == "accuracy"
    for level in summary["levels"]:
        assert set(level["metrics"]) == {"accuracy", "f1"}
    assert not list(run.rglob("checkpoint.pt")), "finished levels keep no checkpoint"
    assert not list(run.rglob("*.tmp")), "no half-written files"


def test_rerun_resumes_without_training_and_extends(toy, tmp_path, monkeypatch):
    first = lth.find(**settings(toy, tmp_path))

    def no_training(*a, **k):
        raise AssertionError("a finished level was trained again")

    monkeypatch.setattr("lth.search.search.finetune", no_training)
    again = lth.find(**settings(toy, tmp_path))
    assert again["levels"] == first["levels"] and again["run"] == first["run"]
    monkeypatch.undo()
    more = lth.find(**settings(toy, tmp_path, max_sparsity=0.9))  # same run, one more level
    assert more["run"] == first["run"] and len(more["levels"]) == 4
    assert more["levels"][:3] == first["levels"]


@pytest.mark.slow
def test_same_command_twice_gives_same_masks_and_other_settings_another_run(toy, tmp_path):
    a = lth.find(**settings(toy, tmp_path / "a"))
    b = lth.find(**settings(toy, tmp_path / "b"))
    assert Path(a["run"]).name == Path(b["run"]).name
    ma, mb = run_masks(a["run"]), run_masks(b["run"])
    assert ma.keys() == mb.keys() and all(
        torch.equal(ma[lvl][k], mb[lvl][k]) for lvl in ma for k in ma[lvl])
    assert [r["metrics"] for r in a["levels"]] == [r["metrics"] for r in b["levels"]]
    c = lth.find(**settings(toy, tmp_path / "a", lr=1e-3))
    assert Path(c["run"]).name != Path(a["run"]).name
    assert len(list((tmp_path / "a").iterdir())) == 2, "a different setting must not overwrite a run"


KILL_AFTER_SECOND_CHECKPOINT_OF_LEVEL_1 = """
import os, signal, sys
import lth.search.train as train
from lth.cli import main
original, saves = train.save_checkpoint, []
def save_then_die(obj, path):
    original(obj, path)
    if "level_01" in str(path):
        saves.append(path)
        if len(saves) == 2:
            os.kill(os.getpid(), signal.SIGKILL)  # no cleanup, like a power cut
train.save_checkpoint = save_then_die
sys.exit(main(sys.argv[1:]))
"""


def cli_args(toy, runs):
    return ["find", "--model", toy["model"], "--task", toy["task"], "--eval", toy["eval"], "--runs-dir", str(runs),
            "--epochs", "3", "--batch-size", "8", "--lr", "3e-3", "--schedule", "remaining", "--rate", "0.5",
            "--max-sparsity", "0.8", "--precision", "fp32", "--threads", "1"]


@pytest.mark.slow
@pytest.mark.subprocess
def test_killed_mid_level_then_rerun_equals_uninterrupted(toy, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "TQDM_DISABLE": "1"}
    straight = subprocess.run([sys.executable, "-m", "lth", *cli_args(toy, tmp_path / "a")], env=env,
                              capture_output=True, text=True)
    assert straight.returncode == 0, straight.stderr
    killed = subprocess.run([sys.executable, "-c", KILL_AFTER_SECOND_CHECKPOINT_OF_LEVEL_1,
                             *cli_args(toy, tmp_path / "b")], env=env, capture_output=True, text=True)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    run_b = next((tmp_path / "b").iterdir())
    assert (run_b / "level_01" / "checkpoint.pt").exists() and not (run_b / "level_01" / "metrics.json").exists()
    resumed = subprocess.run([sys.executable, "-m", "lth", *cli_args(toy, tmp_path / "b")], env=env,
                             capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    run_a = next((tmp_path / "a").iterdir())
    ma, mb = run_masks(run_a), run_masks(run_b)
    assert ma.keys() == mb.keys()
    assert all(torch.equal(ma[lvl][k], mb[lvl][k]) for lvl in ma for k in ma[lvl])
    metrics = lambda run: [json.loads(p.read_text())["metrics"] for p in sorted(run.glob("level_*/metrics.json"))]
    assert metrics(run_a) == metrics(run_b)


def test_rewind_step_saves_and_uses_the_later_point(toy, tmp_path):
    summary = lth.find(**settings(toy, tmp_path, rewind_step=3, max_sparsity=0.5))
    run = Path(summary["run"])
    assert (run / "rewind_step_3.safetensors").exists() and len(summary["levels"]) == 2
    with pytest.raises(lth.LthError, match="rewind-step"):
        lth.find(**settings(toy, tmp_path, rewind_step=10_000))


def test_layerwise_strategy_gives_equal_per_matrix_sparsity(toy, tmp_path):
    summary = lth.find(**settings(toy, tmp_path, strategy="layerwise", max_sparsity=0.5))
    mask = masks.load(Path(summary["run"]) / "level_01" / "mask.safetensors")
    assert all(abs(1 - m.float().mean().item() - 0.5) < 0.01 for m in mask.values())


@pytest.mark.slow
def test_a_mask_from_another_model_is_refused(toy, tmp_path):
    other = make_tiny(tmp_path / "other", hidden=48)
    runs = tmp_path / "runs"
    run = Path(lth.find(**settings(toy, runs, max_sparsity=0.5))["run"])
    other_run = Path(lth.find(**settings(dict(toy, model=other), runs, max_sparsity=0.5))["run"])
    # plant the other model's level-1 mask into an unfinished level of this run
    (run / "level_01" / "metrics.json").unlink()
    (run / "level_01" / "mask.safetensors").write_bytes((other_run / "level_01" / "mask.safetensors").read_bytes())
    with pytest.raises(lth.LthError, match="does not fit this model"):
        lth.find(**settings(toy, runs, max_sparsity=0.5))
    assert (run / "level_00" / "metrics.json").exists(), "finished work must survive a bad input"


@pytest.mark.parametrize("flags, message", [
    (["--max-sparsity", "1.2"], "--max-sparsity 1.2 is outside its range: it must be in [0, 1)"),
    (["--rate", "0"], "--rate 0.0 is outside its range: it must be in (0, 1)"),
    (["--task", "nosuchtask"], "unknown task 'nosuchtask'"),
    (["--task", "rte", "--data", "/no/such/folder"], "/no/such/folder"),
    (["--model", "/no/such/model"], "no such folder"),
    (["--label-column", "stars"], "--label-column"),
])
def test_bad_input_one_clear_line(toy, tmp_path, capsys, flags, message):
    base = ["find", "--model", toy["model"], "--task", toy["task"], "--runs-dir", str(tmp_path)]
    assert main(base + flags) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("lth: error:") and message in err and "Traceback" not in err
    assert len(err.splitlines()) == 1


def test_malformed_tsv_row_names_file_and_line(tmp_path, capsys):
    rte = tmp_path / "RTE"
    rte.mkdir()
    good = "0\tA man sleeps.\tA man is asleep.\tentailment\n"
    (rte / "train.tsv").write_text("index\tsentence1\tsentence2\tlabel\n" + good + "1\tonly two\tfields\n")
    (rte / "dev.tsv").write_text("index\tsentence1\tsentence2\tlabel\n" + good)
    assert main(["find", "--task", "rte", "--data", str(rte), "--runs-dir", str(tmp_path / "runs")]) == 2
    err = capsys.readouterr().err
    assert "train.tsv:3" in err and "Traceback" not in err


def test_help_explains_every_flag(capsys):
    with pytest.raises(SystemExit):
        main(["find", "--help"])
    out = capsys.readouterr().out
    for flag in ["--model", "--task", "--data", "--schedule", "--rate", "--max-sparsity", "--levels", "--strategy",
                 "--include", "--exclude", "--rewind-step", "--precision", "--train-limit", "--runs-dir"]:
        assert flag in out


def test_a_matrix_pruned_away_is_reported(toy, tmp_path, capsys, monkeypatch):
    # Shrink one matrix of the rewind point so that global magnitude pruning removes all of it.
    import lth.search.search as imp

    original = imp._restore_or_save

    def shrink_pooler(model, path, recorded, *rest):
        with torch.no_grad():
            model.bert.pooler.dense.weight.mul_(1e-6)
        return original(model, path, recorded, *rest)  # saved as θ0, so every rewind brings the tiny pooler back

    monkeypatch.setattr(imp, "_restore_or_save", shrink_pooler)
    # a tiny lr: Adam's first steps (~lr each) would otherwise give the pooler ordinary magnitudes again
    lth.find(**settings(toy, tmp_path, max_sparsity=0.5, lr=1e-7))
    out = capsys.readouterr().out
    assert "warning: level 1 keeps 0.0% of bert.pooler.dense.weight" in out
