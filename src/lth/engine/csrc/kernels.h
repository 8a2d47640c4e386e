// What the extension exports to Python (bindings.cpp): the sparse x dense products and the fused attention.
#pragma once
#include <torch/extension.h>
#include <string>
#include <vector>

torch::Tensor sparse_linear(torch::Tensor x, int64_t chunk, torch::Tensor indptr, torch::Tensor indices,
                            torch::Tensor values, torch::Tensor bias, bool gelu, bool bf16_out);
torch::Tensor pair_linear(torch::Tensor x, int64_t chunk, torch::Tensor indptr, torch::Tensor indices,
                          torch::Tensor values, torch::Tensor bias, bool gelu, bool bf16_out);
bool has_pairs();
torch::Tensor quad_linear(torch::Tensor x, int64_t chunk, torch::Tensor indptr, torch::Tensor indices,
                          torch::Tensor quads, torch::Tensor wscale, torch::Tensor rowsum, torch::Tensor bias,
                          bool gelu, bool bf16_out);
bool has_quads();
std::vector<torch::Tensor> quantize_tokens(torch::Tensor x);
void dequantize_rows(torch::Tensor acc, torch::Tensor xscale, torch::Tensor wscale, torch::Tensor bias, bool gelu,
                     torch::Tensor y);
torch::Tensor attention(torch::Tensor qkv, torch::Tensor mask, int64_t heads, double scale);
std::string attention_dtypes();
torch::Tensor add_layernorm(torch::Tensor a, torch::Tensor b, torch::Tensor weight, torch::Tensor bias, double eps);
