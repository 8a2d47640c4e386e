import pytest
import torch

from lth.core.errors import LthError
from lth.core.models import load_model, prunable_weights, resolve_model
from tiny import make_tiny

# Per layer: Q, K, V, attention output, FFN in, FFN out (+ BERT's pooler; ELECTRA's embedding projection
# is part of the embeddings and never pruned by the rule).
EXPECTED = {"bert": 2 * 6 + 1, "roberta": 2 * 6, "distilbert": 2 * 6, "electra": 2 * 6}


@pytest.mark.parametrize("arch", sorted(EXPECTED))
def test_rule_finds_encoder_linears_only(tmp_path, arch):
    model = load_model(make_tiny(tmp_path / arch, arch), "classification", seed=0, num_labels=3)
    weights = prunable_weights(model)
    assert len(weights) == EXPECTED[arch]
    base = model.base_model_prefix
    for name, w in weights.items():
        assert name.startswith(base + ".") and name.endswith(".weight") and w.dim() == 2
        assert "embeddings" not in name and "LayerNorm" not in name
    head = [n for n, _ in model.named_parameters() if not n.startswith(base + ".")]
    assert head and not set(head) & set(weights)


def test_include_and_exclude(tmp_path):
    model = load_model(make_tiny(tmp_path / "m"), "classification", seed=0, num_labels=2)
    no_ffn = prunable_weights(model, exclude=[r"intermediate|output\.dense"])
    assert len(no_ffn) == 2 * 3 + 1  # Q, K, V per layer and the pooler; attention.output.dense goes too
    with_emb = prunable_weights(model, include=[r"word_embeddings"])
    assert "bert.embeddings.word_embeddings.weight" in with_emb
    with pytest.raises(LthError, match="no prunable weights"):
        prunable_weights(model, exclude=[".*"])


def test_head_is_reproducible_from_seed(tmp_path):
    path = make_tiny(tmp_path / "m")
    a = load_model(path, "classification", seed=5, num_labels=2)
    b = load_model(path, "classification", seed=5, num_labels=2)
    c = load_model(path, "classification", seed=6, num_labels=2)
    assert torch.equal(a.classifier.weight, b.classifier.weight)
    assert not torch.equal(a.classifier.weight, c.classifier.weight)


def test_bad_model_paths(tmp_path):
    with pytest.raises(LthError, match="no such folder"):
        resolve_model(str(tmp_path / "nope"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(LthError, match="no config.json"):
        resolve_model(str(tmp_path / "empty"))


def test_builtin_minilm_resolves():
    assert resolve_model("minilm").endswith("model")
