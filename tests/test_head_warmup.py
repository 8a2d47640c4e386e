"""A new MLM head is fitted before θ0 is saved (the encoder frozen), so a masked-LM ticket is searched from a head
that predicts words: the encoder stays bit-identical, the MLM loss drops, and the run's name says so."""
import json
from pathlib import Path

import pytest
import torch

import lth
from lth.core.tensors import load_tensors
from test_find_squad_mlm import COMMON, text_file
from tiny import make_tiny


@pytest.fixture(scope="module")
def mlm(tmp_path_factory):
    root = tmp_path_factory.mktemp("warmup")
    return dict(model=make_tiny(root / "bert"), task="mlm", data=text_file(root / "train.txt", 80, 1),
                eval=text_file(root / "test.txt", 30, 2), max_length=16, steps=6, **{**COMMON, "max_sparsity": 0.3})


def test_the_warm_up_fits_the_head_only_and_lowers_the_loss(mlm, tmp_path):
    cold = lth.find(**mlm, runs_dir=str(tmp_path), head_warmup=0)
    warm = lth.find(**mlm, runs_dir=str(tmp_path), head_warmup=40)
    assert cold["run"] != warm["run"], "the warm-up changes θ0: another run"
    before, _ = load_tensors(Path(cold["run"]) / "init.safetensors")
    after, _ = load_tensors(Path(warm["run"]) / "init.safetensors")
    encoder = [k for k in before if k.startswith("bert.")]
    head = [k for k in before if k.startswith("cls.") and not torch.equal(before[k], after[k])]
    assert encoder and all(torch.equal(before[k], after[k]) for k in encoder), "the encoder is bit-identical"
    assert head, "the head's own weights moved"
    settings = json.loads((Path(warm["run"]) / "settings.json").read_text())["settings"]
    assert settings["head_warmup"] == 40


def test_by_default_a_new_head_is_warmed_up_and_zero_keeps_the_old_name(mlm, tmp_path):
    from lth.run.settings import find_settings

    default = lth.find(**mlm, runs_dir=str(tmp_path))
    recorded = json.loads((Path(default["run"]) / "settings.json").read_text())["settings"]["head_warmup"]
    assert recorded > 0, "the tiny BERT has no MLM head: it is warmed up by default"
    zero = find_settings(**{k: v for k, v in mlm.items()}, head_warmup=0, runs_dir=str(tmp_path))
    unset = find_settings(**{k: v for k, v in mlm.items()}, runs_dir=str(tmp_path))
    assert zero.digest("x") == unset.digest("x"), "no warm-up names the run as before the warm-up existed"
    with pytest.raises(lth.LthError, match="--head-warmup is for --task mlm"):
        lth.FindSettings(task="mrpc", head_warmup=10, precision="fp32")


def test_the_warm_up_lowers_the_masked_lm_loss_of_theta0(mlm, tmp_path):
    """θ0's MLM loss on the evaluation text, measured directly: lower after the warm-up than with a random head."""
    from lth.run.settings import find_settings
    from lth.search.search import open_search

    losses = {}
    for steps in (0, 100):
        search = open_search(find_settings(**mlm, runs_dir=str(tmp_path), head_warmup=steps))
        losses[steps] = search.evaluate("θ0")["loss"]
    assert losses[100] < losses[0] - 0.02, losses  # evaluation masks fixed positions: no noise in this
