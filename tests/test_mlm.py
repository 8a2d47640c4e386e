"""Masked-LM pieces: masking statistics and reproducibility, block packing, real WikiText-2, the MLM head."""
import math
import shutil

import pytest
import torch

from lth.core.errors import LthError
from lth.core.models import load_model, load_tokenizer, prunable_weights, resolve_model
from lth.tasks.mlm import (
    IGNORE,
    MaskedLMTask,
    attach_mlm_head,
    fixed_eval_masking,
    mask_tokens,
    masked_positions_forward,
    mlm_metrics,
    pack_blocks,
    read_text,
    text_lines,
)
from tiny import make_tiny, sentiment_rows, write_tokenizer

MASK, VOCAB = 4, 1000


def padded_batch(rows: int = 2000, length: int = 128, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Ids never equal to MASK; [CLS] first, [SEP] and padding at the end of each row are special."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, VOCAB, (rows, length), generator=g)
    lengths = torch.randint(length // 2, length + 1, (rows,), generator=g)
    positions = torch.arange(length)
    special = (positions[None, :] == 0) | (positions[None, :] >= lengths[:, None] - 1)
    return ids.masked_fill(positions[None, :] >= lengths[:, None], 0), special


def test_masking_statistics():
    ids, special = padded_batch()
    masked, labels = mask_tokens(ids, special, MASK, VOCAB, torch.Generator().manual_seed(1))
    chosen = labels != -100
    assert abs(chosen.sum().item() / (~special).sum().item() - 0.15) < 0.005
    assert not (chosen & special).any() and torch.equal(masked[special], ids[special])
    assert torch.equal(labels[chosen], ids[chosen]) and (labels[~chosen] == -100).all()
    assert torch.equal(masked[~chosen], ids[~chosen])
    new, old = masked[chosen], ids[chosen]
    as_mask = (new == MASK).float().mean().item()
    as_random = ((new != old) & (new != MASK)).float().mean().item()
    unchanged = (new == old).float().mean().item()
    # A random draw equal to the original looks unchanged, one equal to MASK looks masked.
    assert abs(as_mask - (0.8 + 0.1 / VOCAB)) < 0.01
    assert abs(as_random - 0.1 * (1 - 2 / VOCAB)) < 0.01
    assert abs(unchanged - (0.1 + 0.1 / VOCAB)) < 0.01


def test_masking_follows_the_generator_seed():
    ids, special = padded_batch(rows=64)
    a = mask_tokens(ids, special, MASK, VOCAB, torch.Generator().manual_seed(7))
    b = mask_tokens(ids, special, MASK, VOCAB, torch.Generator().manual_seed(7))
    c = mask_tokens(ids, special, MASK, VOCAB, torch.Generator().manual_seed(8))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[1], c[1])
    with pytest.raises(LthError, match="masking probability 1.5"):
        mask_tokens(ids, special, MASK, VOCAB, torch.Generator(), probability=1.5)


@pytest.fixture
def tiny_tokenizer(tmp_path):
    return write_tokenizer(tmp_path / "tok")


def tiny_lines(n: int = 200) -> list[str]:
    return [text for text, _ in sentiment_rows(n, seed=3)]


def test_fixed_eval_masking_is_the_same_every_call(tiny_tokenizer):
    tok = tiny_tokenizer
    blocks = pack_blocks(tiny_lines(), tok, block_size=32)
    first = fixed_eval_masking(blocks, tok.mask_token_id, len(tok), seed=0)
    assert first == fixed_eval_masking(blocks, tok.mask_token_id, len(tok), seed=0)
    assert first != fixed_eval_masking(blocks, tok.mask_token_id, len(tok), seed=1)
    assert [f["input_ids"] for f in first[:2]] != [first[0]["input_ids"]] * 2  # blocks are masked independently
    for block, feature in zip(blocks, first):
        assert len(feature["input_ids"]) == len(feature["labels"]) == 32
        assert feature["labels"][0] == feature["labels"][-1] == -100
        kept = [i for i, label in enumerate(feature["labels"]) if label == -100]
        assert all(feature["input_ids"][i] == block["input_ids"][i] for i in kept)
        assert all(label in (-100, block["input_ids"][i]) for i, label in enumerate(feature["labels"]))
    masked = sum(label != -100 for f in first for label in f["labels"])
    assert 0.10 < masked / (len(first) * 30) < 0.20


def test_pack_blocks_cuts_the_token_stream_into_wrapped_chunks(tiny_tokenizer):
    tok, lines = tiny_tokenizer, tiny_lines()
    blocks = pack_blocks(lines, tok, block_size=16)
    stream = [i for row in tok(lines, add_special_tokens=False)["input_ids"] for i in row]
    assert tok.unk_token_id not in stream
    assert len(blocks) == len(stream) // 14 and len(blocks) > 10
    specials = set(tok.all_special_ids)
    for block in blocks:
        ids = block["input_ids"]
        assert isinstance(ids, list) and len(ids) == 16
        assert ids[0] == tok.cls_token_id and ids[-1] == tok.sep_token_id
        assert not specials & set(ids[1:-1])
        assert block["special_tokens_mask"] == [1] + [0] * 14 + [1]
    assert [i for b in blocks for i in b["input_ids"][1:-1]] == stream[:len(blocks) * 14]


def test_pack_blocks_rejects_too_little_text(tiny_tokenizer):
    with pytest.raises(LthError, match=r"2 tokens, too few for one block of 16.*--max-length"):
        pack_blocks(["good film"], tiny_tokenizer, block_size=16)
    with pytest.raises(LthError, match="block size 2 is too small"):
        pack_blocks(["good film"], tiny_tokenizer, block_size=2)


def test_read_text_drops_blank_lines_and_rejects_bad_files(tmp_path):
    text = tmp_path / "t.txt"
    text.write_text(" = Title = \n\n  good film  \n \n", encoding="utf-8")
    assert read_text(str(text)) == ["= Title =", "good film"]
    blank = tmp_path / "blank.txt"
    blank.write_text(" \n\n\t\n")
    with pytest.raises(LthError, match=r"blank.txt is empty: MLM needs raw text, one paragraph a line"):
        read_text(str(blank))
    with pytest.raises(LthError, match="nope.txt: no such file"):
        read_text(str(tmp_path / "nope.txt"))


def test_text_column_of_a_data_file(tmp_path):
    rows = tmp_path / "corpus.jsonl"
    rows.write_text('{"body": "first paragraph", "id": 1}\n{"body": "  ", "id": 2}\n{"body": "second", "id": 3}\n')
    assert text_lines(str(rows), "body") == ["first paragraph", "second"]
    with pytest.raises(LthError, match=r"no column 'text' \(columns: body, id\); pass --text-column"):
        text_lines(str(rows))
    table = tmp_path / "corpus.csv"
    table.write_text('text,label\n"a, quoted paragraph",1\n')
    assert text_lines(str(table)) == ["a, quoted paragraph"]


def test_a_hub_dataset_gives_its_split_and_column(monkeypatch):
    import datasets

    calls = []

    def fake_load(name, config=None, split=None):
        calls.append((name, config, split))
        return datasets.Dataset.from_dict({"text": [f" {split} line ", "", None], "other": [1, 2, 3]})

    monkeypatch.setattr(datasets, "load_dataset", fake_load)
    assert text_lines("wikitext:wikitext-2-raw-v1", "text", "validation") == ["validation line"]
    assert text_lines("user/corpus", "text", "train") == ["train line"]
    assert calls == [("wikitext", "wikitext-2-raw-v1", "validation"), ("user/corpus", None, "train")]
    with pytest.raises(LthError, match=r"'wikitext' has no column 'body' \(columns: text, other\)"):
        text_lines("wikitext", "body")
    task = MaskedLMTask("wikitext:wikitext-2-raw-v1", None, seed=0)
    assert task.train_lines == ["train line"] and task.eval_lines == ["validation line"]
    assert "validation split" in task.notes[0]


def test_offline_hub_dataset_and_missing_eval_are_clear_errors(monkeypatch, tmp_path):
    import datasets

    def offline(*args, **kwargs):
        raise ConnectionError("Couldn't reach 'wikitext' on the Hub (LocalEntryNotFoundError)")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(LthError, match=r"could not load split 'train' of the dataset 'wikitext'.*ConnectionError.*"
                                       r"give a local text file"):
        text_lines("wikitext")
    text = tmp_path / "train.txt"
    text.write_text("some text\n")
    with pytest.raises(LthError, match="needs --eval"):
        MaskedLMTask(str(text), None, seed=0)
    with pytest.raises(LthError, match="no such file"):
        text_lines(str(tmp_path / "missing.txt"))


def test_mlm_metrics_are_per_masked_token():
    m = mlm_metrics(correct=30, total=120, loss_sum=240.0)
    assert m == {"masked_accuracy": 0.25, "loss": 2.0, "perplexity": math.exp(2.0)}
    assert mlm_metrics(1, 1, 1e6)["perplexity"] == math.inf
    with pytest.raises(LthError, match="no masked tokens"):
        mlm_metrics(0, 0, 0.0)


@pytest.mark.parametrize("split, total_lines", [("valid", 3760), ("test", 4358)])
def test_real_wikitext2_reads_and_packs(shared_data, split, total_lines):
    path = shared_data / "wikitext-2-raw" / f"{split}.txt"
    raw = path.read_text(encoding="utf-8").splitlines()
    assert len(raw) == total_lines  # the README's count, blank lines included
    lines = read_text(str(path))
    assert lines == [line.strip() for line in raw if line.strip()]
    assert len(lines) == {"valid": 2461, "test": 2891}[split]
    tok = load_tokenizer("minilm")
    blocks = pack_blocks(lines, tok, block_size=128)
    assert len(blocks) == {"valid": 1894, "test": 2168}[split] and len(blocks) > 1000
    inside = {tok.cls_token_id, tok.sep_token_id, tok.pad_token_id, tok.mask_token_id}
    assert all(len(b["input_ids"]) == 128 and not inside & set(b["input_ids"][1:-1]) for b in blocks)


@pytest.fixture(scope="module")
def minilm_mlm():
    return attach_mlm_head(resolve_model("minilm"), seed=0)


def head_weights(model) -> list[torch.Tensor]:
    prefix = model.base_model_prefix + "."
    return [p for n, p in model.named_parameters() if not n.startswith(prefix)]


def test_minilm_gets_a_new_seeded_head_tied_to_the_embeddings(minilm_mlm):
    model, head_was_new = minilm_mlm
    assert head_was_new
    assert model.get_output_embeddings().weight is model.get_input_embeddings().weight
    same, _ = attach_mlm_head(resolve_model("minilm"), seed=0)
    other, _ = attach_mlm_head(resolve_model("minilm"), seed=1)
    assert all(torch.equal(a, b) for a, b in zip(head_weights(model), head_weights(same)))
    dense = "cls.predictions.transform.dense.weight"
    assert not torch.equal(model.get_parameter(dense), other.get_parameter(dense))


def test_minilm_mask_found_on_mlm_fits_the_classifier(minilm_mlm):
    model, _ = minilm_mlm
    classifier = load_model("minilm", "classification", seed=0, num_labels=2)
    on_mlm, on_cls = prunable_weights(model), prunable_weights(classifier)
    assert {k: v.shape for k, v in on_mlm.items()} == {k: v.shape for k, v in on_cls.items()}
    assert len(on_mlm) == 6 * 6 + 1 and "bert.encoder.layer.0.attention.self.query.weight" in on_mlm
    # The pooler *ForMaskedLM drops is restored with the checkpoint's weights, not random ones.
    assert torch.equal(on_mlm["bert.pooler.dense.weight"], on_cls["bert.pooler.dense.weight"])


@pytest.mark.parametrize("arch", ["bert", "roberta", "distilbert", "electra"])
def test_tiny_mlm_prunable_names_match_classification(tmp_path, arch):
    path = make_tiny(tmp_path / arch, arch)
    model, head_was_new = attach_mlm_head(path, seed=0)
    assert head_was_new and model.get_output_embeddings().weight is model.get_input_embeddings().weight
    classifier = load_model(path, "classification", seed=0, num_labels=2)
    assert ({k: v.shape for k, v in prunable_weights(model).items()}
            == {k: v.shape for k, v in prunable_weights(classifier).items()})


@pytest.mark.parametrize("arch", ["bert", "roberta", "distilbert", "electra"])
def test_head_at_masked_positions_only_equals_the_full_forward(tmp_path, arch):
    """Same loss as the model's own, and per-block counts equal to scoring the full logits by hand."""
    model, _ = attach_mlm_head(make_tiny(tmp_path / arch, arch), seed=0)
    model.eval()  # no dropout: both forwards see the same network
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(5, model.config.vocab_size, (6, 24), generator=g)
    attention = torch.ones_like(ids)
    attention[3:, 18:] = 0
    labels = torch.where(torch.rand(ids.shape, generator=g) < 0.2, ids, torch.full_like(ids, IGNORE))
    labels[attention == 0] = IGNORE
    labels[5] = IGNORE  # a block with nothing masked counts zero tokens
    batch = {"input_ids": ids.masked_fill(labels != IGNORE, MASK), "attention_mask": attention, "labels": labels}
    with torch.no_grad():
        full = model(**batch)
        ours = masked_positions_forward(model, batch)
    assert ours.loss.item() == pytest.approx(full.loss.item(), rel=1e-5)
    chosen = labels != IGNORE
    losses = torch.nn.functional.cross_entropy(full.logits.transpose(1, 2), labels, reduction="none")
    expected = [(int(((full.logits.argmax(-1) == labels) & chosen)[i].sum()), int(chosen[i].sum()),
                 float((losses * chosen)[i].sum())) for i in range(6)]
    got = MaskedLMTask.collect(batch, ours)
    assert [g[:2] for g in got] == [e[:2] for e in expected] and got[5] == (0, 0, 0.0)
    assert [g[2] for g in got] == pytest.approx([e[2] for e in expected], rel=1e-5)


def test_a_batch_with_nothing_masked_has_zero_loss_and_a_gradient(tmp_path):
    model, _ = attach_mlm_head(make_tiny(tmp_path / "bert"), seed=0)
    ids = torch.randint(5, model.config.vocab_size, (2, 10))
    out = masked_positions_forward(model, {"input_ids": ids, "attention_mask": torch.ones_like(ids),
                                           "labels": torch.full_like(ids, IGNORE)})
    assert out.loss.item() == 0.0 and out.loss.requires_grad


def test_a_checkpoint_with_an_mlm_head_keeps_it(tmp_path):
    model, _ = attach_mlm_head(make_tiny(tmp_path / "base"), seed=0)
    model.save_pretrained(tmp_path / "mlm")
    shutil.copy(tmp_path / "base" / "vocab.txt", tmp_path / "mlm" / "vocab.txt")
    again, head_was_new = attach_mlm_head(str(tmp_path / "mlm"), seed=9)
    assert not head_was_new
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), again.state_dict().values()))


def test_unloadable_model_is_an_lth_error(tmp_path):
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "config.json").write_text('{"model_type": "no-such-architecture"}')
    with pytest.raises(LthError, match="could not load it as a masked-LM model"):
        attach_mlm_head(str(tmp_path / "broken"), seed=0)


@pytest.mark.slow
@pytest.mark.subprocess
def test_mlm_head_benchmark_runs_on_a_tiny_model(tmp_path):
    import os
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    out = subprocess.run([sys.executable, str(repo / "benchmarks" / "mlm_head.py"), "--model",
                          make_tiny(tmp_path / "bert"), "--batch-size", "2", "--length", "16", "--repeats", "1"],
                         env={**os.environ, "PYTHONPATH": str(repo / "src")}, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "head at masked positions" in out.stdout and "speed-up: train" in out.stdout
