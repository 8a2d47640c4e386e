"""Nothing a user does or a crash leaves behind may corrupt a run, hide a failure, or end in a traceback.

Each test damages something the way a user or a crash would and checks the one-line message, that following
its advice works, and that nothing finished is lost."""
import errno
import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
from dataclasses import fields
from pathlib import Path

import pytest
import torch

import lth
from lth.cli import main
from lth.core import masks
from lth.core.files import atomic_path, sweep
from lth.core.pruning import prune
from lth.core.tensors import load_tensors
from lth.run.settings import RANGES, FindSettings
from tiny import make_tiny, toy_task, write_csv

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(REPO / "src"), "TQDM_DISABLE": "1"}
FLAGS = ["--epochs", "6", "--batch-size", "8", "--lr", "3e-3", "--schedule", "remaining", "--rate", "0.5",
         "--max-sparsity", "0.5", "--precision", "fp32", "--threads", "1", "--seeds", "2",
         "--baselines", "random-prune,standard"]


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    root = tmp_path_factory.mktemp("toy")
    train, dev = toy_task(root / "data")
    return {"model": make_tiny(root / "model"), "task": train, "eval": dev}


def argv(toy, runs, *extra) -> list[str]:
    return ["find", "--model", toy["model"], "--task", toy["task"], "--eval", toy["eval"],
            "--runs-dir", str(runs), *FLAGS, *extra]


@pytest.fixture(scope="module")
def reference(toy, tmp_path_factory):
    """A finished run with seeds and two baselines: every kind of file a run writes."""
    runs = tmp_path_factory.mktemp("reference")
    assert main(argv(toy, runs)) == 0
    return next(runs.iterdir())


def results(run: Path) -> dict:
    """Every unit's metrics and loss curve: equal results are equal training, step by step."""
    return {str(p.parent.relative_to(run)): (json.loads(p.read_text())["metrics"],
                                             json.loads((p.parent / "train_loss.json").read_text()))
            for p in sorted(run.rglob("metrics.json"))}


def error_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    return err


# --- 4 and 5: damaged files ------------------------------------------------------------------------

def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def flip_last_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))


def wrong_shape(path: Path) -> None:
    path.write_text(json.dumps({"level": "one", "metrics": [1, 2]}))


DAMAGES = [  # (file in the run, damage): every kind of file a run writes, trunk and branch
    ("settings.json", truncate), ("summary.json", truncate), ("init.safetensors", truncate),
    ("init.safetensors", flip_last_byte), ("level_00/mask.safetensors", truncate),
    ("level_01/mask.safetensors", truncate), ("level_01/mask.safetensors", flip_last_byte),
    ("level_01/metrics.json", truncate), ("level_01/metrics.json", wrong_shape), ("level_01/train_loss.json", truncate),
    ("level_00/final.safetensors", flip_last_byte), ("branches/full/seed_2/level_00/final.safetensors", truncate),
    ("branches/random-prune/seed_2/level_01/metrics.json", truncate),
    ("branches/standard/seed_1/level_01/mask.safetensors", flip_last_byte),
]


@pytest.mark.slow
@pytest.mark.parametrize("name, damage", DAMAGES, ids=[f"{n}-{d.__name__}" for n, d in DAMAGES])
def test_a_damaged_file_is_named_with_a_fix_that_works(toy, reference, tmp_path, capsys, name, damage):
    run = tmp_path / reference.name
    shutil.copytree(reference, run)
    damage(run / name)
    code = main(argv(toy, tmp_path))
    if code == 2:  # reported: one line naming the file and what to do; doing it restores the run
        err = error_line(capsys)
        assert f"{run / name} is damaged" in err
        fix = re.search(r"delete (?:the folder )?(\S+) and rerun", err)
        assert fix, err
        target = Path(fix[1])
        shutil.rmtree(target) if target.is_dir() else target.unlink()
        assert main(argv(toy, tmp_path)) == 0
    else:  # repaired or not needed (a summary is rewritten, θ0 rebuilt bit for bit)
        assert code == 0, capsys.readouterr().err
    assert results(run) == results(reference)
    if name.endswith(".safetensors"):
        assert (run / name).read_bytes() == (reference / name).read_bytes()
    assert main(["verdict", str(run)]) == 0


def test_verdict_reports_a_damaged_mask_of_a_finished_run(reference, tmp_path, capsys):
    run = tmp_path / reference.name
    shutil.copytree(reference, run)
    flip_last_byte(run / "level_01" / "mask.safetensors")
    assert main(["verdict", str(run)]) == 0
    out = capsys.readouterr()
    assert "level_01/mask.safetensors is damaged (its checksum does not match" in out.err and "imp" in out.out


@pytest.mark.slow
def test_a_damaged_checkpoint_is_discarded_and_the_unit_starts_over(toy, reference, tmp_path, monkeypatch, capsys):
    import lth.search.search as imp

    real = imp.finetune

    def stop_in_level_1(*args, **kw):
        if kw["desc"].startswith("level 1 trunk"):
            def stop(step):
                if step == 14:  # after the first epoch's checkpoint
                    raise KeyboardInterrupt
            kw["on_step"] = stop
        return real(*args, **kw)

    monkeypatch.setattr(imp, "finetune", stop_in_level_1)
    assert main(argv(toy, tmp_path)) == 130
    run = tmp_path / reference.name
    checkpoint = run / "level_01" / "checkpoint.pt"
    truncate(checkpoint)
    monkeypatch.setattr(imp, "finetune", real)
    assert main(argv(toy, tmp_path)) == 0
    assert "level_01/checkpoint.pt is damaged" in capsys.readouterr().out
    assert results(run) == results(reference)


def test_a_damaged_model_file_is_one_line(toy, tmp_path, capsys):
    model = tmp_path / "model"
    shutil.copytree(toy["model"], model)
    truncate(model / "model.safetensors")
    assert main(argv(dict(toy, model=str(model)), tmp_path / "runs")) == 2
    assert "could not load it" in error_line(capsys)


# --- 1: what a killed writer leaves ---------------------------------------------------------------

KILLED_WHILE_WRITING_A_CHECKPOINT = """
import os, signal, sys
import lth.core.tensors as tensors
from lth.cli import main
real = tensors.torch.save
def write_half_then_die(obj, path):
    real(obj, path)
    if ".checkpoint.pt." in str(path):
        os.truncate(path, os.path.getsize(path) // 2)
        os.kill(os.getpid(), signal.SIGKILL)  # mid-write, no cleanup: a power cut
tensors.torch.save = write_half_then_die
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.slow
@pytest.mark.subprocess
def test_kill_during_a_checkpoint_write_leaves_nothing_after_the_rerun(toy, reference, tmp_path):
    killed = subprocess.run([sys.executable, "-c", KILLED_WHILE_WRITING_A_CHECKPOINT, *argv(toy, tmp_path)],
                            env=ENV, capture_output=True, text=True)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    run = tmp_path / reference.name
    assert len(list(run.rglob(".checkpoint.pt.*.tmp"))) == 1, "the killed writer left its temporary file"
    rerun = subprocess.run([sys.executable, "-m", "lth", *argv(toy, tmp_path)], env=ENV, capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stderr
    assert "left by an interrupted writer" in rerun.stdout
    assert not list(run.rglob("*.tmp")) and results(run) == results(reference)


HOLD_A_TEMPORARY_FILE = """
import sys, time
from lth.core.files import atomic_path
with atomic_path(sys.argv[1]) as tmp:
    tmp.write_text("half")
    print(tmp, flush=True)
    time.sleep(60)
"""


@pytest.mark.slow
@pytest.mark.subprocess
def test_sweep_leaves_a_live_writers_file_alone(tmp_path):
    writer = subprocess.Popen([sys.executable, "-c", HOLD_A_TEMPORARY_FILE, str(tmp_path / "a" / "metrics.json")],
                              env=ENV, stdout=subprocess.PIPE, text=True)
    tmp = Path(writer.stdout.readline().strip())
    assert tmp.exists() and sweep(tmp_path) == [] and tmp.exists()
    writer.kill()
    writer.wait()
    assert sweep(tmp_path) == [tmp] and not tmp.exists()


# --- 2: divergence ---------------------------------------------------------------------------------

def test_a_diverging_run_stops_with_a_clear_error_and_saves_no_level(toy, tmp_path, capsys):
    assert main(argv(toy, tmp_path, "--lr", "1e30")) == 2
    err = error_line(capsys)
    assert "training diverged at step" in err and "lower --lr" in err
    run = next(tmp_path.iterdir())
    assert not list(run.rglob("metrics.json")) and not (run / "level_01").exists()


def test_non_finite_weights_after_the_last_step_are_refused(tmp_path):
    from lth.core.models import load_model, load_tokenizer, prunable_weights
    from lth.search.train import Diverged, Recipe, finetune
    from lth.tasks.classify import encode
    from lth.tasks.examples import Examples

    path = make_tiny(tmp_path / "m")
    model = load_model(path, "classification", seed=1, num_labels=2)
    feats = encode(Examples(["good film", "bad film"] * 4, [1, 0] * 4), load_tokenizer(path), 16)
    weights = prunable_weights(model)

    def poison(step):
        if step == 2:  # the last step: the loss was finite, the weights are not
            with torch.no_grad():
                next(iter(weights.values()))[0, 0] = math.inf

    with pytest.raises(Diverged, match="non-finite values after the last step"):
        finetune(model, masks.ones(weights), feats, Recipe(batch_size=4, lr=1e-3, epochs=1), 0,
                 tmp_path / "c.pt", on_step=poison)


def test_the_pruner_refuses_non_finite_scores():
    weights = {"w": torch.tensor([[1.0, float("nan")], [2.0, 3.0]])}
    with pytest.raises(lth.LthError, match="1 alive weights of w are not finite"):
        prune("global", weights, masks.ones(weights), 0.5)
    mask = {"w": torch.tensor([[True, False], [True, True]])}  # a pruned nan is no one's business
    assert prune("global", weights, mask, 0.5)["w"].sum() == 2


# --- 3: flags --------------------------------------------------------------------------------------

def bad_values(name: str) -> list:
    kind, test, _ = RANGES[name]
    values = [math.nan, math.inf, -math.inf] if kind is float else [1.5, math.nan]
    values += [v for v in (-1, 0, 1, 1e9) if not test(v)][:1]
    return values


CASES = [(name, value) for name in RANGES for value in bad_values(name)]


@pytest.mark.parametrize("name, value", CASES, ids=[f"{n}={v}" for n, v in CASES])
def test_every_numeric_setting_is_range_checked(name, value):
    flag = "--" + name.replace("_", "-")
    with pytest.raises(lth.LthError, match=re.escape(f"{flag} {value}") + " is (not|outside)"):
        FindSettings(task="mrpc", **{name: value})


def test_every_numeric_setting_has_a_range():
    numeric = {f.name for f in fields(FindSettings) if str(f.type).split(" ")[0] in ("int", "float")}
    assert numeric - {"rate", "max_length"} <= set(RANGES) and {"rate", "max_length"} <= set(RANGES)


@pytest.mark.parametrize("flags, message", [
    (["--epochs", "inf"], "--epochs inf is not a finite number"),
    (["--weight-decay", "nan"], "--weight-decay nan is not a finite number"),
    (["--weight-decay", "-0.1"], "--weight-decay -0.1 is outside its range"),
    (["--threads", "-1"], "--threads -1 is outside its range: it must be 1 or more"),
    (["--threads", "two"], "argument --threads: invalid int value: 'two'"),
    (["--include", "("], "pattern '(' is not a valid regex"),
    (["--max-length", "600"], "--max-length 600 is beyond what"),
    (["--levels", "9"], "level 9 is beyond --max-sparsity"),
])
def test_bad_flags_are_one_line(toy, tmp_path, capsys, flags, message):
    code = main(argv(toy, tmp_path, *flags)) if flags[0] != "--threads" or flags[1] != "two" else None
    if code is None:
        with pytest.raises(SystemExit) as exit_:
            main(argv(toy, tmp_path, *flags))
        code = exit_.value.code
    assert code == 2
    err = error_line(capsys)
    assert err.startswith("lth: error:") and message in err
    assert not tmp_path.exists() or not list(tmp_path.rglob("*.json")), "a refused command writes nothing"


def test_help_reads_cleanly(capsys):
    with pytest.raises(SystemExit):
        main(["find", "--help"])
    out = capsys.readouterr().out
    assert "%%" not in out and "(default: None)" not in out and "(default: [])" not in out
    assert "30% of the remaining weights" in " ".join(out.split())


# --- 4: the file system ----------------------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.subprocess
def test_a_full_disk_is_one_line_and_the_rerun_finishes(toy, reference, tmp_path):
    limit = "import resource, sys; resource.setrlimit(resource.RLIMIT_FSIZE, (300_000, 300_000)); " \
            "from lth.cli import main; sys.exit(main(sys.argv[1:]))"
    full = subprocess.run([sys.executable, "-c", limit, *argv(toy, tmp_path)], env=ENV, capture_output=True, text=True)
    assert full.returncode == 2, full.stderr
    err = full.stderr.strip()
    assert len(err.splitlines()) == 1 and "cannot write" in err and "checkpoint.pt" in err and "free some space" in err
    run = tmp_path / reference.name
    rerun = subprocess.run([sys.executable, "-m", "lth", *argv(toy, tmp_path)], env=ENV, capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stderr
    assert not list(run.rglob("*.tmp")) and results(run) == results(reference)


def test_runs_dir_that_cannot_be_a_folder_is_one_line(toy, tmp_path, capsys):
    (tmp_path / "afile").write_text("")
    assert main(argv(toy, tmp_path / "afile" / "runs")) == 2
    assert "cannot write" in error_line(capsys)


def test_a_read_only_run_folder_is_one_line(toy, reference, tmp_path, capsys, monkeypatch):
    run = tmp_path / reference.name
    shutil.copytree(reference, run)
    shutil.rmtree(run / "level_01")
    if os.geteuid() == 0:  # root writes anywhere: make the writes fail as the kernel would
        def refuse(*a, dir=None, **k):
            raise PermissionError(errno.EACCES, "Permission denied", dir)
        monkeypatch.setattr("lth.core.files.tempfile.mkstemp", refuse)
    else:
        for folder in [run, *run.rglob("*")]:
            if folder.is_dir():
                folder.chmod(0o555)
    assert main(argv(toy, tmp_path)) == 2
    assert "Permission denied; make the folder writable" in error_line(capsys)


# --- 6 and 7: data that changed, a request that cannot be met ----------------------------------------

def sst2(root: Path, flip: bool = False) -> Path:
    from tiny import sentiment_rows

    folder = root / "SST-2"
    folder.mkdir(parents=True, exist_ok=True)
    for split, n, seed in (("train", 48, 1), ("dev", 16, 2)):
        rows = "".join(f"{text}\t{1 - label if flip else label}\n" for text, label in sentiment_rows(n, seed))
        (folder / f"{split}.tsv").write_text("sentence\tlabel\n" + rows)
    return folder


def test_a_run_is_named_by_its_data_not_its_path_and_never_continues_on_other_data(toy, tmp_path, capsys):
    glue = tmp_path / "glue"
    folder = sst2(glue)
    common = dict(model=toy["model"], task="sst2", runs_dir=str(tmp_path / "runs"), epochs=1, batch_size=8,
                  lr=3e-3, precision="fp32", threads=1, schedule="remaining", rate=0.5, max_sparsity=0.5)
    first = lth.find(data=str(glue), **common)
    assert lth.find(data=str(folder), **common)["run"] == first["run"], "GLUE root and task folder: one run"
    copy = tmp_path / "copy"
    shutil.copytree(glue, copy)
    assert lth.find(data=str(copy), **common)["run"] == first["run"]
    sst2(glue, flip=True)  # the files at the same path change
    capsys.readouterr()
    changed = lth.find(data=str(glue), **{**common, "max_sparsity": 0.8})
    assert changed["run"] != first["run"] and len(changed["levels"]) == 3
    assert "has the same settings on other data" in capsys.readouterr().out
    assert len(json.loads((Path(first["run"]) / "summary.json").read_text())["levels"]) == 2
    settings = Path(first["run"]) / "settings.json"
    info = json.loads(settings.read_text())
    settings.write_text(json.dumps({**info, "data_fingerprint": "0" * 16}))
    sst2(glue)
    with pytest.raises(lth.LthError, match="was trained on other data"):
        lth.find(data=str(glue), **common)


@pytest.mark.slow
def test_a_narrower_levels_request_keeps_every_judged_level(toy, tmp_path, capsys):
    flags = ["--max-sparsity", "0.8", "--seeds", "2", "--baselines", "random-prune"]
    assert main(argv(toy, tmp_path, *flags, "--levels", "1,2")) == 0
    run = next(tmp_path.iterdir())
    summary = (run / "summary.json").read_bytes()
    assert main(argv(toy, tmp_path, *flags, "--levels", "9")) == 2
    assert (run / "summary.json").read_bytes() == summary, "a refused request rewrites nothing"
    assert main(argv(toy, tmp_path, *flags, "--levels", "2")) == 0
    assert list(json.loads((run / "summary.json").read_text())["results"]["levels"]) == ["0.500000", "0.750000"]
    capsys.readouterr()
    assert main(["verdict", str(run)]) == 0
    out = capsys.readouterr().out
    assert "\n50% " in out and "\n75% " in out


# --- 8 and 10: permissions and stable bytes --------------------------------------------------------

@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o007, 0o660)])
def test_files_honour_the_umask(tmp_path, umask, mode):
    old = os.umask(umask)
    try:
        with atomic_path(tmp_path / "a.json") as tmp:
            tmp.write_text("{}")
        masks.save({"w": torch.ones(2, dtype=torch.bool)}, tmp_path / "m.safetensors")
    finally:
        os.umask(old)
    assert {p.stat().st_mode & 0o777 for p in tmp_path.iterdir()} == {mode}


SAVE_A_MASK = """
import sys, torch
from lth.core import masks
g = torch.Generator().manual_seed(0)
masks.save({n: torch.rand(8, 8, generator=g) > 0.5 for n in "zyxab"}, sys.argv[1],
           {"level": 3, "model": "m", "strategy": "global", "kind": "standard"})
"""


@pytest.mark.slow
@pytest.mark.subprocess
def test_equal_masks_have_equal_bytes_across_processes(tmp_path):
    for name in ("a", "b", "c"):
        subprocess.run([sys.executable, "-c", SAVE_A_MASK, str(tmp_path / name)], env=ENV, check=True)
    assert len({(tmp_path / name).read_bytes() for name in "abc"}) == 1
    tensors, meta = load_tensors(tmp_path / "a")
    assert sorted(tensors) == list("abxyz") and json.loads(meta["level"]) == 3


def test_a_collapsed_model_never_wins():
    from lth.report.tables import verdict_table as format_verdict_table
    from lth.run.verdict import verdict

    table = {"full": [{"pearson": 0.01}, {"pearson": 0.03}],
             "levels": {"0.5": {"imp": [{"pearson": None}, {"pearson": 0.9}], "random-prune": [{"pearson": 0.02}]}}}
    assert verdict(table, ["pearson"], "pearson")["winning"]["pearson"] == {"1sigma": None, "strict": None}
    assert "undefined in 1 of 2" in format_verdict_table(table, ["pearson"], "pearson")
    collapsed_full = {**table, "full": [{"pearson": None}, {"pearson": 0.5}]}
    assert "no ticket can be judged" in " ".join(verdict(collapsed_full, ["pearson"], "pearson")["notes"])


def test_labels_mixing_numbers_and_text_are_noted(tmp_path):
    from lth.tasks import load_task

    path = write_csv(tmp_path / "mixed.csv", [("a good film", 1), ("a bad film", 0), ("so so", "meh")] * 4)
    data = load_task(str(path))
    assert len(data.label_names) == 3 and any("mix numbers (8 rows) and text (4 rows)" in n for n in data.notes)


def test_squad_split_names_the_dropped_answers(tmp_path):
    from lth.tasks.squad import SquadTask

    def article(title, start):
        return {"title": title, "paragraphs": [{"context": "The cat sat.", "qas": [
            {"id": title, "question": "Who sat?", "answers": [{"text": "cat", "answer_start": start}]}]}]}

    path = tmp_path / "squad.json"
    path.write_text(json.dumps({"data": [article("a", 4), article("b", 7), article("c", 4)]}))
    with pytest.raises(lth.LthError, match="1 answers were dropped because their answer_start does not match"):
        SquadTask(str(path), None, "2:1", 4)
