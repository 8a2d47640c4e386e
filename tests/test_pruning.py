import pytest
import torch
from torch import nn
from torch.nn.utils import prune as torch_prune

from lth.core import masks
from lth.core.errors import LthError
from lth.core.pruning import Magnitudes, planned_levels, prune, select, sparsity_at


def random_weights(seed=0):
    g = torch.Generator().manual_seed(seed)
    return {f"layer{i}.weight": torch.randn(shape, generator=g)
            for i, shape in enumerate([(16, 8), (8, 8), (32, 16), (4, 32)])}


def test_global_removes_exact_count_and_smallest_magnitudes():
    w = random_weights()
    m = prune("global", w, masks.ones(w), 0.37)
    kept, total = masks.count(m)
    assert total - kept == round(0.37 * total)
    kept_mags = torch.cat([w[n][m[n]].abs() for n in w])
    pruned_mags = torch.cat([w[n][~m[n]].abs() for n in w])
    assert kept_mags.min() >= pruned_mags.max()


def test_masks_only_shrink_level_to_level():
    w = random_weights()
    m = masks.ones(w)
    for level in range(1, 8):
        # the surviving weights change between levels, as after training
        w = {n: t + 0.3 * torch.randn_like(t) for n, t in w.items()}
        new = prune("global", w, m, sparsity_at(level, "original", 0.1))
        assert all(not (new[n] & ~m[n]).any() for n in m), "a pruned weight came back"
        assert masks.sparsity(new) == pytest.approx(level * 0.1, abs=1e-3)
        m = new


def test_global_matches_torch_global_unstructured_l1():
    w = random_weights(3)
    layers = {n: nn.Linear(t.shape[1], t.shape[0], bias=False) for n, t in w.items()}
    for n, layer in layers.items():
        layer.weight.data.copy_(w[n])
    ours = masks.ones(w)
    for level, target in enumerate([0.2, 0.45, 0.7], start=1):
        already = total = 0
        for n in w:
            already += int((~ours[n]).sum())
            total += w[n].numel()
        torch_prune.global_unstructured([(layers[n], "weight") for n in w], pruning_method=torch_prune.L1Unstructured,
                                        amount=round(target * total) - already)
        ours = prune("global", {n: layers[n].weight.detach() for n in w}, ours, target)
        for n in w:
            assert torch.equal(ours[n], layers[n].weight_mask.bool()), f"level {level}: {n} differs"


def test_layerwise_prunes_each_matrix_to_the_target():
    w = random_weights()
    m = prune("layerwise", w, masks.ones(w), 0.5)
    for n, t in w.items():
        assert int((~m[n]).sum()) == round(0.5 * t.numel())
        assert t[m[n]].abs().min() >= t[~m[n]].abs().max()


def test_ties_still_remove_exactly_k():
    values = {"v": torch.tensor([1.0, 2.0, 2.0, 2.0, 3.0])}
    assert select(values, masks.ones(values), 0.6)["v"].tolist() == [False, False, False, True, True]
    assert select(values, masks.ones(values), 0.0)["v"].all()


def reference_select(scores, mask, target):
    """Pruning by a full stable sort of the pooled alive scores: ties go in mask order, row-major."""
    names = list(mask)
    alive = torch.cat([scores[n][mask[n]] for n in names])
    kept, total = masks.count(mask)
    k = round(target * total) - (total - kept)
    drop = torch.zeros_like(alive, dtype=torch.bool)
    drop[torch.sort(alive, stable=True).indices[:k]] = True
    out = {}
    for n, d in zip(names, drop.split([int(mask[n].sum()) for n in names])):
        out[n] = mask[n].clone()
        out[n][mask[n]] = ~d
    return out


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_selection_equals_a_full_sort_with_many_ties(seed):
    g = torch.Generator().manual_seed(seed)
    # few distinct values: most of the pruned weights tie with the threshold
    w = {n: torch.randint(-3, 4, t.shape, generator=g).float() for n, t in random_weights(seed).items()}
    mask = masks.ones(w)
    for target in (0.2, 0.45, 0.7, 0.9):
        expected = reference_select(Magnitudes(w), mask, target)
        mask = prune("global", w, mask, target)
        assert all(torch.equal(mask[n], expected[n]) for n in w), f"target {target}"


def test_all_equal_weights_exact_count():
    w = {"a": torch.ones(10, 10), "b": torch.ones(5, 5)}
    m = prune("global", w, masks.ones(w), 0.4)
    assert masks.count(m) == (75, 125)


def test_target_out_of_range():
    w = random_weights()
    with pytest.raises(LthError, match="outside"):
        select(w, masks.ones(w), 1.2)


def test_schedules():
    assert planned_levels("original", 0.1, 0.9, None) == pytest.approx([i / 10 for i in range(10)])
    assert planned_levels("remaining", 0.2, 0.6, None) == pytest.approx([0, 0.2, 0.36, 0.488, 0.5904])
    assert planned_levels("original", 0.1, 0.9, 3) == pytest.approx([0, 0.1, 0.2, 0.3])
    assert sparsity_at(3, "original", 0.1) == 0.3


def test_nearly_empty_names_matrices_below_the_threshold():
    mask = {"a": torch.zeros(10, 10, dtype=torch.bool), "b": torch.ones(10, 10, dtype=torch.bool)}
    mask["a"][0, 0] = True
    assert masks.nearly_empty(mask, below=0.02) == {"a": pytest.approx(0.01)}
    assert masks.nearly_empty(mask, below=0.005) == {}
