"""Beyond one process: two CPU processes under `accelerate launch` (gloo) train like one with the same global
batch, --unit for a scheduler's job array, gradient accumulation, and runs that move between devices."""
import errno
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

import lth
from lth.cli import main
from lth.core import masks
from tiny import make_tiny, toy_task

REPO = Path(__file__).resolve().parents[1]
ACCELERATE = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
              "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port"]

# Loaded by every process of the group (PYTHONPATH): logs each real file write and each unit's final weights.
SPY = '''
import contextlib, hashlib, json, os
if os.environ.get("LTH_TEST_LOG"):
    import lth.core.files as files, lth.core.tensors as tensors, lth.search.search as search
    rank, log = os.environ.get("RANK", "0"), os.environ["LTH_TEST_LOG"]
    def note(**entry):
        with open(log, "a") as f:
            f.write(json.dumps({"rank": rank, **entry}) + "\\n")
    real_path, real_finetune = files.atomic_path, search.finetune
    @contextlib.contextmanager
    def spied(path):
        with real_path(path) as tmp:
            if str(tmp) != os.devnull:
                note(write=str(path))
            yield tmp
    def finetuned(model, *args, **kw):
        losses = real_finetune(model, *args, **kw)
        weights = b"".join(p.detach().cpu().numpy().tobytes() for p in model.parameters())
        note(unit=kw["desc"], weights=hashlib.sha256(weights).hexdigest())
        return losses
    files.atomic_path = tensors.atomic_path = spied  # JSON records, and tensor files and checkpoints
    search.finetune = finetuned
'''


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    root = tmp_path_factory.mktemp("scale")
    train, dev = toy_task(root / "data")
    (root / "spy").mkdir()
    (root / "spy" / "sitecustomize.py").write_text(SPY)
    return {"root": root, "model": make_tiny(root / "model", dropout=0.0), "task": train, "eval": dev}


def flags(toy, runs, *extra) -> list[str]:
    return ["find", "--model", toy["model"], "--task", toy["task"], "--eval", toy["eval"], "--runs-dir", str(runs),
            "--epochs", "4", "--batch-size", "16", "--lr", "3e-3", "--schedule", "remaining", "--rate", "0.5",
            "--max-sparsity", "0.5", "--precision", "fp32", "--threads", "1", "--seeds", "2", *extra]


def env(toy, log: Path | None = None) -> dict:
    spy = [str(toy["root"] / "spy")] if log else []
    return {**os.environ, "PYTHONPATH": os.pathsep.join([*spy, str(REPO / "src")]), "TQDM_DISABLE": "1",
            **({"LTH_TEST_LOG": str(log)} if log else {})}


PORTS = iter(range(29611, 29700))


def launch(toy, runs, *extra, log=None, **kw):
    command = [*ACCELERATE, str(next(PORTS)), "-m", "lth", *flags(toy, runs, "--device", "cpu", *extra)]
    return subprocess.run(command, env=env(toy, log), capture_output=True, text=True, timeout=600, **kw)


def records(run: Path) -> dict:
    return {str(p.parent.relative_to(run)): (json.loads(p.read_text())["metrics"],
                                             json.loads((p.parent / "train_loss.json").read_text())["step_losses"])
            for p in sorted(run.rglob("metrics.json"))}


def close(a: dict, b: dict, tol: float = 2e-4) -> bool:
    return a.keys() == b.keys() and all(
        len(a[k][1]) == len(b[k][1]) and all(abs(x - y) <= tol * max(1, abs(y)) for x, y in zip(a[k][1], b[k][1]))
        and all(abs(a[k][0][m] - b[k][0][m]) <= 1e-3 for m in a[k][0]) for k in a)


def jaccard(a: dict, b: dict) -> float:
    inter = sum(int((a[k] & b[k]).sum()) for k in a)
    return inter / sum(int((a[k] | b[k]).sum()) for k in a)


@pytest.fixture(scope="module")
def two(toy):
    """One run trained by two processes, every write and every unit's final weights logged per process."""
    runs, log = toy["root"] / "two", toy["root"] / "two.log"
    done = launch(toy, runs, log=log)
    assert done.returncode == 0, done.stderr[-3000:]
    return {"run": next(runs.iterdir()), "log": [json.loads(line) for line in log.read_text().splitlines()],
            "stdout": done.stdout}


@pytest.mark.slow
def test_two_processes_train_like_one_with_the_global_batch(toy, two, tmp_path):
    assert main(flags(toy, tmp_path)) == 0
    one = next(tmp_path.iterdir())
    assert one.name == two["run"].name, "the same run: processes and devices are not part of its name"
    assert close(records(two["run"]), records(one)), "same steps, losses and metrics within float tolerance"
    a, b = (masks.load(run / "level_01" / "mask.safetensors") for run in (two["run"], one))
    assert jaccard(a, b) > 0.99
    assert two["stdout"].count("run directory:") == 1, "one voice"


def test_each_file_is_written_by_the_main_process_and_both_end_equal(two):
    writes = [e for e in two["log"] if "write" in e]
    assert writes and {e["rank"] for e in writes} == {"0"}, "the other process writes nothing"
    finals = {}
    for entry in (e for e in two["log"] if "unit" in e):
        finals.setdefault(entry["unit"], {})[entry["rank"]] = entry["weights"]
    assert len(finals) == 4 and all(ranks.keys() == {"0", "1"} and len(set(ranks.values())) == 1
                                    for ranks in finals.values()), "identical weights on both processes"
    once = [e["write"] for e in writes if e["write"].endswith(("metrics.json", "mask.safetensors"))]
    assert len(once) == len(set(once)), "every record and mask written once"


@pytest.mark.slow
@pytest.mark.subprocess
def test_killing_the_launcher_then_resuming_gives_the_same_run(toy, two, tmp_path):
    """SIGKILL to the launcher's PID alone, as a user (kill -9) or a scheduler sends it: its workers run in sessions
    of their own, so they must notice and stop, not go on writing the run; the rerun then resumes it."""
    command = [*ACCELERATE, str(next(PORTS)), "-m", "lth", *flags(toy, tmp_path, "--device", "cpu",
                                                                 "--checkpoint-minutes", "0.0001")]
    launcher = subprocess.Popen(command, env=env(toy), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                start_new_session=True)
    deadline = time.monotonic() + 300
    while not list(tmp_path.glob("*/level_01/checkpoint.pt")) and time.monotonic() < deadline:
        time.sleep(0.05)
    workers = [pid for pid in processes_mentioning(str(tmp_path)) if pid != launcher.pid]
    assert len(workers) >= 2, "both workers were running"
    os.kill(launcher.pid, signal.SIGKILL)
    launcher.wait()
    deadline = time.monotonic() + 20
    while (alive := [pid for pid in workers if running(pid)]) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not alive, f"workers {alive} outlived their launcher"
    run = next(tmp_path.iterdir())
    assert not (run / "level_01" / "metrics.json").exists(), "killed mid-level"
    done = launch(toy, tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert records(run) == records(two["run"]) and not list(run.rglob("*.tmp"))


def processes_mentioning(text: str) -> list[int]:
    """The processes whose command line contains `text`."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if text in (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace"):
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


def running(pid: int) -> bool:
    """Alive and not a zombie waiting for its parent."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.slow
@pytest.mark.subprocess
def test_unit_trains_exactly_one_unit_and_never_one_held_elsewhere(toy, tmp_path):
    assert main(flags(toy, tmp_path, "--list-units")) == 0
    command = [sys.executable, "-m", "lth", *flags(toy, tmp_path, "--unit", "branches/full/seed_2/level_00")]
    both = [subprocess.Popen(command, env=env(toy), stdout=subprocess.PIPE, text=True) for _ in range(2)]
    outputs = [p.communicate(timeout=300)[0] for p in both]
    assert [p.returncode for p in both] == [0, 0]
    assert sum("seed 2: training" in out for out in outputs) == 1, outputs
    assert sum("another process is training it" in out or "already done" in out for out in outputs) == 1
    run = next(tmp_path.iterdir())
    assert [str(p.relative_to(run)) for p in run.rglob("metrics.json")] == ["branches/full/seed_2/level_00/metrics.json"]
    assert main(flags(toy, tmp_path, "--unit", "level_9")) == 2


@pytest.mark.slow
@pytest.mark.subprocess
def test_unit_waits_for_its_inputs(toy, tmp_path):
    """Level 0 is trained only once level 1's process has said it waits (a fixed sleep raced a slow import)."""
    waiting = subprocess.Popen([sys.executable, "-m", "lth", *flags(toy, tmp_path, "--unit", "level_01")],
                               env={**env(toy), "PYTHONUNBUFFERED": "1"}, stdout=subprocess.PIPE, text=True)
    seen, watchdog = [], threading.Timer(300, waiting.kill)  # a silent hang fails the test instead of stalling it
    watchdog.start()
    for line in waiting.stdout:
        seen.append(line)
        if "waiting for its inputs" in line:
            break
    watchdog.cancel()
    assert waiting.poll() is None and "waiting for its inputs" in seen[-1], seen
    assert main(flags(toy, tmp_path, "--unit", "level_00")) == 0
    out = "".join(seen) + waiting.communicate(timeout=300)[0]
    assert waiting.returncode == 0 and "level 1 trunk seed 1: training" in out, out


@pytest.mark.slow
def test_a_checkpoint_of_another_process_count_starts_the_unit_over(toy, tmp_path, capsys):
    """A unit's checkpoint records how many processes trained it; resumed under another count (their dropout and
    batch splits differ), the unit starts over instead of mixing the two."""
    from lth.core.models import load_model, load_tokenizer, prunable_weights
    from lth.core.tensors import load_checkpoint, save_checkpoint
    from lth.search.train import Recipe, finetune
    from lth.tasks.classify import encode
    from lth.tasks.text import load_text_files

    data = load_text_files(toy["task"], toy["eval"])
    features = encode(data.train, load_tokenizer(toy["model"]), 32)
    recipe = Recipe(batch_size=16, lr=3e-3, epochs=1, precision="fp32")

    def train():
        model = load_model(toy["model"], "classification", seed=1, num_labels=2)
        mask = {name: torch.ones_like(w, dtype=torch.bool) for name, w in prunable_weights(model).items()}
        return finetune(model, mask, features, recipe, 0, tmp_path / "checkpoint.pt")

    first = train()
    state = load_checkpoint(tmp_path / "checkpoint.pt")
    assert state["processes"] == 1 and state["step"] == len(first)
    assert train() == first and "starts over" not in capsys.readouterr().out, "same count: resumed (nothing left)"
    save_checkpoint({**state, "processes": 2, "losses": [9.0] * len(first)}, tmp_path / "checkpoint.pt")
    again = train()
    assert again == first, "trained again from step 0, not resumed from the 2-process checkpoint"
    assert "trained by 2 processes, this run has 1" in capsys.readouterr().out


def test_a_collective_is_given_tensors_on_the_process_device(monkeypatch):
    """NCCL takes only CUDA tensors: the sum over processes is computed on the process's device (here a meta
    device stands in for a GPU, which this machine does not have)."""
    from lth.core.devices import Ranks

    seen = []
    monkeypatch.setattr(torch.distributed, "all_reduce", lambda tensor: seen.append(tensor.device))
    with pytest.raises((RuntimeError, NotImplementedError)):  # a meta tensor has no value to read back
        Ranks(0, 2, torch.device("meta")).total(torch.tensor(1.5, dtype=torch.float64))
    assert seen == [torch.device("meta")]


def test_gradient_accumulation_equals_the_whole_batch(toy, tmp_path):
    """2 micro-batches of 16 make the same steps as batches of 32 (dropout off)."""
    common = dict(model=toy["model"], task=toy["task"], eval=toy["eval"], epochs=8, batch_size=32, lr=3e-3,
                  schedule="remaining", rate=0.5, max_sparsity=0.5, precision="fp32", threads=1)
    whole = lth.find(runs_dir=str(tmp_path / "a"), **common)
    parts = lth.find(runs_dir=str(tmp_path / "b"), grad_accum=2, **common)
    assert Path(whole["run"]).name == Path(parts["run"]).name
    assert close(records(Path(parts["run"])), records(Path(whole["run"])))


@pytest.mark.slow
def test_a_run_moves_between_device_settings_and_resumes(toy, tmp_path, monkeypatch):
    import lth.search.search as search

    real = search.finetune

    def interrupt_level_1(*a, **kw):
        if kw["desc"].startswith("level 1"):
            kw["on_step"] = lambda step: (_ for _ in ()).throw(KeyboardInterrupt) if step == 20 else None
        return real(*a, **kw)

    common = dict(model=toy["model"], task=toy["task"], eval=toy["eval"], epochs=4, batch_size=16, lr=3e-3,
                  schedule="remaining", rate=0.5, max_sparsity=0.5, precision="fp32", threads=1)
    straight = lth.find(runs_dir=str(tmp_path / "a"), device="cpu", **common)
    monkeypatch.setattr(search, "finetune", interrupt_level_1)
    with pytest.raises(KeyboardInterrupt):
        lth.find(runs_dir=str(tmp_path / "b"), device="cpu", **common)
    monkeypatch.setattr(search, "finetune", real)
    state = torch.load(next(tmp_path.glob("b/*/level_01/checkpoint.pt")), weights_only=True)
    assert all(t.device.type == "cpu" for t in state["model"].values()), "checkpoints hold CPU tensors"
    moved = lth.find(runs_dir=str(tmp_path / "b"), device="auto", **common)
    assert moved["levels"] == [{**r, "seconds": m["seconds"]} for r, m in zip(straight["levels"], moved["levels"])]


@pytest.mark.parametrize("extra, message", [
    (["--device", "tpu"], "--device 'tpu'"),
    (["--device", "cuda:99"], "CUDA devices"),
    (["--precision", "fp16", "--device", "cpu"], "--precision fp16 is for GPUs"),
    (["--grad-accum", "0"], "--grad-accum 0 is outside its range"),
    (["--batch-size", "4", "--grad-accum", "8"], "smaller than 1 processes x --grad-accum 8"),
])
def test_bad_device_flags_are_one_line(toy, tmp_path, capsys, extra, message):
    assert main(flags(toy, tmp_path, *extra)) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1, err


def test_a_file_system_without_locks_is_one_line(toy, tmp_path, capsys, monkeypatch):
    def no_locks(*a):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr("lth.search.queue.fcntl.flock", no_locks)
    assert main(flags(toy, tmp_path)) == 2
    assert "does not support file locks (No locks available)" in capsys.readouterr().err


def test_several_processes_without_accelerate_is_one_line(toy, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setitem(sys.modules, "accelerate", None)  # import accelerate now raises ImportError
    assert main(flags(toy, tmp_path)) == 2
    err = capsys.readouterr().err.strip()
    assert "pip install 'lth[scale]'" in err and len(err.splitlines()) == 1, err
