"""Cheaper searches (--search early-bird, gradual): the distance, the schedule, the drawers against references written
here, whole runs on a tiny BERT (judged as IMP is), resume after SIGKILL, and time to ticket."""
import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import lth
import lth.cli
from lth.core import masks
from lth.core.pruning import gradual_sparsity
from lth.run.plan import Plan, planned_units
from lth.run.settings import FindSettings
from lth.search.draws import EarlyBird, Gradual, check_every
from test_find import settings, toy  # noqa: F401  (toy: the fixture)

REPO = Path(__file__).resolve().parents[1]


def reference_magnitude_mask(weights: dict, sparsity: float, alive: dict | None = None) -> dict:
    """Global magnitude pruning written plainly: sort every alive |w| and keep all but the smallest."""
    alive = alive or {n: torch.ones_like(w, dtype=torch.bool) for n, w in weights.items()}
    total = sum(w.numel() for w in weights.values())
    drop = round(sparsity * total) - sum(int((~m).sum()) for m in alive.values())
    scores = torch.cat([torch.where(alive[n], w.abs(), torch.tensor(float("inf"))).flatten()
                        for n, w in weights.items()])
    order = torch.sort(scores, stable=True).indices[:drop]
    flat = torch.cat([alive[n].flatten() for n in weights]).clone()
    flat[order] = False
    out, at = {}, 0
    for n, w in weights.items():
        out[n] = flat[at:at + w.numel()].view(w.shape)
        at += w.numel()
    return out


# -- pieces -------------------------------------------------------------------------------------------------

def test_the_early_bird_distance_by_hand():
    a = {"x": torch.tensor([[True, False], [True, True]]), "y": torch.tensor([True, False, False, True])}
    b = {"x": torch.tensor([[True, True], [True, False]]), "y": torch.tensor([True, False, True, True])}
    assert masks.distance(a, b) == pytest.approx(3 / 8)  # x differs at 2 places, y at 1, of 8 weights
    assert masks.distance(a, a) == 0.0


def test_the_cubic_schedule_by_hand():
    assert gradual_sparsity(0, 100, 0.8) == 0.0
    assert gradual_sparsity(50, 100, 0.8) == pytest.approx(0.8 * (1 - 0.5 ** 3))  # 0.7
    assert gradual_sparsity(100, 100, 0.8) == 0.8 and gradual_sparsity(130, 100, 0.8) == 0.8
    steps = [gradual_sparsity(t, 100, 0.8) for t in range(0, 101, 10)]
    rises = [after - before for before, after in zip(steps, steps[1:])]
    assert all(r > 0 for r in rises) and rises == sorted(rises, reverse=True), "it rises fast at first and flattens"
    assert check_every(None, 200) == 10 and check_every(7, 200) == 7 and check_every(50, 20) == 20


def test_early_bird_draws_at_the_first_check_below_epsilon():
    w = {"w": torch.tensor([5.0, 4.0, 3.0, 2.0, 1.0, 0.5, 0.4, 0.3, 0.2, 0.1])}
    bird = EarlyBird(w, {1: 0.5}, "global", every=1, total=5, epsilon=0.1)
    bird.after_step(1)  # the first check: nothing to compare with
    w["w"][[4, 5]] = torch.tensor([0.45, 1.0])  # one kept and one pruned weight swap places: 2 of 10 change
    bird.after_step(2)
    bird.after_step(3)  # unchanged since: distance 0 < 0.1, drawn here
    assert bird.curves[1] == [[2, 0.2], [3, 0.0]]
    assert bird.drawn[1]["step"] == 3
    assert bird.masks()[1]["w"].tolist() == [True] * 4 + [False, True] + [False] * 4


def test_gradual_hits_its_sparsities_at_the_planned_steps_never_revives_and_equals_a_reference():
    torch.manual_seed(0)
    shapes = {"a": (12, 10), "b": (30,), "c": (5, 8)}
    start = {n: torch.randn(s) for n, s in shapes.items()}
    levels = {1: 0.3, 2: 0.51, 3: 0.657}
    total, every = 40, 3
    noise = [{n: 0.3 * torch.randn(s) for n, s in shapes.items()} for _ in range(total)]

    def trained(drawer_mask, weights, step):  # a "training step": deterministic noise, pruned weights stay zero
        for n in weights:
            weights[n] += noise[step - 1][n]
            if drawer_mask is not None:
                weights[n] *= drawer_mask[n]

    weights = {n: t.clone() for n, t in start.items()}
    gradual = Gradual(weights, levels, "global", every, total)
    previous, n_total = None, sum(t.numel() for t in start.values())
    for step in range(1, total + 1):
        trained(gradual.mask, weights, step)
        if gradual.after_step(step):
            mask = gradual.mask
            assert abs(masks.sparsity(mask) - gradual_sparsity(step, gradual.end, 0.657)) <= 1 / n_total
            if previous is not None:
                assert all(not (mask[n] & ~previous[n]).any() for n in mask), "a pruned weight came back"
            previous = mask
    assert gradual.end == 30 and [s for s, _ in gradual.schedule] == list(range(3, 31, 3))

    # the reference: the same weights, the cubic schedule written out, levels drawn where it passes them
    weights, alive, drawn = {n: t.clone() for n, t in start.items()}, None, {}
    for step in range(1, total + 1):
        trained(alive, weights, step)
        if step % every == 0 and step <= 30:
            target = 0.657 * (1 - (1 - step / 30) ** 3)
            for level, sparsity in levels.items():
                if level not in drawn and sparsity <= target + 1e-9:
                    drawn[level] = (step, reference_magnitude_mask(weights, sparsity, alive))
            alive = reference_magnitude_mask(weights, target, alive)
    assert {level: d["step"] for level, d in gradual.drawn.items()} == {level: s for level, (s, _) in drawn.items()}
    for level, mask in gradual.masks().items():
        assert all(torch.equal(mask[n], drawn[level][1][n]) for n in shapes), level
    assert all(torch.equal(gradual.mask[n], alive[n]) for n in shapes)


def test_a_drawing_search_trains_only_judged_levels_and_waits_for_the_draw(tmp_path):
    s = FindSettings(task="x.csv", search="gradual", schedule="remaining", rate=0.5, max_sparsity=0.9, levels="1,3",
                     seeds=2, baselines="random-prune,random-reinit", runs_dir=str(tmp_path))
    plan = Plan(s, tmp_path / "run")
    units = planned_units(plan)
    assert units[0].id == "draw" and units[0].level is None
    trunk = [u for u in units if u.kind == "trunk"]
    assert [u.level for u in trunk] == [0, 1, 3], "level 2 is drawn, not trained"
    record = tmp_path / "run" / "draw.json"
    waiting = {u.id for u in units if record in u.needs}
    assert waiting == {"level_01", "level_03", "branches/imp/seed_2/level_01", "branches/imp/seed_2/level_03",
                       "branches/random-reinit/seed_1/level_01", "branches/random-reinit/seed_1/level_03",
                       "branches/random-reinit/seed_2/level_01", "branches/random-reinit/seed_2/level_03"}
    assert Plan(FindSettings(**{**s.to_dict(), "search": "early-bird"}), tmp_path / "r").draw_units() == []
    assert plan.drawn_levels() == {1: 0.5, 2: 0.75, 3: 0.875}


def test_search_flags_are_checked_and_max_sparsity_names_a_drawing_run():
    with pytest.raises(lth.LthError, match="--search 'magic'"):
        FindSettings(task="x.csv", search="magic")
    with pytest.raises(lth.LthError, match="--draw-every is for --search"):
        FindSettings(task="x.csv", draw_every=5)
    with pytest.raises(lth.LthError, match="--early-bird-epsilon needs"):
        FindSettings(task="x.csv", search="gradual", early_bird_epsilon=0.2)
    with pytest.raises(lth.LthError, match="--early-bird-epsilon 1.5 is outside"):
        FindSettings(task="x.csv", search="early-bird", early_bird_epsilon=1.5)
    imp = [FindSettings(task="x.csv", max_sparsity=m).digest() for m in (0.5, 0.9)]
    bird = [FindSettings(task="x.csv", search="early-bird", max_sparsity=m).digest() for m in (0.5, 0.9)]
    assert imp[0] == imp[1], "IMP extends a run to more sparsity"
    assert bird[0] != bird[1], "a drawing search's masks depend on the levels it draws"
    assert FindSettings(task="x.csv", search="imp").digest() == FindSettings(task="x.csv").digest()


# -- whole runs ---------------------------------------------------------------------------------------------

def test_early_bird_with_epsilon_zero_draws_the_masks_of_the_fully_trained_dense_weights(toy, tmp_path):
    summary = lth.find(**settings(toy, tmp_path, search="early-bird", early_bird_epsilon=0.0, draw_every=2,
                                  keep_weights="0", max_sparsity=0.9))
    run = Path(summary["run"])
    record = json.loads((run / "draw.json").read_text())
    total = record["steps"]
    assert [r["step"] for r in record["levels"]] == [total] * 3, "ε = 0 never stops early"
    assert all(len(curve) == total // 2 - 1 for curve in record["distances"].values())
    final, _ = lth.core.tensors.load_tensors(run / "level_00" / "final.safetensors")
    weights = {n: final[n] for n in masks.load(run / "level_01" / "mask.safetensors")}
    for level, sparsity in ((1, 0.5), (2, 0.75), (3, 0.875)):
        mask = masks.load(run / f"level_{level:02d}" / "mask.safetensors")
        expected = reference_magnitude_mask(weights, sparsity)
        assert all(torch.equal(mask[n], expected[n]) for n in weights), level
    assert [r["level"] for r in summary["levels"]] == [0, 1, 2, 3]
    costs = summary["time_to_ticket"]
    dense = costs[0]["dense_steps"]
    assert dense == total and [c["draw_steps"] for c in costs] == [total] * 3
    assert [c["imp_steps"] for c in costs] == [2 * dense, 3 * dense, 4 * dense]


def test_gradual_judges_its_levels_like_imp_and_reports_time_to_ticket(toy, tmp_path, capsys):
    summary = lth.find(**settings(toy, tmp_path, search="gradual", levels="1,2", seeds=2, baselines="random-prune"))
    run = Path(summary["run"])
    record = json.loads((run / "draw.json").read_text())
    assert [r["level"] for r in record["levels"]] == [1, 2] and record["final"] == 0.75
    draw = json.loads((run / "draw" / "metrics.json").read_text())
    assert draw["kind"] == "draw" and draw["sparsity"] == pytest.approx(0.75, abs=1e-3), "it ends pruned"
    assert set(summary["results"]["levels"]) == {f"{0.5:.6f}", f"{0.75:.6f}"}
    assert all(set(entry) == {"imp", "random-prune"} and len(entry["imp"]) == 2
               for entry in summary["results"]["levels"].values())
    on_disk = json.loads((run / "summary.json").read_text())
    assert on_disk["search"] == "gradual"
    costs = on_disk["time_to_ticket"]
    assert [c["draw_steps"] for c in costs] == [r["step"] for r in record["levels"]]
    assert all(c["steps"] == c["draw_steps"] + c["ticket_steps"] for c in costs)
    out = capsys.readouterr().out
    assert "time to ticket (gradual" in out and re.search(r"sparsity +gradual +win", out)
    lth.cli.main(["report", str(run), "--to", str(tmp_path / "report")])
    table = (tmp_path / "report" / "tables" / f"{run.name}-cost.csv").read_text().splitlines()
    assert len(table) == 3 and [int(row.split(",")[1]) for row in table[1:]] == [c["draw_steps"] for c in costs]
    assert (tmp_path / "report" / "figures" / f"{run.name}-draw.svg").exists(), "the schedule, drawn"


def test_the_early_bird_figure_marks_each_draw_on_its_curve():
    from lth.report.figures import drawing

    record = {"search": "early-bird", "epsilon": 0.1, "steps": 40, "every": 10,
              "levels": [{"level": 1, "sparsity": 0.5, "step": 30, "seconds": 1.0}],
              "distances": {"1": [[20, 0.3], [30, 0.05]]}}
    ax = drawing(record).axes[0]
    points = [line.get_xydata().tolist() for line in ax.get_lines()]
    assert [[20.0, 0.3], [30.0, 0.05]] in points and [[30.0, 0.05]] in points  # the curve, then its draw
    assert any(line.get_linestyle() == ":" and line.get_ydata()[0] == 0.1 for line in ax.get_lines())  # ε


def test_imp_time_to_ticket_counts_every_level_before(toy, tmp_path):
    summary = lth.find(**settings(toy, tmp_path))
    costs, dense = summary["time_to_ticket"], summary["time_to_ticket"][0]["dense_steps"]
    assert [c["draw_steps"] for c in costs] == [dense, 2 * dense]
    assert all(c["imp_steps"] == c["steps"] for c in costs)


KILL_AFTER_SECOND_CHECKPOINT_OF = """
import os, signal, sys
import lth.search.train as train
from lth.cli import main
original, saves = train.save_checkpoint, []
def save_then_die(obj, path):
    original(obj, path)
    if sys.argv[1] in str(path):
        saves.append(path)
        if len(saves) == 2:
            os.kill(os.getpid(), signal.SIGKILL)  # no cleanup, like a power cut
train.save_checkpoint = save_then_die
sys.exit(main(sys.argv[2:]))
"""


@pytest.mark.slow
@pytest.mark.subprocess
@pytest.mark.parametrize("search,folder", [("early-bird", "level_00"), ("gradual", "draw")])
def test_killed_while_drawing_then_rerun_equals_uninterrupted(toy, tmp_path, search, folder):
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "TQDM_DISABLE": "1"}
    def args(runs):
        bird = ["--early-bird-epsilon", "0.02"] if search == "early-bird" else []
        return ["find", "--model", toy["model"], "--task", toy["task"], "--eval", toy["eval"], "--runs-dir", str(runs),
                "--epochs", "3", "--batch-size", "8", "--lr", "3e-3", "--schedule", "remaining", "--rate", "0.5",
                "--max-sparsity", "0.8", "--precision", "fp32", "--threads", "1", "--search", search,
                "--draw-every", "2", *bird]

    straight = subprocess.run([sys.executable, "-m", "lth", *args(tmp_path / "a")], env=env, capture_output=True,
                              text=True)
    assert straight.returncode == 0, straight.stderr
    killed = subprocess.run([sys.executable, "-c", KILL_AFTER_SECOND_CHECKPOINT_OF, folder, *args(tmp_path / "b")],
                            env=env, capture_output=True, text=True)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    run_a, run_b = next((tmp_path / "a").iterdir()), next((tmp_path / "b").iterdir())
    assert (run_b / folder / "checkpoint.pt").exists() and not (run_b / "draw.json").exists()
    resumed = subprocess.run([sys.executable, "-m", "lth", *args(tmp_path / "b")], env=env, capture_output=True,
                             text=True)
    assert resumed.returncode == 0, resumed.stderr
    for level in (1, 2):
        a, b = (masks.load(r / f"level_{level:02d}" / "mask.safetensors") for r in (run_a, run_b))
        assert all(torch.equal(a[n], b[n]) for n in a), level
    def drawn(run):  # the record without wall times
        record = json.loads((run / "draw.json").read_text())
        return {**record, "levels": [{k: v for k, v in r.items() if k != "seconds"} for r in record["levels"]]}
    assert drawn(run_a) == drawn(run_b)
    metrics = lambda run: [json.loads(p.read_text())["metrics"] for p in sorted(run.glob("level_*/metrics.json"))]
    assert metrics(run_a) == metrics(run_b)


def test_gradual_with_a_teacher_waits_for_it_and_learns_from_it(toy, tmp_path):
    s = FindSettings(task="x.csv", search="gradual", distill=True, schedule="remaining", rate=0.5, max_sparsity=0.8,
                     runs_dir=str(tmp_path))
    draw = Plan(s, tmp_path / "run").draw_units()[0]
    assert tmp_path / "run" / "level_00" / "metrics.json" in draw.needs, "the teacher is level 0"
    summary = lth.find(**settings(toy, tmp_path, search="gradual", distill=True, levels="1"))
    run = Path(summary["run"])
    assert (run / "teacher.safetensors").exists() and (run / "draw" / "metrics.json").exists()
    assert [c["level"] for c in summary["time_to_ticket"]] == [1]


def test_a_drawn_level_that_was_not_trained_is_exported_after_lth_find_trains_it(toy, tmp_path):
    summary = lth.find(**settings(toy, tmp_path, search="gradual", levels="1"))
    run = Path(summary["run"])
    assert (run / "level_02" / "mask.safetensors").exists() and not (run / "level_02" / "metrics.json").exists()
    with pytest.raises(lth.LthError, match="level 2 .* has its mask drawn .* with --levels 1,2"):
        lth.export(str(run), tmp_path / "ticket", level=2)
    lth.find(**settings(toy, tmp_path, search="gradual", levels="1,2"))
    assert lth.export(str(run), tmp_path / "ticket", level=2)["sparsity"] == pytest.approx(0.75, abs=1e-3)


def test_a_damaged_drawn_mask_is_reported_once_drawn_and_rewritten_by_an_unfinished_drawing_unit(toy, tmp_path):
    from lth.core.files import DamagedFile
    from lth.run.records import check_run

    summary = lth.find(**settings(toy, tmp_path, search="gradual", levels="1"))
    run = Path(summary["run"])
    mask = run / "level_02" / "mask.safetensors"
    intact = mask.read_bytes()
    mask.write_bytes(intact[:100])  # cut short
    with pytest.raises(DamagedFile, match="level_02"):
        check_run(run)  # the drawing unit finished (draw.json): the damage is reported, with the file named
    for done in (run / "draw.json", run / "draw" / "metrics.json"):  # as if killed before its record
        done.unlink()
    check_run(run)  # a mask its unfinished writer will write again is not checked
    lth.find(**settings(toy, tmp_path, search="gradual", levels="1"))
    assert mask.read_bytes() == intact and (run / "draw.json").exists()
