import pytest
import torch

from lth.core import masks
from lth.core.baselines import oneshot_mask, random_mask, reinitialize_
from lth.core.errors import LthError
from lth.core.models import load_model, prunable_weights
from lth.core.pruning import prune
from tiny import make_tiny


def weights(seed=0):
    g = torch.Generator().manual_seed(seed)
    return {f"layer{i}.weight": torch.randn(shape, generator=g) * scale
            for i, (shape, scale) in enumerate([((64, 64), 1.0), ((128, 32), 0.1), ((40, 50), 3.0), ((4, 8), 1.0)])}


@pytest.mark.parametrize("sparsity", [0.0, 0.3, 0.7, 0.9])
def test_random_mask_prunes_exactly_the_requested_count(sparsity):
    w = weights()
    kept, total = masks.count(random_mask(w, sparsity, seed=1))
    assert total - kept == round(sparsity * total)


def test_random_mask_is_seeded():
    w = weights()
    same = random_mask(w, 0.6, seed=3), random_mask(w, 0.6, seed=3)
    other = random_mask(w, 0.6, seed=4)
    assert all(torch.equal(same[0][n], same[1][n]) for n in w)
    assert not all(torch.equal(same[0][n], other[n]) for n in w)


def test_random_mask_is_spread_over_every_matrix_not_by_magnitude():
    w = weights()  # the matrices' scales differ 30x: magnitude would empty layer1 first
    m = random_mask(w, 0.6, seed=0)
    for n, t in w.items():
        if t.numel() >= 1000:
            assert 1 - m[n].float().mean().item() == pytest.approx(0.6, abs=0.04), n


def test_oneshot_mask_is_global_magnitude_pruning_of_theta0():
    w = weights(5)
    m = oneshot_mask(w, 0.55)
    expected = prune("global", w, masks.ones(w), 0.55)
    assert all(torch.equal(m[n], expected[n]) for n in w)
    # An independent computation: keep what lies above the k-th smallest |θ0| over all matrices pooled.
    k = round(0.55 * sum(t.numel() for t in w.values()))
    threshold = torch.cat([t.abs().flatten() for t in w.values()]).sort().values[k - 1]
    assert all(torch.equal(m[n], w[n].abs() > threshold) for n in w)


def test_oneshot_mask_layerwise_and_unknown_strategy():
    w = weights(5)
    m = oneshot_mask(w, 0.5, strategy="layerwise")
    assert all(int((~m[n]).sum()) == round(0.5 * t.numel()) for n, t in w.items())
    with pytest.raises(LthError, match="unknown pruning strategy"):
        oneshot_mask(w, 0.5, strategy="gradient")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return make_tiny(tmp_path_factory.mktemp("tiny") / "bert")


def perturbed(path):
    """The tiny model with every parameter moved off its init, as pre-training and fine-tuning leave it."""
    model = load_model(path, "classification", seed=0, num_labels=2)
    g = torch.Generator().manual_seed(99)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.05 + 0.01)
    return model


@pytest.mark.slow
def test_reinitialize_redraws_every_prunable_and_head_weight(tiny):
    model = perturbed(tiny)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    reinitialize_(model, seed=1)
    after = dict(model.named_parameters())
    assert {n: p.shape for n, p in after.items()} == {n: p.shape for n, p in before.items()}
    head = [n for n in after if n.startswith("classifier.")]
    assert head == ["classifier.weight", "classifier.bias"]
    for n in [*prunable_weights(model), *head]:
        assert not torch.equal(after[n], before[n]), f"{n} kept its old values"
    std = model.config.initializer_range
    for n in prunable_weights(model):
        assert after[n].std().item() == pytest.approx(std, rel=0.25), n
    # The rest of the init: biases zero, LayerNorm back to ones / zeros.
    for n, p in after.items():
        if n.endswith("bias"):
            assert torch.all(p == 0), n
        elif "LayerNorm.weight" in n:
            assert torch.all(p == 1), n


def test_reinitialize_is_seeded_and_leaves_the_callers_random_stream(tiny):
    a, b, c = perturbed(tiny), perturbed(tiny), perturbed(tiny)
    torch.manual_seed(7)
    reinitialize_(a, seed=1)
    drawn_after = torch.rand(3)
    torch.manual_seed(7)
    assert torch.equal(drawn_after, torch.rand(3)), "reinitialize_ moved the global random stream"
    reinitialize_(b, seed=1)
    reinitialize_(c, seed=2)
    assert all(torch.equal(p, b.state_dict()[n]) for n, p in a.state_dict().items())
    assert not torch.equal(a.classifier.weight, c.classifier.weight)
    assert all(not torch.equal(w, prunable_weights(c)[n]) for n, w in prunable_weights(a).items())


def test_a_mask_reapplied_after_reinitialisation_holds(tiny):
    model = perturbed(tiny)
    mask = random_mask(prunable_weights(model), 0.5, seed=0)
    masks.apply_(prunable_weights(model), mask)
    reinitialize_(model, seed=3)
    w = prunable_weights(model)
    assert all(bool((w[n][~m] != 0).any()) for n, m in mask.items()), "the re-draw ignores the mask until reapplied"
    masks.apply_(w, mask)
    for n, m in mask.items():
        assert torch.all(w[n][~m] == 0) and torch.all(w[n][m] != 0), n
    assert masks.sparsity({n: t != 0 for n, t in w.items()}) == pytest.approx(0.5, abs=1e-3)


def test_reinitialize_fails_clearly_when_the_init_misses_weights(tiny):
    model = perturbed(tiny)
    model._init_weights = lambda module: None  # a model type whose init covers nothing
    with pytest.raises(LthError, match="left .* weight matrices unchanged"):
        reinitialize_(model, seed=0)
    with pytest.raises(LthError, match="needs a Hugging Face model"):
        reinitialize_(torch.nn.Linear(3, 3), seed=0)


@pytest.mark.parametrize("arch", ["bert", "roberta", "distilbert", "electra"])
def test_reinitialize_covers_every_parameter_of_other_encoders_and_keeps_the_mlm_tie(tmp_path, arch):
    path = make_tiny(tmp_path / arch, arch)
    for head, kwargs in [("classification", {"num_labels": 2}), ("masked-LM", {})]:
        model = load_model(path, head, seed=0, **kwargs)
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.01)
        before = {n: p.detach().clone() for n, p in model.named_parameters()}
        reinitialize_(model, seed=1)
        assert [n for n, p in model.named_parameters() if torch.equal(p, before[n])] == [], (arch, head)
    assert model.get_output_embeddings().weight is model.get_input_embeddings().weight
