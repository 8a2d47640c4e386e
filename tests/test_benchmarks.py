"""Benchmarks are not tests; these only check that the scripts run end to end on a tiny model."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tiny import make_tiny, sentiment_rows

REPO = Path(__file__).resolve().parents[1]


def run_script(name: str, *args: str) -> str:
    out = subprocess.run([sys.executable, str(REPO / "benchmarks" / name), *args], capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": str(REPO / "src"), "TQDM_DISABLE": "1"})
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout


@pytest.mark.slow
@pytest.mark.subprocess
def test_finetune_speed_runs_all_three_pipelines(tmp_path):
    folder = tmp_path / "SST-2"
    folder.mkdir()
    for split, n, seed in (("train", 48, 1), ("dev", 16, 2)):
        rows = "".join(f"{text}\t{label}\n" for text, label in sentiment_rows(n, seed))
        (folder / f"{split}.tsv").write_text("sentence\tlabel\n" + rows)
    out = run_script("finetune_speed.py", "--model", make_tiny(tmp_path / "bert"), "--data", str(folder),
                     "--train-limit", "32", "--batch-size", "8", "--max-length", "32", "--threads", "1",
                     "--pipelines", "lth,lth-fast-dropout,trainer,pad128,trainer-eager")
    table = out.split("pipeline", 1)[1]
    for name in ("lth", "lth-fast-dropout", "trainer", "pad128", "trainer-eager"):
        assert f"\n{name} " in table
    assert "32 training sentences, 1 epoch = 4 steps of 8" in out
    assert out.count(", 4 steps") == 5, "every pipeline takes the same number of optimizer steps"
    assert "lth evaluating the 32 training sentences" in out


@pytest.mark.slow
@pytest.mark.subprocess
def test_mask_overhead_times_every_configuration(tmp_path):
    out = run_script("mask_overhead.py", "--model", make_tiny(tmp_path / "bert"), "--rounds", "2", "--batch-size", "4",
                     "--length", "8", "--threads", "1", "--sparsity", "0.5")
    rows = {line.split("  ")[0]: line.split() for line in out.splitlines()}
    assert rows["dense, no mask"][-1] == "-" and rows["dense, no mask"][-2] == "+0.0%"
    assert rows["50% sparse ticket"][3] == "50.0%", "the ticket has the requested sparsity"
    assert rows["dense, all-ones mask"][-1] == "-", "finetune skips all-ones matrices"
    assert float(rows["50% sparse ticket"][-1]) >= 0, "the mask operations are timed"


@pytest.mark.slow
@pytest.mark.subprocess
def test_pruning_step_reports_every_size(tmp_path):
    out = run_script("pruning_step.py", "--model", make_tiny(tmp_path / "bert"), "--layers", "1", "--repeats", "1",
                     "--threads", "1")
    rows = [line.split() for line in out.splitlines() if line.split() and line.split()[-1].isdigit()]
    assert [r[1] for r in rows[1:]] == ["BERT-base"] and rows[1][3] == "7,077,888", "one BERT-base layer's weights"
    assert len(rows) == 2 and all(float(r[-3]) > 0 and int(r[-1]) >= 0 for r in rows)


STAND_IN = """
import numpy as np
import onnxruntime


class Engine:  # DeepSparse's Engine as the worker uses it, run by ONNX Runtime: checks the worker's plumbing
    def __init__(self, model, batch_size, num_cores, input_shapes):
        self.session = onnxruntime.InferenceSession(model, providers=["CPUExecutionProvider"])
        self.input_names = [i.name for i in self.session.get_inputs()]
        assert [list(s) for s in input_shapes] == [[batch_size, 128]] * len(self.input_names)

    def __call__(self, arrays):
        return self.session.run(None, dict(zip(self.input_names, arrays)))
"""


@pytest.mark.slow
@pytest.mark.subprocess
def test_deepsparse_speed_runs_against_a_stand_in_engine(tmp_path):
    """DeepSparse itself needs a venv of its own (numpy < 2); a stand-in with its Engine's interface, run by
    ONNX Runtime, drives the worker process and the block timings end to end."""
    fake = tmp_path / "fake" / "deepsparse"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text(STAND_IN)
    out = subprocess.run([sys.executable, str(REPO / "benchmarks" / "deepsparse_speed.py"), "--deepsparse-python",
                          sys.executable, "--model", make_tiny(tmp_path / "bert"), "--sparsities", "0.9",
                          "--repeats", "2", "--threads", "1"], capture_output=True, text=True, timeout=600,
                         env={**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "src"), str(fake.parent)]),
                              "TQDM_DISABLE": "1"})
    assert out.returncode == 0, out.stderr[-3000:]
    rows = [line.split() for line in out.stdout.splitlines() if line.strip().startswith("90%")]
    assert [r[1] for r in rows] == ["32x128", "1x128"]
    for row in rows:
        assert float(row[-1]) < 1e-5, "the stand-in runs the dense model's ONNX file: its logits are torch's"


@pytest.mark.slow
@pytest.mark.subprocess
def test_own_dense_path_times_the_engine_against_itself_all_dense(tmp_path):
    out = run_script("own_dense_path.py", "--model", make_tiny(tmp_path / "bert"), "--sparsity", "0.5",
                     "--batch-size", "4", "--length", "16", "--repeats", "3", "--threads", "1")
    lines = [line for line in out.splitlines() if "own dense path" in line]
    assert [line.split(":")[0] for line in lines] == ["4x16", "1x16"]



@pytest.mark.subprocess
def test_layer_calls_times_a_forward_and_its_pruned_layers_alone(tmp_path):
    out = run_script("layer_calls.py", "--model", make_tiny(tmp_path / "bert"), "--sparsity", "0.5", "--precision",
                     "fp32", "--length", "16", "--repeats", "3", "--threads", "1")
    assert "forward" in out and "pruned-layer calls alone" in out


@pytest.mark.slow
@pytest.mark.subprocess
def test_dropout_cost_int8_kernels_and_bf16_weights_run(tmp_path):
    model = make_tiny(tmp_path / "bert")
    out = run_script("dropout_cost.py", "--model", model, "--length", "8", "--rounds", "2", "--threads", "1")
    assert all(name in out for name in ("torch dropout", "--fast-dropout", "no dropout (bound)"))
    out = run_script("int8_kernels.py", "--tokens", "16", "--sparsity", "0.5", "--rounds", "1", "--threads", "1")
    assert out.count("tokens") == 4 and "lth fp32 CSR" in out and "torch dense fp32" in out
    out = run_script("bf16_weights.py", "--model", model, "--length", "8")
    assert out.count("cast once") == 4


@pytest.mark.slow
@pytest.mark.subprocess
def test_head_warmup_evaluates_theta0_with_and_without_it(tmp_path):
    model = make_tiny(tmp_path / "bert")
    for name, seed in (("train.txt", 1), ("test.txt", 2)):
        (tmp_path / name).write_text("\n".join(text for text, _ in sentiment_rows(40, seed)) + "\n")
    out = run_script("head_warmup.py", "--model", model, "--data", str(tmp_path / "train.txt"), "--eval",
                     str(tmp_path / "test.txt"), "--warmup", "5", "--eval-limit", "10", "--threads", "1")
    assert "head warm-up    0 steps: masked_accuracy" in out and "head warm-up    5 steps: masked_accuracy" in out


@pytest.mark.slow
@pytest.mark.subprocess
def test_share_units_copies_what_the_other_run_trains_itself(tmp_path):
    import json

    import lth
    from tiny import write_csv

    model = make_tiny(tmp_path / "bert")
    train, dev = write_csv(tmp_path / "train.csv", sentiment_rows(64, 1)), write_csv(tmp_path / "dev.csv",
                                                                                     sentiment_rows(24, 2))
    common = dict(model=model, task=train, eval=dev, epochs=1, batch_size=8, lr=3e-3, schedule="remaining", rate=0.5,
                  max_sparsity=0.5, precision="fp32", threads=1, seeds=2, baselines="random-prune")
    imp = Path(lth.find(runs_dir=str(tmp_path / "a"), **common)["run"])
    bird = Path(lth.find(runs_dir=str(tmp_path / "b"), search="early-bird", **common)["run"])
    trained = {p.relative_to(bird): json.loads(p.read_text())["metrics"]
               for p in bird.glob("branches/*/seed_*/level_*/metrics.json") if p.parts[-4] != "imp"}
    for unit in trained:  # forget what the early-bird run trained; copy it from the IMP run instead
        shutil.rmtree((bird / unit).parent)
    run_script("share_units.py", str(imp), str(bird))
    copied = {p.relative_to(bird): json.loads(p.read_text())["metrics"]
              for p in bird.glob("branches/*/seed_*/level_*/metrics.json") if p.parts[-4] != "imp"}
    assert copied == trained and len(trained) == 3  # full seed 2, random-prune seeds 1 and 2
    refused = subprocess.run([sys.executable, str(REPO / "benchmarks" / "share_units.py"), str(imp),
                              str(Path(lth.find(runs_dir=str(tmp_path / "c"), **{**common, "lr": 1e-3})["run"]))],
                             capture_output=True, text=True)
    assert refused.returncode != 0 and "not the same computation" in refused.stderr


@pytest.mark.slow
@pytest.mark.subprocess
def test_save_tickets_writes_each_level_as_a_ticket_transfer_accepts(tmp_path):
    import torch

    from lth.core import masks
    from lth.core.fingerprints import base_fingerprint
    from lth.core.tensors import load_tensors
    from lth.search.sources import adapt, resolve_sources
    from tiny import searched

    made = searched(tmp_path, epochs=1, batch_size=8, lr=3e-3, schedule="remaining", rate=0.5, max_sparsity=0.8,
                    precision="fp32", threads=1)
    run = made["run"]
    out = run_script("save_tickets.py", str(run), "--levels", "1,2", "--to", str(tmp_path / "tickets"))
    init, _ = load_tensors(run / "init.safetensors")
    for level, sparsity in ((1, 0.5), (2, 0.75)):
        path = tmp_path / "tickets" / f"{run.name}-level{level}.safetensors"
        assert f"{path}: level {level}, " in out
        [source] = resolve_sources(str(path), None, None)
        found = masks.load(run / f"level_{level:02d}" / "mask.safetensors")
        assert source.mask.keys() == found.keys() and all(torch.equal(source.mask[k], found[k]) for k in found)
        assert abs(source.sparsity - sparsity) < 0.01
        assert source.base == base_fingerprint({k: init[k] for k in found}), "the fingerprints of θ0's weights"
        adapt(source, {k: init[k] for k in found}, source.base, "the tiny BERT")  # accepted on its own base
    unfinished = subprocess.run([sys.executable, str(REPO / "benchmarks" / "save_tickets.py"), str(run), "--levels",
                                 "9", "--to", str(tmp_path / "tickets")], capture_output=True, text=True,
                                env={**os.environ, "PYTHONPATH": str(REPO / "src")})
    assert unfinished.returncode != 0 and "level 9" in unfinished.stderr and "is not finished" in unfinished.stderr


COMMITTED_TICKETS = sorted((REPO / "benchmarks" / "tickets").glob("*.safetensors"))


def test_committed_tickets_apply_to_the_offline_minilm_at_their_levels_sparsity():
    """The committed MLM masks are what their names say: each prunes exactly the weights the `remaining 0.3`
    schedule plans for its level, and fits the offline MiniLM's 36 prunable matrices (pooler excluded) with the
    pre-trained values it was found on, so `lth transfer FILE` needs no search."""
    import re

    from lth.core import masks
    from lth.core.fingerprints import base_fingerprint
    from lth.core.models import load_model, prunable_weights
    from lth.core.pruning import sparsity_at
    from lth.search.sources import adapt, resolve_sources

    assert len(COMMITTED_TICKETS) >= 4, "the MLM searches' ticket files are committed under benchmarks/tickets"
    weights = prunable_weights(load_model("minilm", "classification", seed=0, num_labels=2), exclude=["pooler"])
    base = base_fingerprint(weights)
    for path in COMMITTED_TICKETS:
        run, level = re.fullmatch(r"(.+)-level(\d+)\.safetensors", path.name).groups()
        [source] = resolve_sources(str(path), None, None)
        kept, total = masks.count(source.mask)
        assert total == 10_616_832 and len(source.mask) == 36, path.name
        assert total - kept == round(sparsity_at(int(level), "remaining", 0.3) * total), path.name
        mask, notes = adapt(source, weights, base, "minilm")
        assert mask.keys() == weights.keys() and notes == [], (path.name, notes)
        assert run in (REPO / "benchmarks" / "tickets" / "README.md").read_text(), f"{run} is not described"
