// The Python module: torch.utils.cpp_extension builds it under a name keyed by the CPU (engine/build.py).
#include <torch/extension.h>
#include "kernels.h"

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
    m.def("sparse_linear", &sparse_linear, "y = x Wᵀ + b from a CSR layout in fp32");
    m.def("pair_linear", &pair_linear, "y = x Wᵀ + b from the bf16 pair layout");
    m.def("has_pairs", &has_pairs, "whether the bf16 pair kernel is built");
    m.def("quad_linear", &quad_linear, "y = dequant(q(x) q(W)ᵀ) + b from the int8 quad layout");
    m.def("has_quads", &has_quads, "whether the int8 quad kernel (AVX512-VNNI) is built");
    m.def("quantize_tokens", &quantize_tokens, "(int8 x per token, its scales) for the dense int8 product");
    m.def("dequantize_rows", &dequantize_rows, "y = sums scale_w scale_x + b (then GELU), into y, after the dense int8 product");
    m.def("attention", &attention, "fused attention over a Q|K|V projection");
    m.def("add_layernorm", &add_layernorm, "LayerNorm(a + b), the residual add and the norm in one pass");
    m.def("attention_dtypes", &attention_dtypes, "the dtypes the fused attention is built for");
}
