// LayerNorm(a + b) over the last dimension in one pass: the residual add, the row's mean and variance, the
// normalisation and its affine map, in fp32 (as torch's layer_norm computes inside), fp32 out. a and b may each be
// fp32 or bf16. Replaces torch's add then layer_norm, which on bf16/fp32 activations of 4096 x 384 took
// ~2 ms a layer norm and ~1 ms an add on 2 cores (benchmarks/results/design-measurements.md).
#include "common.h"
#include "kernels.h"

// The sum of a row of n floats: two chains of 16 lanes on AVX-512, reduced, then the tail; else a plain loop.
static inline float row_sum(const float* v, int64_t n) {
    int64_t i = 0;
    float total = 0.f;
#if defined(__AVX512F__)
    __m512 s = _mm512_setzero_ps(), q = _mm512_setzero_ps();  // two chains: the adds' latency
    for (; i + 32 <= n; i += 32) {
        s = _mm512_add_ps(s, _mm512_loadu_ps(v + i));
        q = _mm512_add_ps(q, _mm512_loadu_ps(v + i + 16));
    }
    total = _mm512_reduce_add_ps(_mm512_add_ps(s, q));
#endif
    for (; i < n; ++i) total += v[i];
    return total;
}

// Per row: v = a + b; mean; variance as the mean of (v - mean)^2 (two passes over a row in L1); then
// (v - mean) / sqrt(variance + eps) * weight + bias.
template <typename A, typename B>
static void add_norm_rows(const A* a, const B* b, const float* weight, const float* bias, float eps, int64_t n,
                          int64_t begin, int64_t end, float* y) {
    std::vector<float> other(n), square(n);
    for (int64_t r = begin; r < end; ++r) {
        float* row = y + r * n;  // the sum is built in the output row, then normalised in place
        widen<A>(a + r * n, row, n);
        widen<B>(b + r * n, other.data(), n);
        for (int64_t i = 0; i < n; ++i) row[i] += other[i];
        const float mean = row_sum(row, n) / n;
        for (int64_t i = 0; i < n; ++i) square[i] = (row[i] - mean) * (row[i] - mean);
        const float inverse = 1.f / std::sqrt(row_sum(square.data(), n) / n + eps);
        for (int64_t i = 0; i < n; ++i) row[i] = (row[i] - mean) * inverse * weight[i] + bias[i];
    }
}

torch::Tensor add_layernorm(torch::Tensor a, torch::Tensor b, torch::Tensor weight, torch::Tensor bias, double eps) {
    TORCH_CHECK(a.sizes() == b.sizes(), "add_layernorm: a and b differ in shape");
    TORCH_CHECK(weight.scalar_type() == at::kFloat && bias.scalar_type() == at::kFloat, "weight and bias in fp32");
    const int64_t n = a.size(-1), rows = a.numel() / std::max<int64_t>(n, 1);
    TORCH_CHECK(weight.numel() == n && bias.numel() == n, "add_layernorm: weight and bias need ", n, " values");
    a = a.contiguous(), b = b.contiguous();
    auto y = torch::empty(a.sizes(), a.options().dtype(at::kFloat));
    const float* w = weight.data_ptr<float>();
    const float* c = bias.data_ptr<float>();
    auto run = [&](auto pa, auto pb) {
        at::parallel_for(0, rows, 16, [&](int64_t begin, int64_t end) {
            add_norm_rows(pa, pb, w, c, static_cast<float>(eps), n, begin, end, y.data_ptr<float>());
        });
    };
    const bool abf = a.scalar_type() == at::kBFloat16, bbf = b.scalar_type() == at::kBFloat16;
    TORCH_CHECK((abf || a.scalar_type() == at::kFloat) && (bbf || b.scalar_type() == at::kFloat),
                "add_layernorm takes fp32 or bf16");
    if (abf && bbf) run(a.data_ptr<at::BFloat16>(), b.data_ptr<at::BFloat16>());
    else if (abf) run(a.data_ptr<at::BFloat16>(), b.data_ptr<float>());
    else if (bbf) run(a.data_ptr<float>(), b.data_ptr<at::BFloat16>());
    else run(a.data_ptr<float>(), b.data_ptr<float>());
    return y;
}
