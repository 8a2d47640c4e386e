"""The int8 quad kernel (AVX512-VNNI, csrc/int8.cpp) against a reference written with torch's integer products: random
shapes and densities (0 and 100% included), ragged rows, empty rows, token counts around the 64-token tile, bf16 in
and out, fused GELU; and the layout itself. The dense int8 side (the same quantisation around torch._int_mm) against
the quad kernel, bit for bit."""
from pathlib import Path

import pytest
import torch

from lth.engine.quads import (SLICE, Int8Dense, QuadCSR, int8_dense, int8_dense_linear, quad_kernel, quad_linear,
                              quantize_rows, quantize_tokens)
from test_fast import force, model_logits, shipped, two_pairs  # noqa: F401  (shipped: the fixture)

needs_vnni = pytest.mark.skipif(not quad_kernel(), reason="the CPU has no AVX512-VNNI (no int8 quads here)")


def test_the_quad_kernel_is_built_where_the_cpu_has_vnni():
    flags = Path("/proc/cpuinfo").read_text()
    assert quad_kernel() == ("avx512_vnni" in flags and "avx512bw" in flags)


def reference(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """What the kernel computes: int8 x (per token) times int8 W (per row), summed exactly, scaled, plus bias."""
    qw, sw = quantize_rows(weight)
    qx, sx = quantize_tokens(x.reshape(-1, x.shape[-1]))
    sums = qx.to(torch.int64) @ qw.to(torch.int64).T  # exact
    return sums.double() * sx.double()[:, None] * sw.double()[None] + bias.double()


def pruned(rows: int, width: int, density: float, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(rows, width, generator=g)
    keep = torch.rand(rows, width, generator=g) < density
    keep[::7] = False  # empty rows
    keep[3::11] = torch.rand(width, generator=g) < 0.9  # ragged: some rows much denser
    return w * keep


@needs_vnni
@pytest.mark.parametrize("tokens,rows,width,density,chunk", [
    (1, 16, 16, 0.5, None), (63, 48, 40, 0.3, None), (64, 40, 33, 0.7, 16), (65, 384, 384, 0.5, None),
    (130, 96, 1536, 0.1, 512), (7, 64, 100, 1.0, None), (9, 32, 17, 0.0, None), (200, 24, 700, 0.05, 128)])
def test_quad_linear_is_the_int8_product(tokens, rows, width, density, chunk):
    w, b = pruned(rows, width, density, tokens), torch.randn(rows)
    x = torch.randn(tokens, width) * torch.rand(tokens, 1) * 3  # tokens of different ranges: per-token scales
    x[tokens // 2] = 0  # an all-zero token: scale 0, the bias alone
    y = quad_linear(x, QuadCSR(w, b, chunk=chunk))
    expected = reference(x, w, b)
    assert y.dtype == torch.float32 and y.shape == (tokens, rows)
    assert torch.allclose(y.double(), expected, rtol=1e-5, atol=1e-5 * (1 + expected.abs().max().item()))
    assert torch.equal(y[tokens // 2], b)
    exact = x @ w.T + b
    if density > 0:  # int8 is an approximation of the fp32 product, a close one
        assert ((y - exact).norm() / exact.norm()).item() < 0.03


@needs_vnni
def test_bf16_in_and_out_and_fused_gelu():
    w, b = pruned(96, 384, 0.3, 1), torch.randn(96)
    x = torch.randn(2, 70, 384).bfloat16()
    layout = QuadCSR(w, b)
    y = quad_linear(x, layout)
    expected = reference(x.float(), w, b).float().view(2, 70, 96)
    assert y.dtype == torch.bfloat16 and y.shape == (2, 70, 96)
    assert torch.allclose(y.float(), expected, rtol=1e-2, atol=1e-2)  # bf16 output rounding
    g = quad_linear(x.float(), layout, gelu=True, bf16_out=True)
    assert g.dtype == torch.bfloat16
    assert torch.allclose(g.float(), torch.nn.functional.gelu(expected), rtol=1e-2, atol=1e-2)


needs_int8_dense = pytest.mark.skipif(not int8_dense(), reason="no AVX512-VNNI or no torch._int_mm here")


@needs_int8_dense
@pytest.mark.parametrize("tokens,rows,width,density", [
    (1, 16, 16, 0.5), (63, 48, 40, 0.3), (SLICE, 384, 384, 0.5), (SLICE + 1, 37, 383, 0.3),
    (3 * SLICE + 5, 96, 700, 0.1), (7, 64, 100, 1.0), (9, 32, 17, 0.0)])
def test_the_dense_int8_side_is_bit_identical_to_the_quads(tokens, rows, width, density):
    w, b = pruned(rows, width, density, tokens), torch.randn(rows)
    x = torch.randn(tokens, width) * torch.rand(tokens, 1) * 3
    x[tokens // 2] = 0
    whole, quads = Int8Dense(w, b), QuadCSR(w, b)
    for inputs in (x, x.bfloat16()):
        for gelu in (False, True):
            for bf16_out in (False, True):
                y = int8_dense_linear(inputs, whole, gelu=gelu, bf16_out=bf16_out)
                assert torch.equal(y, quad_linear(inputs, quads, gelu=gelu, bf16_out=bf16_out))
    y = int8_dense_linear(x, whole)  # and both are the reference's int8 product
    expected = reference(x, w, b)
    assert y.dtype == torch.float32 and torch.equal(y[tokens // 2], b)
    assert torch.allclose(y.double(), expected, rtol=1e-5, atol=1e-5 * (1 + expected.abs().max().item()))


@needs_int8_dense
def test_the_native_token_quantisation_is_the_reference():
    from lth.engine.build import native

    x = torch.randn(70, 37) * torch.rand(70, 1) * 5
    x[3] = 0
    x[5, :4] = torch.tensor([127.0, 2.5, -2.5, 0.5])  # ties, to even: 2.5 -> 2, -2.5 -> -2, 0.5 -> 0
    x[5, 4:] = 0
    for inputs in (x, x.bfloat16()):
        q, scale = native()[0].quantize_tokens(inputs.contiguous())
        expected_q, expected_scale = quantize_tokens(inputs)
        assert q.dtype == torch.int8 and torch.equal(q, expected_q) and torch.equal(scale, expected_scale)
    assert q[5, :4].tolist() == [127, 2, -2, 0]


@needs_int8_dense
def test_an_unpruned_layer_of_the_ticket_runs_the_dense_int8_product_in_int8():
    from lth.engine.sparse import SparseLinear, sparsify

    g = torch.Generator().manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(40, 24), torch.nn.Linear(24, 8))
    with torch.no_grad():
        model[0].weight.mul_(torch.rand(24, 40, generator=g) < 0.3)  # pruned; model[1] kept whole
    assert sparsify(torch.nn.Sequential(*model), names=["0.weight", "1.weight"]) == 1  # bf16/fp32: dense left alone
    assert sparsify(model, names=["0.weight", "1.weight"], int8=True) == 2
    pruned_layer, whole_layer = model
    assert isinstance(whole_layer, SparseLinear) and whole_layer.csr is None and whole_layer.whole is not None
    x = torch.randn(5, 24, generator=g)
    assert torch.equal(whole_layer(x), int8_dense_linear(x, Int8Dense(whole_layer.dense.weight,
                                                                       whole_layer.dense.bias)))
    assert whole_layer.choice == {8: "dense"} and isinstance(pruned_layer.csr, QuadCSR)


def test_the_layout_packs_four_int8_weights_a_word_and_pads_short_rows():
    w = torch.zeros(3, 8)
    w[0, [1, 2, 4, 6, 7]] = torch.tensor([1.0, -2.0, 3.0, 127.0, -127.0])  # 5 non-zeros: two quads
    w[2, 5] = 0.5  # one: a quad of its column four times, three weights 0
    layout = QuadCSR(w, chunk=8)
    assert layout.indptr.tolist() == [0, 2, 2, 3]  # row 1 is empty
    assert layout.indices.tolist() == [1, 2, 4, 6, 7, 7, 7, 7, 5, 5, 5, 5]
    as_bytes = layout.values.view(torch.int8).tolist()  # little-endian: the k-th weight in byte k
    assert as_bytes == [1, -2, 3, 127, -127, 0, 0, 0, 127, 0, 0, 0]
    assert torch.allclose(layout.scale, torch.tensor([1.0, 0.0, 0.5 / 127]))
    assert layout.rowsum.tolist() == [2, 0, 127]


def test_quantisation_rounds_to_nearest_even_and_keeps_zero_rows():
    q, s = quantize_rows(torch.tensor([[0.5, -1.0, 0.0], [0.0, 0.0, 0.0]]) * 127)
    assert q.tolist() == [[64, -127, 0], [0, 0, 0]] or q.tolist() == [[63, -127, 0], [0, 0, 0]]
    assert s.tolist()[1] == 0.0
    qx, sx = quantize_tokens(torch.tensor([[2.5, 127.0], [0.0, 0.0]]))
    assert qx.tolist() == [[2, 127], [0, 0]] and sx.tolist() == [1.0, 0.0]  # 2.5 -> 2: ties to even


@needs_vnni
def test_load_fast_in_int8_follows_the_model_and_runs_the_quads_where_chosen(shipped):
    import lth
    from lth.engine.sparse import SparseLinear

    batch = two_pairs()
    want = model_logits(shipped, batch)
    fast = lth.load_fast(shipped["to"], precision="int8")
    assert fast.precision == "int8"
    layers = [m for m in fast.model.modules() if isinstance(m, SparseLinear)]
    assert layers and all(m.int8 and isinstance(m.csr, QuadCSR) for m in layers)
    fast(**batch)
    force(fast, "sparse")  # every layer on the int8 kernel: the model's outputs within int8's error
    on_quads = fast(**batch).logits
    assert torch.allclose(on_quads.float(), want, atol=0.05)
    assert on_quads.argmax(-1).tolist() == want.argmax(-1).tolist()
    if int8_dense():  # every layer on the dense int8 product: the same outputs, bit for bit
        force(fast, "dense")
        assert torch.equal(fast(**batch).logits, on_quads)


def test_int8_is_refused_with_the_reason_where_the_kernel_is_missing(shipped, monkeypatch):
    import lth
    import lth.engine.engine

    monkeypatch.setattr(lth.engine.engine, "quad_kernel", lambda: False)
    with pytest.raises(lth.LthError, match="AVX512-VNNI"):
        lth.load_fast(shipped["to"], precision="int8")
