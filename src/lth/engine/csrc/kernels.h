// What the extension exports to Python (bindings.cpp): the sparse x dense products and the fused attention.
#pragma once
#include <torch/extension.h>
#include <string>

torch::Tensor sparse_linear(torch::Tensor x, int64_t chunk, torch::Tensor indptr, torch::Tensor indices,
                            torch::Tensor values, torch::Tensor bias, bool gelu, bool bf16_out);
torch::Tensor pair_linear(torch::Tensor x, int64_t chunk, torch::Tensor indptr, torch::Tensor indices,
                          torch::Tensor values, torch::Tensor bias, bool gelu, bool bf16_out);
bool has_pairs();
torch::Tensor quad_linear(torch::Tensor x, int64_t chunk, torch::Tensor indptr, torch::Tensor indices,
                          torch::Tensor quads, torch::Tensor wscale, torch::Tensor rowsum, torch::Tensor bias,
                          bool gelu, bool bf16_out);
bool has_quads();
torch::Tensor attention(torch::Tensor qkv, torch::Tensor mask, int64_t heads, double scale);
std::string attention_dtypes();
torch::Tensor add_layernorm(torch::Tensor a, torch::Tensor b, torch::Tensor weight, torch::Tensor bias, double eps);
