"""The fast engine: sparse kernels against a dense reference on random shapes, the engine against the masked
model, `lth predict`, `lth speed` and the inference benchmark on a tiny exported ticket."""
import csv
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import lth
from lth.cli import main
from lth.engine.kernels import (
    CSR,
    _numba,
    add_layernorm,
    attention_dtypes,
    backend,
    choose_chunk,
    fused_attention,
    pair_kernel,
    sparse_linear,
)
from lth.engine.layers import _Masks, lean_layers
from lth.engine.sparse import SparseLinear, sparsify
from tiny import make_tiny, toy_task

REPO = Path(__file__).resolve().parents[1]
SHAPES = [(1, 16, 16), (63, 40, 24), (64, 384, 384), (130, 20, 37), (200, 96, 48)]  # tokens, out, in


def pruned(out: int, width: int, density: float, seed: int, empty_rows: bool = True) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(out, width, generator=g) * (torch.rand(out, width, generator=g) < density)
    if empty_rows and out > 2:
        w[::3] = 0  # every third output row has no weight left: its outputs are the bias alone
    return w


def test_the_native_kernel_is_built_here():
    assert backend()[0] == "native", backend()[1]  # this machine has a compiler: the C++ kernel must build


@pytest.mark.parametrize("tokens, out, width", SHAPES)
@pytest.mark.parametrize("density", [0.0, 0.05, 0.3, 0.9, 1.0])
@pytest.mark.parametrize("chunk", [None, 16, 7])  # the chosen layout, and column chunks (7: a ragged last one)
def test_sparse_linear_equals_the_dense_product(tokens, out, width, density, chunk):
    w, b = pruned(out, width, density, tokens), torch.randn(out)
    csr = CSR(w, b, chunk=chunk)
    x = torch.randn(tokens, width)
    want = x @ w.T + b
    assert torch.allclose(sparse_linear(x, csr), want, atol=1e-4, rtol=1e-5)
    assert torch.allclose(sparse_linear(x, csr, gelu=True), torch.nn.functional.gelu(want), atol=1e-4)
    xb = x.bfloat16()
    got = sparse_linear(xb, csr)
    assert got.dtype == torch.bfloat16
    assert torch.allclose(got.float(), xb.float() @ w.T + b, atol=0.05 * max(1.0, want.abs().max().item()) / 8)
    # bf16 in or out only rounds: the same fp32 sums, rounded to nearest even exactly as torch rounds them
    assert torch.equal(got, sparse_linear(xb.float(), csr).bfloat16())
    assert torch.equal(sparse_linear(x, csr, bf16_out=True), sparse_linear(x, csr).bfloat16())
    batched = sparse_linear(x.reshape(1, tokens, width), CSR(w, chunk=chunk))
    assert batched.shape == (1, tokens, out) and torch.allclose(batched[0], x @ w.T, atol=1e-4)


@pytest.mark.parametrize("pairs", [False, True])
def test_few_tokens_split_the_rows_between_threads_with_the_same_result(pairs):
    """Under 64 tokens a tile: with 2 threads the rows are split into blocks (here 0-63 and 64-99); every output
    must be what one thread computes, and the product's."""
    if pairs and not pair_kernel():
        pytest.skip("the CPU has no AVX512-BF16")
    w, b = pruned(100, 40, 0.3, 5), torch.randn(100)
    csr, x = CSR(w, b, pairs=pairs), torch.randn(10, 40)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        alone = sparse_linear(x, csr, gelu=True)
        torch.set_num_threads(2)
        split = sparse_linear(x, csr, gelu=True)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(alone, split)
    ref = (x.bfloat16().float() @ w.bfloat16().float().T if pairs else x @ w.T) + b
    assert torch.allclose(split, torch.nn.functional.gelu(ref), atol=1e-4)


def test_bf16_rounding_ties_to_even_and_keeps_nan_and_inf():
    """An identity weight passes values through: bf16 output must be torch's rounding of each, specials included."""
    values = torch.tensor([1.00390625, 1.01171875, -1.00390625, 3.0e38, float("inf"), -float("inf"), float("nan"),
                           1e-40, -0.0, 65504.0, 0.1, 2.0 ** -126, 1.0 + 2 ** -9, 1.0 + 3 * 2 ** -9, 7.0, -7.5])
    x = values.repeat(70, 1)  # 70 tokens: a full tile and a partial one; 16 wide: one vector block
    got = sparse_linear(x, CSR(torch.eye(16)), bf16_out=True)
    torch.testing.assert_close(got, x.bfloat16(), atol=0, rtol=0, equal_nan=True)
    assert got[0, 0].item() == 1.0 and got[0, 1].item() == 1.015625  # ties go to the even neighbour


def test_the_layout_is_chunked_where_it_pays():
    assert choose_chunk(384, 0.1) == 384 and choose_chunk(384, 0.3) == 128 and choose_chunk(1536, 0.05) == 128
    assert choose_chunk(100, 0.5) == 100, "a chunk is never wider than the matrix"
    w = pruned(4, 10, 1.0, 0, empty_rows=False)
    csr = CSR(w, chunk=4)  # columns 0-3, 4-7, 8-9: per chunk, each row's non-zeros
    assert csr.indptr.tolist() == [0, 4, 8, 12, 16, 20, 24, 28, 32, 34, 36, 38, 40]
    assert csr.indices[:4].tolist() == [0, 1, 2, 3] and csr.indices[32:34].tolist() == [0, 1]
    assert torch.equal(csr.values[32:34], w[0, 8:10])


def test_the_pair_kernel_is_built_where_the_cpu_has_bf16():
    assert pair_kernel() == ("avx512_bf16" in Path("/proc/cpuinfo").read_text()), backend()


needs_pairs = pytest.mark.skipif(not pair_kernel(), reason="the CPU has no AVX512-BF16 (the fp32 layout is used)")


@needs_pairs
@pytest.mark.parametrize("tokens, out, width", SHAPES + [(70, 8, 600)])
@pytest.mark.parametrize("density", [0.0, 0.05, 0.3, 0.9, 1.0])
@pytest.mark.parametrize("chunk", [None, 16, 7])
def test_the_pair_kernel_computes_the_bf16_product(tokens, out, width, density, chunk):
    """bf16(x) bf16(W)ᵀ + b summed in fp32, against the same roundings multiplied in fp64."""
    w, b = pruned(out, width, density, tokens), torch.randn(out)
    csr = CSR(w, b, chunk=chunk, pairs=True)
    x = torch.randn(tokens, width)
    want = x.bfloat16().double() @ w.bfloat16().double().T + b.double()
    scale = max(1.0, want.abs().max().item())
    got = sparse_linear(x, csr)
    assert got.dtype == torch.float32 and (got.double() - want).abs().max() < 2e-6 * scale * max(1, width) ** 0.5
    assert torch.equal(sparse_linear(x.bfloat16(), csr), got.bfloat16()), "bf16 out is the fp32 sums rounded"
    assert torch.equal(sparse_linear(x, csr, bf16_out=True), got.bfloat16())
    gelu = sparse_linear(x, csr, gelu=True)
    assert (gelu.double() - torch.nn.functional.gelu(want)).abs().max() < 1e-5 * scale * max(1, width) ** 0.5
    assert sparse_linear(x.reshape(1, tokens, width), csr).shape == (1, tokens, out)


def test_the_pair_layout_packs_two_bf16_weights_a_word_and_pads_odd_rows():
    w = torch.tensor([[1.0, 0, 2.0, 3.0, 0],   # three non-zeros: a pair and a padded one
                      [0, 0, 0, 0, 0],         # none
                      [0, -0.5, 0, 0, 1.00390625]])  # two (the last rounds to 1.0 in bf16, ties to even)
    csr = CSR(w, chunk=5, pairs=True)
    assert csr.indptr.tolist() == [0, 2, 2, 3]
    assert csr.indices.tolist() == [0, 2, 3, 3, 1, 4]
    bits = [int(v) & 0xFFFFFFFF for v in csr.values]
    assert bits == [0x4000 << 16 | 0x3F80, 0x0000 << 16 | 0x4040, 0x3F80 << 16 | 0xBF00]
    chunked = CSR(w, chunk=2, pairs=True)  # columns 0-1, 2-3, 4: pairs per chunk and row
    assert chunked.indptr.tolist() == [0, 1, 1, 2, 3, 3, 3, 3, 3, 4]
    assert chunked.indices.tolist() == [0, 0, 1, 1, 0, 1, 0, 0]
    if pair_kernel():
        x = torch.randn(3, 5)
        assert torch.allclose(sparse_linear(x, chunked), x.bfloat16().float() @ w.bfloat16().float().T, atol=1e-5)


def test_without_the_pair_kernel_bf16_layers_use_the_fp32_layout(monkeypatch):
    import lth.engine.kernels
    import lth.engine.sparse

    monkeypatch.setattr(lth.engine.kernels, "pair_kernel", lambda: False)
    monkeypatch.setattr(lth.engine.sparse, "pair_kernel", lambda: False)
    with pytest.raises(RuntimeError, match="AVX512-BF16"):
        sparse_linear(torch.randn(2, 4), CSR(torch.eye(4), pairs=True))
    linear = torch.nn.Linear(16, 8)
    layer = SparseLinear(linear, bf16=True)
    assert not layer.csr.pairs
    assert torch.equal(layer._sparse(torch.ones(2, 16)), sparse_linear(torch.ones(2, 16), CSR(linear.weight,
                                                                                          linear.bias)).bfloat16())


@pytest.mark.parametrize("tokens, out, width", SHAPES[:3])
@pytest.mark.parametrize("chunk", [None, 7])
def test_the_numba_kernel_equals_the_dense_product(tokens, out, width, chunk):
    run = _numba()
    w, b = pruned(out, width, 0.2, 1), torch.randn(out)
    x = torch.randn(tokens, width)
    got = np.empty((tokens, out), dtype=np.float32)
    csr = CSR(w, b, chunk=chunk)
    run(x.numpy(), csr.chunk, csr.indptr.numpy(), csr.indices.numpy(), csr.values.numpy(), csr.bias.numpy(), got)
    assert np.allclose(got, (x @ w.T + b).numpy(), atol=1e-4)


def test_sparse_linear_chooses_the_faster_and_matches_the_dense_layer():
    linear = torch.nn.Linear(48, 32)
    with torch.no_grad():
        linear.weight.mul_(torch.rand(32, 48) < 0.1)
    layer = SparseLinear(linear)
    x = torch.randn(3, 50, 48)
    assert torch.allclose(layer(x), linear(x), atol=1e-5)
    assert set(layer.choice) == {256} and layer.choice[256] in ("sparse", "dense")
    layer.choice[256] = "sparse"
    assert torch.allclose(layer(x), linear(x), atol=1e-5)


@pytest.fixture(scope="module")
def shipped(tmp_path_factory):
    root = tmp_path_factory.mktemp("fast")
    train, dev = toy_task(root / "data")
    run = lth.find(model=make_tiny(root / "model"), task=train, eval=dev, runs_dir=str(root / "runs"), epochs=6,
                   batch_size=8, lr=3e-3, schedule="remaining", rate=0.5, max_sparsity=0.8, precision="fp32",
                   threads=1)["run"]
    lth.export(run, root / "ticket", level=2)
    return {"root": root, "to": root / "ticket", "dev": dev}


def two_pairs() -> dict:
    """A padded batch of two sentence pairs for the tiny BERT, and what the exported model says of it."""
    ids = torch.tensor([[2, 5, 14, 6, 17, 3, 0, 0], [2, 10, 15, 9, 11, 12, 18, 3]])
    return {"input_ids": ids, "attention_mask": (ids != 0).long(), "token_type_ids": torch.zeros_like(ids)}


def model_logits(shipped, batch: dict) -> torch.Tensor:
    from transformers import AutoModelForSequenceClassification

    dense = AutoModelForSequenceClassification.from_pretrained(shipped["to"] / "model").eval()
    with torch.no_grad():
        return dense(**batch).logits


def force(fast, choice: str) -> None:
    """Every swapped layer of an engine (after its first call) on `choice`: 'sparse' or 'dense'."""
    for layer in fast.model.modules():
        if isinstance(layer, SparseLinear):
            layer.choice = {k: choice for k in layer.choice}


@pytest.mark.slow
def test_load_fast_predicts_as_the_masked_model(shipped):
    batch = two_pairs()
    want = model_logits(shipped, batch)
    exact = lth.load_fast(shipped["to"], precision="fp32")
    layers = exact.layers()  # every pruned matrix is swapped (the pooler too), Q, K and V as one per layer
    assert len(layers) == 9 and "bert.encoder.layer.1.attention.self.qkv" in layers
    assert not hasattr(exact.model.bert.encoder.layer[0].attention.self, "query"), "the three are freed"
    for _ in range(2):  # the first call chooses per layer; both choices must give the model's outputs
        assert torch.allclose(exact(**batch).logits, want, atol=1e-5)
    force(exact, "sparse")
    assert torch.allclose(exact(**batch).logits, want, atol=1e-5), "all-sparse equals the dense model"
    half = lth.load_fast(shipped["to"], precision="bf16")
    assert torch.allclose(half(**batch).logits.float(), want, atol=0.05)


def test_bf16_keeps_linear_weights_in_bf16_with_the_outputs_autocast_gives(shipped, monkeypatch):
    import lth.engine.engine

    batch = two_pairs()
    cast = lth.load_fast(shipped["to"], precision="bf16")
    monkeypatch.setattr(lth.engine.engine, "_linear_weights_in_bf16", lambda model: None)
    uncast = lth.load_fast(shipped["to"], precision="bf16")
    linears = [m for m in cast.model.modules() if isinstance(m, torch.nn.Linear)]
    assert linears and all(m.weight.dtype == torch.bfloat16 for m in linears)
    assert all(m.weight.dtype == torch.float32 for m in uncast.model.modules() if isinstance(m, torch.nn.Linear))
    for fast in (cast, uncast):
        fast(**batch)
        force(fast, "dense")  # the same path in both: the dense matmul, cast once or every call
    assert torch.equal(cast(**batch).logits, uncast(**batch).logits)


@pytest.mark.parametrize("arch, lean", [("bert", 2), ("roberta", 2), ("electra", 2), ("distilbert", 0)])
def test_lean_layers_compute_what_the_hf_layers_compute(arch, lean, tmp_path):
    from transformers import AutoModel

    model = AutoModel.from_pretrained(make_tiny(tmp_path / arch, arch, dropout=0.0), attn_implementation="eager")
    ids = torch.tensor([[2, 5, 14, 6, 17, 3, 0, 0], [2, 10, 15, 9, 11, 12, 18, 3], [2, 7, 3, 0, 0, 0, 0, 0]])
    batch = {"input_ids": ids, "attention_mask": (ids != 0).long()}
    with torch.no_grad():
        want = model.eval()(**batch).last_hidden_state
        assert lean_layers(model) == lean, "BERT-style layers get the lean forward; DistilBERT's differ and keep theirs"
        got = model(**batch).last_hidden_state
        assert torch.allclose(got, want, atol=1e-5), (got - want).abs().max()
        unmasked = {"input_ids": ids[1:2]}  # no mask at all: HF passes none to the layers
        assert torch.allclose(model(**unmasked).last_hidden_state, want[1:2], atol=1e-5)


@pytest.mark.skipif(backend()[0] != "native", reason="the fused add + LayerNorm is a native kernel")
@pytest.mark.parametrize("rows, width", [(1, 384), (37, 37), (130, 64), (5, 1)])
@pytest.mark.parametrize("dtypes", [(torch.float32, torch.float32), (torch.bfloat16, torch.float32),
                                    (torch.float32, torch.bfloat16), (torch.bfloat16, torch.bfloat16)])
def test_add_layernorm_is_torchs_layer_norm_of_the_sum(rows, width, dtypes):
    g = torch.Generator().manual_seed(rows * width)
    a = (torch.randn(2, rows, width, generator=g) * 3 + 1).to(dtypes[0])
    b = torch.randn(2, rows, width, generator=g).to(dtypes[1])
    norm = torch.nn.LayerNorm(width, eps=1e-12)
    with torch.no_grad():
        norm.weight.normal_(generator=g), norm.bias.normal_(generator=g)
        want = norm(a.float() + b.float())
        got = add_layernorm(a, b, norm)
    assert got.dtype == torch.float32 and got.shape == a.shape
    assert torch.allclose(got, want, atol=2e-5, rtol=1e-5), (got - want).abs().max()
    other = torch.nn.LayerNorm(width, elementwise_affine=False)
    assert add_layernorm(a, b, other) is None, "no affine weights: torch's own LayerNorm runs"
    assert add_layernorm(a, b[:1], norm) is None, "shapes differ (a broadcast): torch's"


def test_q_k_v_are_fused_only_when_all_three_are_the_same_kind(tmp_path):
    from transformers import AutoModel

    model = AutoModel.from_pretrained(make_tiny(tmp_path / "bert", "bert", dropout=0.0), attn_implementation="eager")
    with torch.no_grad():
        model.encoder.layer[0].attention.self.query.weight.mul_(torch.rand(32, 32) < 0.2)
    ids = torch.tensor([[2, 5, 14, 6, 17, 3, 0, 0], [2, 10, 15, 9, 11, 12, 18, 3]])
    batch = {"input_ids": ids, "attention_mask": (ids != 0).long()}
    with torch.no_grad():
        want = model.eval()(**batch).last_hidden_state
        sparsify(model, ["encoder.layer.0.attention.self.query.weight"])
        lean_layers(model)
        mixed, plain = (model.encoder.layer[i].attention.self for i in (0, 1))
        assert isinstance(mixed.query, SparseLinear) and not hasattr(mixed, "qkv"), "one sparse, two dense: kept"
        assert isinstance(plain.qkv, torch.nn.Linear) and plain.qkv.out_features == 96
        assert torch.allclose(model(**batch).last_hidden_state, want, atol=1e-5)


def attention_reference(qkv, mask, heads):
    batch, tokens, width = qkv.shape[0], qkv.shape[1], qkv.shape[2] // 3
    size = width // heads
    q, k, v = (t.reshape(batch, tokens, heads, size).transpose(1, 2) for t in qkv.double().split(width, -1))
    scores = q @ k.transpose(-1, -2) * size ** -0.5
    if mask is not None:
        scores = scores + mask.double().reshape(batch, heads, -1, tokens)
    return (scores.softmax(-1) @ v).transpose(1, 2).reshape(batch, tokens, width)


@pytest.mark.parametrize("batch, tokens, heads, size", [(1, 128, 3, 32), (2, 37, 2, 64), (3, 5, 2, 128),
                                                        (1, 1, 1, 32), (2, 20, 2, 32)])
@pytest.mark.parametrize("masking", ["none", "padding", "causal"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_fused_attention_is_softmax_attention(batch, tokens, heads, size, masking, dtype):
    needs = "avx512_bf16" if dtype == torch.bfloat16 else "avx512bw"
    if needs not in Path("/proc/cpuinfo").read_text():
        pytest.skip(f"the CPU has no {needs}")
    assert dtype in attention_dtypes(), f"a CPU with {needs} has the kernel built"
    g = torch.Generator().manual_seed(tokens)
    qkv = (2 * torch.randn(batch, tokens, 3 * heads * size, generator=g)).to(dtype)
    low = torch.finfo(dtype).min
    mask = None
    if masking == "padding":
        keep = torch.rand(batch, tokens, generator=g) < 0.7
        keep[:, 0] = True
        mask = torch.where(keep, 0.0, low)[:, None, None, :].expand(batch, heads, 1, tokens)
    elif masking == "causal":
        mask = torch.triu(torch.full((tokens, tokens), low), 1).expand(batch, heads, tokens, tokens)
        mask = mask.clone()
        mask[:, :, -1] = low  # a row with every key masked: uniform weights, as softmax gives with a finite low
    mask = None if mask is None else mask.reshape(batch * heads, -1, tokens).to(dtype)
    got = fused_attention(qkv, mask, heads, size ** -0.5)
    want = attention_reference(qkv, mask, heads)
    assert got.dtype == dtype and got.shape == (batch, tokens, heads * size)
    # bf16 probabilities and a bf16 result: within 2^-7 of the largest output; fp32 within 1e-5 of it
    assert (got.double() - want).abs().max() <= (2 ** -7 if dtype == torch.bfloat16 else 1e-5) * want.abs().max()


@needs_pairs
def test_fused_attention_refuses_what_it_cannot_do():
    with pytest.raises(RuntimeError, match="head size 48"):
        fused_attention(torch.zeros(1, 4, 3 * 96, dtype=torch.bfloat16), None, 2, 0.1)
    with pytest.raises(ValueError, match="give \\(2, 1 or 4, 4\\)"):
        fused_attention(torch.zeros(1, 4, 3 * 64, dtype=torch.bfloat16), torch.zeros(1, 4, 4), 2, 0.1)


@needs_pairs
def test_layers_with_fused_attention_follow_the_fp32_model(tmp_path):
    from transformers import AutoModel

    from lth.core.devices import autocast

    model = AutoModel.from_pretrained(make_tiny(tmp_path / "bert", hidden=64, dropout=0.0),
                                      attn_implementation="eager").eval()
    ids = torch.tensor([[2, 5, 14, 6, 17, 3, 0, 0], [2, 10, 15, 9, 11, 12, 18, 3]])
    batch = {"input_ids": ids, "attention_mask": (ids != 0).long()}
    with torch.no_grad():
        want = model(**batch).last_hidden_state
        lean_layers(model)
        assert all(layer.forward.fused == {torch.bfloat16, torch.float32} for layer in model.encoder.layer)
        exact = model(**batch).last_hidden_state  # fp32, with the fused kernel
        with autocast(torch.device("cpu"), "bf16"):
            fused = model(**batch).last_hidden_state.float()
            for layer in model.encoder.layer:
                layer.forward.fused = set()
            unfused = model(**batch).last_hidden_state.float()
    assert torch.allclose(exact, want, atol=1e-5), "fp32: the HF model's outputs"
    assert not torch.equal(fused, unfused), "two different computations"
    assert (fused - want).abs().max() < 0.05 and (unfused - want).abs().max() < 0.05
    assert (fused - want).abs().mean() <= (unfused - want).abs().mean() * 1.5, "no worse than torch's bf16 path"


def test_the_mask_is_converted_once_per_forward_and_kept_exact():
    masks, low = _Masks(), torch.finfo(torch.bfloat16).min
    padding = torch.tensor([[True, True, False], [True, True, True]])
    got = masks.additive(padding, 2, torch.bfloat16)
    assert got.shape == (4, 1, 3) and got.dtype == torch.bfloat16
    assert got[:2, 0].tolist() == [[0, 0, low]] * 2 and got[2:, 0].tolist() == [[0, 0, 0]] * 2
    assert masks.additive(padding, 2, torch.bfloat16) is got, "the same mask again (the next layer): no new work"
    assert masks.additive(padding.clone(), 2, torch.bfloat16) is not got
    hf = torch.zeros(2, 1, 3, 3)
    hf[0, ..., 2] = -float("inf")  # HF's 4-d padding mask: every row the same; -inf becomes bf16's lowest
    assert torch.equal(masks.additive(hf, 2, torch.bfloat16), got)
    causal = torch.triu(torch.full((3, 3), torch.finfo(torch.float32).min), 1).expand(2, 1, 3, 3)
    kept = masks.additive(causal, 2, torch.float32)
    assert kept.shape == (4, 3, 3) and torch.equal(kept[3], causal[1, 0]), "rows that differ stay rows"
    assert masks.additive(None, 2, torch.float32) is None


def test_layers_with_cross_attention_keep_their_forward(tmp_path):
    from transformers import BertConfig, BertModel

    config = BertConfig(vocab_size=30, hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                        is_decoder=True, add_cross_attention=True)
    assert lean_layers(BertModel(config)) == 0


def test_predict_labels_a_file(shipped, tmp_path, capsys):
    out = tmp_path / "labels.tsv"
    assert main(["predict", str(shipped["to"]), "--input", shipped["dev"], "--output", str(out)]) == 0
    rows = list(csv.reader(out.read_text().splitlines(), delimiter="\t"))
    assert rows[0] == ["row", "label", "score_0", "score_1"] and len(rows) == 33
    assert all(r[1] == ("0" if float(r[2]) >= float(r[3]) else "1") for r in rows[1:])
    assert main(["predict", str(shipped["to"]), "--input", shipped["dev"], "--output", str(out),
                 "--text-column", "nope"]) == 2
    assert "no column 'nope'" in capsys.readouterr().err


def test_predict_in_fp32_gives_the_exported_models_scores(shipped, tmp_path):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    out = tmp_path / "labels.tsv"
    assert main(["predict", str(shipped["to"]), "--input", shipped["dev"], "--output", str(out),
                 "--precision", "fp32"]) == 0
    got = [[float(v) for v in r[2:]] for r in list(csv.reader(out.read_text().splitlines(), delimiter="\t"))[1:]]
    tokenizer = AutoTokenizer.from_pretrained(shipped["to"] / "model")
    model = AutoModelForSequenceClassification.from_pretrained(shipped["to"] / "model").eval()
    with open(shipped["dev"], newline="") as handle:
        texts = [row["text"] for row in csv.DictReader(handle)]
    with torch.no_grad():
        want = torch.cat([model(**tokenizer([t], return_tensors="pt")).logits for t in texts])
    assert torch.allclose(torch.tensor(got), want, atol=2e-6)
    with pytest.raises(lth.LthError, match="give 'auto', 'bf16', 'fp32' or 'int8'"):
        lth.load_fast(shipped["to"], precision="fp16")


@pytest.mark.slow
@pytest.mark.subprocess
def test_speed_and_the_benchmark_run_on_a_tiny_model(shipped, capsys):
    assert main(["speed", str(shipped["to"]), "--batch-size", "4", "--length", "16", "--repeats", "2",
                 "--threads", "1"]) == 0
    out = capsys.readouterr().out
    for engine in ("torch fp32", "torch bf16", "onnxruntime fp32", "onnxruntime int8 (dynamic)", "openvino f32",
                   "openvino bf16", "openvino int8 (nncf)", "lth sparse"):
        assert engine in out, engine
    assert "lth's engine runs in " in out, "and why"
    assert main(["speed", str(shipped["to"]), "--batch-size", "2", "--length", "8", "--repeats", "1",
                 "--threads", "1", "--precision", "fp32"]) == 0
    assert "lth sparse (native, fp32)" in capsys.readouterr().out
    bench = subprocess.run([sys.executable, str(REPO / "benchmarks" / "inference_speed.py"), "--model",
                            str(shipped["root"] / "model"), "--sparsities", "0.5,0.9", "--batch-size", "4",
                            "--length", "16", "--repeats", "2", "--threads", "1", "--precision", "fp32"],
                           env={**os.environ, "PYTHONPATH": str(REPO / "src"), "TQDM_DISABLE": "1"},
                           capture_output=True, text=True, timeout=600)
    assert bench.returncode == 0, bench.stderr[-2000:]
    assert bench.stdout.count("fastest dense engine") == 4 and "layers on the sparse kernel" in bench.stdout
    assert "lth engine in fp32" in bench.stdout


def test_measure_in_alternating_blocks_runs_each_engine_alone(monkeypatch):
    import numpy as np

    from lth.engine import bench

    monkeypatch.setattr(bench, "PAUSE", 0.0)
    log, clock = [], [0.0]
    cost = {"torch fp32": 0.004, "other": 0.001}

    def engine(name):
        def run(x):
            log.append(name)
            clock[0] += cost[name]
            return [np.zeros(2)]
        return run

    monkeypatch.setattr(bench.time, "perf_counter", lambda: clock[0])
    runs = {name: engine(name) for name in cost}
    found = bench.measure(runs, {}, repeats=3, blocks=True)
    assert log[:2] == ["torch fp32", "other"], "one warm-up call each"
    turns = [log[i:i + 4] for i in range(2, len(log), 4)]  # a block: one untimed call, then 3 timed
    assert len(turns) == 2 * bench.BLOCKS and all(len(set(t)) == 1 for t in turns), "no call of another engine"
    assert [t[0] for t in turns[:2]] == ["torch fp32", "other"] and turns[2][0] == "other", "turns rotate"
    assert found["torch fp32"]["seconds"] == pytest.approx(0.004) and found["other"]["seconds"] == pytest.approx(0.001)
    log.clear()
    bench.measure(runs, {}, repeats=3)  # interleaved: the engines alternate call by call
    assert log[2:] == ["torch fp32", "other", "other", "torch fp32", "torch fp32", "other"]


def test_sparsify_fuses_gelu_into_the_ffn_in(shipped):
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(shipped["to"] / "model").eval()
    reference = AutoModelForSequenceClassification.from_pretrained(shipped["to"] / "model").eval()
    assert sparsify(model) == 13
    ffn_in = model.bert.encoder.layer[0].intermediate
    assert isinstance(ffn_in.dense, SparseLinear) and ffn_in.dense.gelu is not None
    x = torch.randn(1, 5, 32)
    with torch.no_grad():
        assert torch.allclose(ffn_in(x), reference.bert.encoder.layer[0].intermediate(x), atol=1e-5)


@pytest.mark.slow
@pytest.mark.subprocess
def test_without_the_native_kernel_the_engine_says_so_and_still_computes():
    script = ("import torch; from lth.engine.kernels import backend, sparse_linear, CSR; print(backend()); "
              "w = torch.randn(8, 16) * (torch.rand(8, 16) < 0.3); x = torch.randn(5, 16); "
              "print(torch.allclose(sparse_linear(x, CSR(w)), x @ w.T, atol=1e-5))")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": str(REPO / "src"), "LTH_NO_NATIVE": "1"})
    assert out.returncode == 0, out.stderr
    assert "('numba', 'the C++ kernel could not be built (LTH_NO_NATIVE is set); numba instead')" in out.stdout
    assert out.stdout.strip().endswith("True")
