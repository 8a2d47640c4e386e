"""Seeds and baselines as branches of one search: what each trains, resuming, sharing a run, `lth verdict`."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import lth
from lth.cli import main
from lth.core import masks
from lth.core.pruning import prune
from lth.run.layout import branch_dir
from lth.run.records import collect_results
from lth.run.settings import find_settings, parse_levels
from lth.search.queue import Claim
from tiny import make_tiny, toy_task

REPO = Path(__file__).resolve().parents[1]
# 8 epochs at 3e-3 is where the toy task's results differ between seeds and baselines (some runs learn it,
# some predict one class), so comparing results between two runs can fail.
FLAGS = dict(epochs=8, batch_size=8, lr=3e-3, schedule="remaining", rate=0.5, max_sparsity=0.8,
             precision="fp32", threads=1, seeds=2, baselines="all")


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    root = tmp_path_factory.mktemp("toy")
    train, dev = toy_task(root / "data")
    return {"model": make_tiny(root / "model"), "task": train, "eval": dev}


@pytest.fixture(scope="module")
def reference(toy, tmp_path_factory):
    """One uninterrupted run with 2 seeds and every baseline."""
    return lth.find(**toy, runs_dir=str(tmp_path_factory.mktemp("reference")), **FLAGS)


def unit_records(run: Path) -> dict[str, dict]:
    return {str(p.parent.relative_to(run)): json.loads(p.read_text())
            for p in sorted(run.rglob("metrics.json"))}


def results_of(run: Path) -> dict:
    return {where: r["metrics"] for where, r in unit_records(run).items()}


@pytest.mark.slow
def test_every_seed_and_baseline_is_trained_once_and_judged(reference):
    run = Path(reference["run"])
    records = unit_records(run)
    kinds = sorted({(r["kind"], r["level"], r["seed"]) for r in records.values()})
    expected = ([("trunk", level, 1) for level in range(3)] + [("full", 0, 2)] + [("imp", 1, 2), ("imp", 2, 2)]
                + [(kind, level, seed) for kind in ("random-prune", "random-reinit", "oneshot", "standard")
                   for level in (1, 2) for seed in (1, 2)])
    assert kinds == sorted(expected) and len(records) == len(expected)
    results = reference["results"]
    assert len(results["full"]) == 2
    assert [float(s) for s in results["levels"]] == [0.5, 0.75]
    for row in results["levels"].values():
        assert list(row) == ["imp", "random-prune", "random-reinit", "oneshot", "standard"]
        assert all(len(runs) == 2 for runs in row.values())
    on_disk = json.loads((run / "summary.json").read_text())
    assert on_disk["verdict"] == json.loads(json.dumps(reference["verdict"]))
    assert set(on_disk["verdict"]["winning"]["accuracy"]) == {"1sigma", "strict"}
    assert not list(run.rglob("checkpoint.pt"))


def test_each_baseline_trains_the_mask_it_claims(reference):
    run = Path(reference["run"])
    records = unit_records(run)
    for where, r in records.items():
        if r["level"]:  # every mask competing at a level has the level's sparsity
            assert r["sparsity"] == pytest.approx(1 - 0.5 ** r["level"], abs=1e-9), where
    # Standard pruning prunes the fine-tuned dense weights: at level 1 of the search's own seed that is the
    # same magnitude ranking as IMP's level-1 mask, then the chain goes on from its own trained weights.
    dense = load_file(run / "level_00" / "final.safetensors")
    trunk_1 = masks.load(run / "level_01" / "mask.safetensors")
    std_1 = masks.load(branch_dir(run, "standard", 1, 1) / "mask.safetensors")
    std_2 = masks.load(branch_dir(run, "standard", 1, 2) / "mask.safetensors")
    expected = prune("global", {k: dense[k] for k in trunk_1}, masks.ones(trunk_1), 0.5)
    assert all(torch.equal(std_1[k], expected[k]) and torch.equal(std_1[k], trunk_1[k]) for k in trunk_1)
    assert all(not (std_2[k] & ~std_1[k]).any() for k in std_1), "masks only shrink along the chain"
    trunk_2 = masks.load(run / "level_02" / "mask.safetensors")
    assert any(not torch.equal(std_2[k], trunk_2[k]) for k in std_2), "level 2 of the chain prunes other weights"
    # the chain keeps only what it still needs: the dense weights, not the level-1 weights it moved on from
    assert not (branch_dir(run, "standard", 1, 1) / "final.safetensors").exists()
    assert (branch_dir(run, "full", 2, 0) / "final.safetensors").exists()


@pytest.mark.slow
def test_interrupted_then_resumed_equals_uninterrupted_and_retrains_nothing_finished(toy, reference, tmp_path,
                                                                                       monkeypatch):
    import lth.search.search as imp

    real, calls = imp.finetune, []

    def interrupt_in_the_9th_unit(*args, **kw):
        calls.append(kw["desc"])
        if len(calls) == 9:  # mid-training, after the first epoch's checkpoint
            def stop(step):
                if step == 15:
                    raise KeyboardInterrupt
            kw["on_step"] = stop
        return real(*args, **kw)

    monkeypatch.setattr(imp, "finetune", interrupt_in_the_9th_unit)
    with pytest.raises(KeyboardInterrupt):
        lth.find(**toy, runs_dir=str(tmp_path), **FLAGS)
    run = next(tmp_path.iterdir())
    assert len(list(run.rglob("metrics.json"))) == 8 and len(list(run.rglob("checkpoint.pt"))) == 1
    calls.clear()
    monkeypatch.setattr(imp, "finetune", lambda *a, **kw: (calls.append(kw["desc"]), real(*a, **kw))[1])
    resumed = lth.find(**toy, runs_dir=str(tmp_path), **FLAGS)
    assert len(calls) == len(unit_records(run)) - 8
    assert results_of(run) == results_of(Path(reference["run"]))
    assert resumed["verdict"] == reference["verdict"]
    calls.clear()
    lth.find(**toy, runs_dir=str(tmp_path), **FLAGS)
    assert calls == [], "a finished run trains nothing"


def flags_as_cli(toy, runs) -> list[str]:
    args = ["find", "--model", toy["model"], "--task", toy["task"], "--eval", toy["eval"], "--runs-dir", str(runs)]
    for key, value in FLAGS.items():
        args += ["--" + key.replace("_", "-"), str(value)]
    return args


@pytest.mark.slow
@pytest.mark.subprocess
def test_two_processes_share_one_run_without_training_anything_twice(toy, reference, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "TQDM_DISABLE": "1"}
    workers = [subprocess.Popen([sys.executable, "-m", "lth", *flags_as_cli(toy, tmp_path)], env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for _ in range(2)]
    logs = [w.communicate(timeout=600)[0] for w in workers]
    assert [w.returncode for w in workers] == [0, 0], logs
    started = [line.split(":")[0] for log in logs for line in log.splitlines() if line.endswith("units done)")]
    assert len(started) == len(set(started)) == len(unit_records(Path(reference["run"])))
    assert all(any("units done)" in line for line in log.splitlines()) for log in logs), "both did work"
    run = next(tmp_path.iterdir())
    assert results_of(run) == results_of(Path(reference["run"]))


@pytest.mark.slow
def test_chosen_levels_get_the_branches_and_the_search_runs_up_to_them(toy, tmp_path):
    summary = lth.find(**toy, runs_dir=str(tmp_path), **{**FLAGS, "levels": "2", "baselines": "random-prune",
                                                          "max_sparsity": 0.9})
    run = Path(summary["run"])
    assert [r["level"] for r in summary["levels"]] == [0, 1, 2]
    assert sorted(p.parent.name for p in run.glob("branches/*/seed_*/level_*/metrics.json")) == \
        ["level_00", "level_02", "level_02", "level_02"]  # full seed 2; imp seed 2; random-prune seeds 1, 2
    assert list(summary["results"]["levels"]) == ["0.750000"]


def test_verdict_command_prints_the_table_of_a_run(reference, capsys):
    assert main(["verdict", reference["run"]]) == 0
    out = capsys.readouterr().out
    assert "full model:" in out and "over 2 seeds" in out and "random-reinit" in out
    assert "winning sparsity (within 1σ)" in out and "winning sparsity (strict)" in out
    assert main(["verdict", reference["run"], "--metric", "f1"]) == 0
    assert capsys.readouterr().out.startswith("f1 (higher is better)")


@pytest.mark.parametrize("argv, message", [
    (["verdict", "nowhere"], "not a run directory"),
    (["find", "--levels", "2-1"], "--levels '2-1'"),
    (["find", "--levels", "two"], "give level numbers"),
    (["find", "--baselines", "random,oneshot"], "unknown baseline 'random'"),
    (["find", "--seeds", "0"], "--seeds 0 is outside its range: it must be 1 or more"),
])
def test_bad_input_one_clear_line(argv, message, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("lth: error:") and message in err and "Traceback" not in err


def test_verdict_metric_must_exist(reference, capsys):
    assert main(["verdict", reference["run"], "--metric", "pearson"]) == 2
    assert "this task reports accuracy, f1" in capsys.readouterr().err


def test_levels_seeds_and_baselines_flags():
    assert parse_levels("4") == [4] and parse_levels("2,4,6") == [2, 4, 6] and parse_levels("1-3,5") == [1, 2, 3, 5]
    s = find_settings(task="mrpc", baselines="all")
    assert s.baseline_names() == ["random-prune", "random-reinit", "oneshot", "standard"]
    assert s.seed_list() == [1, 2, 3], "three seeds by default when judging against baselines"
    assert find_settings(task="mrpc").seed_list() == [1]
    assert find_settings(task="mrpc", seed=5, seeds=2).seed_list() == [5, 6]
    same = find_settings(task="mrpc").digest()
    assert find_settings(task="mrpc", seeds=3, baselines="all", levels="2,3").digest() == same, \
        "branches belong to the same run"


@pytest.mark.slow
@pytest.mark.subprocess
def test_a_claim_is_exclusive_and_dies_with_its_process(tmp_path):
    first, second = Claim(tmp_path), Claim(tmp_path)
    assert first.acquire() and not second.acquire() and second.held_elsewhere()
    first.release()
    assert second.acquire() and first.held_elsewhere()
    second.release()
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; sys.path.insert(0, sys.argv[1]); "
                               "from lth.search.queue import Claim; c = Claim(sys.argv[2]); c.acquire(); print('held', flush=True); "
                               "time.sleep(60)", str(REPO / "src"), str(tmp_path)],
                              stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    assert not first.acquire()
    holder.kill()
    holder.wait()
    assert first.acquire(), "a killed worker's claim is released by the kernel"
    first.release()


def test_results_table_from_disk_matches_the_summary(reference):
    run = Path(reference["run"])
    assert collect_results(run, 1, [1, 2]) == json.loads(json.dumps(reference["results"]))
    assert list(collect_results(run, 1, [2])["levels"]) == ["0.750000"]
