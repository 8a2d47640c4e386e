"""`lth report`: every figure and table of a run with seeds, baselines and a transfer, unfinished runs and every
task kind, figures that reflect their data, and the page opened in a real headless Chromium."""
import csv
import json
import shutil
import statistics
from pathlib import Path

import pytest
import torch

import lth
from lth.cli import main
from lth.core.masks import density_map
from lth.report import figures
from lth.report.html import report
from test_find_squad_mlm import squad_file, text_file
from tiny import make_tiny, toy_task

RECIPE = dict(epochs=6, batch_size=8, lr=3e-3, schedule="remaining", rate=0.5, max_sparsity=0.8, precision="fp32",
              threads=1)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("report")
    model = make_tiny(root / "model")
    train, dev = toy_task(root / "data")
    where = str(root / "runs")
    mlm = lth.find(model=model, task="mlm", data=text_file(root / "w.txt", 60, 1), eval=text_file(root / "t.txt", 20, 2),
                   max_length=16, steps=12, runs_dir=where, **RECIPE)
    judged = lth.find(model=model, task=train, eval=dev, runs_dir=where, seeds=2, levels="1,2",
                      baselines="random-prune,oneshot", **RECIPE)
    lth.transfer(mlm["run"], task=train, level=1, model=model, eval=dev, runs_dir=where, seeds=2, **RECIPE)
    return {"root": root, "model": model, "train": train, "eval": dev, "mlm": Path(mlm["run"]),
            "judged": Path(judged["run"])}


@pytest.fixture(scope="module")
def page(runs):
    to = runs["root"] / "report"
    assert main(["report", str(runs["judged"]), str(runs["mlm"]), "--to", str(to)]) == 0
    return to


@pytest.mark.slow
def test_every_figure_and_table_is_in_the_page_and_in_files(runs, page):
    text = (page / "index.html").read_text()
    judged, mlm = runs["judged"].name, runs["mlm"].name
    figures_expected = [f"{judged}-{k}" for k in ("metric", "density", "overlap", "loss")] + \
                       [f"{mlm}-{k}" for k in ("metric", "density", "overlap", "loss")] + \
                       ["across-overlap-level-1", "across-overlap-level-2", "across-transfer"]
    for name in figures_expected:
        assert f'<figure id="{name}"><img' in text and 'src="data:image/svg+xml;base64,' in text, name
        assert (page / "figures" / f"{name}.svg").stat().st_size > 1000 and (page / "figures" / f"{name}.png").is_file()
    transfer = [p.stem for p in (page / "tables").glob(f"{judged}-transfer-*.csv")]
    for name in [f"{judged}-levels", f"{judged}-verdict", "across-transfer", *transfer]:
        assert f'<table id="{name}">' in text
        assert (page / "tables" / f"{name}.csv").is_file() and "\\begin{tabular}" in (page / "tables" / f"{name}.tex").read_text()
    assert len(transfer) == 1 and "http" not in text.replace("http://www.w3.org", ""), "nothing to fetch"
    matrix = (page / "tables" / "across-transfer.csv").read_text().splitlines()
    source = f"{mlm} level 1"
    row = next(line for line in matrix if line.startswith(source)).split(",")
    assert row[1].startswith(f"{_transfer_mean(runs['judged'], 'accuracy'):.4f}")  # the transfer, on the classifier
    assert "(own)" in row[2], "the diagonal: the MLM run's own level-1 ticket"


def _transfer_mean(run: Path, metric: str) -> float:
    values = [json.loads(p.read_text())["metrics"][metric] for p in run.glob("branches/transfer/*/seed_*/metrics.json")]
    return statistics.mean(values)


def test_the_verdict_table_holds_the_numbers_on_disk(runs, page):
    rows = list(csv.reader((page / "tables" / f"{runs['judged'].name}-verdict.csv").read_text().splitlines()))
    header = rows[0]
    assert header[:4] == ["sparsity", "imp", "random-prune", "oneshot"]
    run = runs["judged"]
    level_2 = [json.loads((run / "level_02" / "metrics.json").read_text())["metrics"]["accuracy"],
               json.loads((run / "branches" / "imp" / "seed_2" / "level_02" / "metrics.json").read_text())["metrics"]["accuracy"]]
    row = next(r for r in rows if r[0] == "75%")
    assert row[1] == f"{statistics.mean(level_2):.4f} ±{statistics.stdev(level_2):.4f}"


def test_figures_reflect_their_data(runs):
    mask = {"bert.encoder.layer.0.attention.self.query.weight": torch.tensor([[1, 0], [0, 0]], dtype=torch.bool),
            "bert.encoder.layer.0.output.dense.weight": torch.tensor([[1, 1], [1, 0]], dtype=torch.bool),
            "bert.encoder.layer.1.attention.self.query.weight": torch.zeros(2, 2, dtype=torch.bool),
            "bert.encoder.layer.1.output.dense.weight": torch.ones(2, 2, dtype=torch.bool)}
    fig = figures.density_maps({"known": density_map(mask)})
    image = fig.axes[0].images[0].get_array()
    assert image.tolist() == [[0.25, 0.75], [0.0, 1.0]]
    assert sum(isinstance(p, figures.plt.Rectangle) and p.get_edgecolor()[0] == 1.0 for p in fig.axes[0].patches) == 1
    levels = [json.loads(p.read_text()) for p in sorted(runs["judged"].glob("level_*/metrics.json"))]
    plot = figures.metric_vs_sparsity(levels, None, None, "accuracy")
    line = plot.axes[0].lines[0]
    assert list(line.get_xdata()) == [r["sparsity"] * 100 for r in levels]
    assert list(line.get_ydata()) == [r["metrics"]["accuracy"] for r in levels]


@pytest.mark.slow
def test_an_unfinished_run_and_a_run_without_seeds_render(runs, tmp_path, monkeypatch):
    import lth.search.search as search

    real = search.finetune

    def stop_at_level_2(*a, **kw):
        if kw["desc"].startswith("level 2"):
            raise KeyboardInterrupt
        return real(*a, **kw)

    monkeypatch.setattr(search, "finetune", stop_at_level_2)
    with pytest.raises(KeyboardInterrupt):
        lth.find(model=runs["model"], task=runs["train"], eval=runs["eval"], runs_dir=str(tmp_path), **RECIPE)
    run = next(tmp_path.iterdir())
    text = report([str(run)], str(tmp_path / "page")).read_text()
    assert "unfinished: 1 planned units are not done yet (level 2 trunk seed 1)" in text
    assert "only one seed of the full model" in text and f'<figure id="{run.name}-density">' in text


@pytest.mark.slow
def test_every_task_kind_renders(runs, tmp_path):
    squad = lth.find(model=runs["model"], task="squad", data=squad_file(tmp_path / "s.json"), split_articles="4:2",
                     max_length=32, doc_stride=8, runs_dir=str(tmp_path), **{**RECIPE, "epochs": 1})
    scores = tmp_path / "scores.csv"
    scores.write_text("text,label\n" + "".join(f"good film {i},{i % 5 + 0.5}\n" for i in range(40)))
    regression = lth.find(model=runs["model"], task=str(scores), runs_dir=str(tmp_path), **{**RECIPE, "epochs": 1})
    text = report([squad["run"], regression["run"], str(runs["mlm"])], str(tmp_path / "page")).read_text()
    for run, metric in ((squad["run"], "f1"), (regression["run"], "pearson"), (str(runs["mlm"]), "masked_accuracy")):
        assert f'<figure id="{Path(run).name}-metric"><img alt="{metric} against sparsity' in text


@pytest.mark.slow
@pytest.mark.subprocess
@pytest.mark.browser
def test_the_page_in_a_real_browser(page, runs):
    """Headless Chromium opens the page offline: no console error, every image loaded, no request to a network."""
    from playwright.sync_api import sync_playwright

    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    assert chromium, "Debian's chromium is needed for this test: apt-get install chromium (.ci/run does)"
    with sync_playwright() as play:
        browser = play.chromium.launch(executable_path=chromium, args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
            "--disable-sync", "--no-first-run"])
        tab = browser.new_page(viewport={"width": 1200, "height": 900})
        problems, requests = [], []
        tab.on("console", lambda m: problems.append(m.text) if m.type in ("error", "warning") else None)
        tab.on("pageerror", lambda e: problems.append(str(e)))
        tab.on("request", lambda r: requests.append(r.url))
        tab.goto((page / "index.html").as_uri())
        images = tab.evaluate("Array.from(document.images).map(i => [i.alt, i.complete && i.naturalWidth > 0])")
        shot = runs["root"] / "report.png"
        tab.screenshot(path=str(shot), full_page=True)
        browser.close()
    assert problems == []
    assert len(images) >= 11 and all(ok for _, ok in images), [alt for alt, ok in images if not ok]
    assert [u for u in requests if not u.startswith(("file:", "data:"))] == []
    assert shot.stat().st_size > 50_000
