"""Integration: the real offline MiniLM on slices of real GLUE data and the embedded BBC demo data."""
from pathlib import Path

import pytest

import lth
from lth.core import masks


@pytest.mark.slow
def test_minilm_on_real_rte_slice_prunes_and_evaluates(shared_data, tmp_path):
    summary = lth.find(model="minilm", task="rte", data=str(Path(shared_data) / "glue"), train_limit=64,
                       eval_limit=48, epochs=1, max_length=64, levels=1, runs_dir=str(tmp_path), threads=2)
    assert summary["prunable_matrices"] == 6 * 6 + 1 and summary["prunable_weights"] == 10_764_288
    level1 = summary["levels"][1]
    assert abs(level1["sparsity"] - 0.1) < 1e-6
    assert 0.0 <= level1["metrics"]["accuracy"] <= 1.0
    mask = masks.load(Path(summary["run"]) / "level_01" / "mask.safetensors")
    assert all(k.startswith("bert.") for k in mask)


def test_demo_preset_fills_only_what_is_not_given(tmp_path):
    from lth.run.settings import DEMO, find_settings

    s = find_settings(runs_dir=str(tmp_path), epochs=2.0)
    assert (s.task, s.model, s.schedule, s.rate) == (DEMO["task"], "minilm", DEMO["schedule"], DEMO["rate"])
    assert s.epochs == 2.0
    paper = find_settings(task="rte")
    assert (paper.epochs, paper.lr, paper.schedule, paper.rate) == (3.0, 2e-5, "original", 0.1)
