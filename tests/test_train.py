import numpy as np
import pytest
import torch

from lth.core import masks
from lth.core.models import load_model, load_tokenizer, prunable_weights
from lth.core.pruning import prune
from lth.core.tensors import save_model
from lth.search.evaluate import predict as predict_rows
from lth.search.search import rewind
from lth.search.train import Recipe, finetune
from lth.tasks.classify import encode
from lth.tasks.examples import Examples
from tiny import make_tiny, sentiment_rows


def predict(*args):
    return np.stack(predict_rows(*args))


def setup(tmp_path, seed=0):
    path = make_tiny(tmp_path / "m", seed=seed)
    model = load_model(path, "classification", seed=1, num_labels=2)
    rows = sentiment_rows(64, 0)
    feats = encode(Examples([r[0] for r in rows], [r[1] for r in rows]), load_tokenizer(path), 32)
    return model, prunable_weights(model), feats


@pytest.mark.parametrize("which", ["global", "one matrix"])
def test_pruned_weights_stay_zero_and_adam_state_too(tmp_path, which):
    model, weights, feats = setup(tmp_path)
    mask = prune("global", weights, masks.ones(weights), 0.6)
    if which == "one matrix":  # the other matrices are all ones: finetune skips their multiplies
        first = next(iter(mask))
        mask = {**masks.ones(weights), first: mask[first]}
    masks.apply_(weights, mask)
    recipe = Recipe(batch_size=8, lr=1e-2, epochs=2, weight_decay=0.1, seed=3)
    seen = {}
    original_step = torch.optim.AdamW.step

    def spy(self, *a, **k):  # keep a handle on the optimizer to inspect its moments afterwards
        seen["opt"] = self
        return original_step(self, *a, **k)

    torch.optim.AdamW.step = spy
    try:
        finetune(model, mask, feats, recipe, 0, tmp_path / "ckpt.pt")
    finally:
        torch.optim.AdamW.step = original_step
    state = seen["opt"].state
    for name, w in weights.items():
        assert torch.count_nonzero(w[~mask[name]]) == 0, name
        assert torch.count_nonzero(state[w]["exp_avg"][~mask[name]]) == 0
        assert torch.count_nonzero(state[w]["exp_avg_sq"][~mask[name]]) == 0
        assert torch.count_nonzero(w[mask[name]]) == int(mask[name].sum()), "kept weights were zeroed"


def test_rewind_restores_every_weight_bit_for_bit_except_pruned(tmp_path):
    model, weights, feats = setup(tmp_path)
    point = tmp_path / "init.safetensors"
    save_model(model, point)
    before = {n: p.detach().clone() for n, p in model.state_dict().items()}
    finetune(model, masks.ones(weights), feats, Recipe(batch_size=8, lr=1e-2, epochs=1), 0, tmp_path / "c.pt")
    assert not torch.equal(model.classifier.weight, before["classifier.weight"]), "training changed nothing"
    mask = prune("global", weights, masks.ones(weights), 0.5)
    rewind(model, point, mask, weights)
    for name, value in model.state_dict().items():
        if name in mask:
            assert torch.equal(value[mask[name]], before[name][mask[name]]), name
            assert torch.count_nonzero(value[~mask[name]]) == 0, name
        else:
            assert torch.equal(value, before[name]), name


def test_resume_from_mid_run_checkpoint_equals_uninterrupted(tmp_path):
    recipe = Recipe(batch_size=8, lr=5e-3, epochs=2, seed=4)
    model, weights, feats = setup(tmp_path / "a")
    finetune(model, masks.ones(weights), feats, recipe, 0, tmp_path / "full.pt")
    straight = predict(model, feats, 0, 16, "fp32")

    class Stop(Exception):
        pass

    def stop_at(step):
        if step == 11:  # after the epoch-1 checkpoint (8 steps), mid epoch 2
            raise Stop

    model, weights, feats = setup(tmp_path / "b")
    try:
        finetune(model, masks.ones(weights), feats, recipe, 0, tmp_path / "part.pt", on_step=stop_at)
    except Stop:
        pass
    model, weights, feats = setup(tmp_path / "c")  # a fresh process would rebuild the model
    finetune(model, masks.ones(weights), feats, recipe, 0, tmp_path / "part.pt")
    assert torch.equal(torch.from_numpy(predict(model, feats, 0, 16, "fp32")), torch.from_numpy(straight))


def test_predict_order_and_eval_batches_do_not_matter(tmp_path):
    model, _, feats = setup(tmp_path)
    a = predict(model, feats, 0, 64, "fp32")
    b = predict(model, feats, 0, 7, "fp32")
    one = predict(model, feats[5:6], 0, 1, "fp32")
    assert torch.allclose(torch.from_numpy(a), torch.from_numpy(b), atol=1e-5)
    assert torch.allclose(torch.from_numpy(a[5:6]), torch.from_numpy(one), atol=1e-5)


def test_recipe_schedule_runs_its_full_course():
    r = Recipe(batch_size=32, lr=1.0, epochs=3, warmup=0.1)
    total = r.total_steps(320)
    assert total == 30
    assert r.lr_at(0, total) == 1 / 3 and r.lr_at(2, total) == 1.0
    assert r.lr_at(total - 1, total) > 0 and abs(r.lr_at(total, total)) < 1e-12
