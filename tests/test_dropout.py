"""--fast-dropout: dropout masks from random bits (core.dropout), checked against their definition, autograd, and the
Hugging Face models it swaps into and out of."""
import json
from pathlib import Path

import pytest
import torch
from torch import nn

import lth
from lth.core.dropout import BitsDropout, bits_dropout, dropout, keep_mask
from lth.core.models import load_model
from test_find import settings, toy  # noqa: F401  (toy: the fixture)
from tiny import make_tiny


def test_the_keep_mask_is_its_definition_and_drops_p():
    torch.manual_seed(3)
    mask = keep_mask((5, 7), 0.25)
    torch.manual_seed(3)
    bits = torch.empty(9, dtype=torch.int64).random_(-2**63, None).view(torch.int16)[:35]  # 4 per int64, 9 int64
    assert mask.dtype == torch.bool and torch.equal(mask, (bits >= -32768 + 16384).view(5, 7))
    big = keep_mask((1000, 1000), 0.1)
    dropped = 1 - big.float().mean().item()
    assert abs(dropped - 6554 / 65536) < 5 * (0.1 * 0.9 / 1e6) ** 0.5  # p rounded to 1/65536, within 5 sigma
    words = big.view(-1, 4).float().mean(0)  # each of an int64's four words drops as often
    assert all(abs(1 - w.item() - 6554 / 65536) < 5 * (0.1 * 0.9 / 2.5e5) ** 0.5 for w in words)
    assert keep_mask((10,), 0.0).all()


def test_forward_and_backward_scale_the_kept_elements():
    torch.manual_seed(0)
    x = (torch.rand(64, 33) + 0.5).requires_grad_()  # no zeros: a zero output means dropped
    y = dropout(x, 0.3)
    kept = y != 0
    assert torch.allclose(y[kept], x[kept] / 0.7) and 0.2 < 1 - kept.float().mean() < 0.4
    y.backward(torch.full_like(y, 2.0))
    assert torch.allclose(x.grad, kept * 2.0 / 0.7)
    assert dropout(x, 0.3, training=False) is x and BitsDropout(0.3).eval()(x) is x


@pytest.mark.parametrize("arch", ["bert", "roberta", "distilbert", "electra"])
def test_the_swap_leaves_evaluation_bit_identical_and_puts_the_model_back(arch, tmp_path):
    model = load_model(make_tiny(tmp_path / arch, arch=arch), "classification", seed=0, num_labels=2).eval()
    ids = torch.tensor([[2, 5, 6, 7, 3, 0, 0], [2, 8, 9, 3, 0, 0, 0]])
    batch = {"input_ids": ids, "attention_mask": (ids != 0).long()}
    with torch.no_grad():
        before = model(**batch).logits
    modules_before = [type(m) for m in model.modules()]
    with bits_dropout(model):
        assert any(isinstance(m, BitsDropout) for m in model.modules())
        with torch.no_grad():
            inside = model(**batch).logits  # eval: no dropout; attention as eager, on the padded batch
        model.train()
        for m in model.modules():
            if isinstance(m, nn.Dropout):
                m.p = 0.0
        trained = model(**batch).logits  # training mode, every p = 0: the same function
    assert torch.equal(before, inside)
    assert torch.allclose(before, trained, atol=1e-6)
    assert [type(m) for m in model.modules()] == modules_before and model.config._attn_implementation == "eager"


def test_a_fast_dropout_run_is_another_run_and_reproducible(toy, tmp_path):
    plain = lth.find(**settings(toy, tmp_path / "a", max_sparsity=0.5))
    fast = lth.find(**settings(toy, tmp_path / "a", max_sparsity=0.5, fast_dropout=True))
    again = lth.find(**settings(toy, tmp_path / "b", max_sparsity=0.5, fast_dropout=True))
    assert Path(plain["run"]).name != Path(fast["run"]).name == Path(again["run"]).name
    losses = lambda s: json.loads((Path(s["run"]) / "level_00" / "train_loss.json").read_text())["step_losses"]  # noqa
    assert losses(fast) == losses(again) and losses(fast) != losses(plain)
    assert json.loads((Path(fast["run"]) / "settings.json").read_text())["settings"]["fast_dropout"] is True
