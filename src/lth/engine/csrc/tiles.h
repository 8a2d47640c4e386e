// What the sparse products of every layout share (sparse.cpp, int8.cpp): a tile of 64 tokens transposed into
// fp32 columns, GELU over a row of 64, and the tile of outputs transposed back.
#pragma once
#include "common.h"

// A tile of `count` token rows of x (tokens x width) -> xt (width x 64), zero-padded past `count`: 16 x 16
// blocks, each widened to fp32 (bf16) into a block in registers' reach, then transposed.
template <typename In>
static void load_tile(const In* x, int64_t width, int64_t count, float* xt) {
    int64_t i = 0;
#if defined(__AVX512F__)
    alignas(64) float block[256];
    for (; i + 16 <= width; i += 16)
        for (int64_t t = 0; t < 64; t += 16) {
            if (std::is_same<In, float>::value && t + 16 <= count) {  // fp32 rows are transposed where they are
                transpose16(reinterpret_cast<const float*>(x) + t * width + i, width, xt + i * 64 + t, 64);
                continue;
            }
            for (int64_t r = 0; r < 16; ++r)
                if (t + r < count) widen<In>(x + (t + r) * width + i, block + r * 16, 16);
                else std::fill(block + r * 16, block + r * 16 + 16, 0.f);
            transpose16(block, 16, xt + i * 64 + t, 64);
        }
#endif
    for (; i < width; ++i)
        for (int64_t t = 0; t < 64; ++t) xt[i * 64 + t] = t < count ? static_cast<float>(x[t * width + i]) : 0.f;
}

// GELU(x) = x/2 (1 + erf(x/sqrt 2)), erf by Abramowitz and Stegun 7.1.26 (|error| < 1.5e-7), of 16 floats and over
// a row of 64.
#if defined(__AVX512F__)
static inline __m512 gelu16(const __m512 x) {
    const __m512 half = _mm512_set1_ps(0.5f), one = _mm512_set1_ps(1.f), scale = _mm512_set1_ps(0.70710678f);
    const __m512 z = _mm512_mul_ps(x, scale);
    const __m512 a = _mm512_abs_ps(z);
    const __m512 t = _mm512_div_ps(one, _mm512_fmadd_ps(_mm512_set1_ps(0.3275911f), a, one));
    __m512 p = _mm512_set1_ps(1.061405429f);
    p = _mm512_fmadd_ps(p, t, _mm512_set1_ps(-1.453152027f));
    p = _mm512_fmadd_ps(p, t, _mm512_set1_ps(1.421413741f));
    p = _mm512_fmadd_ps(p, t, _mm512_set1_ps(-0.284496736f));
    p = _mm512_fmadd_ps(p, t, _mm512_set1_ps(0.254829592f));
    p = _mm512_mul_ps(p, t);
    const __m512 y = _mm512_fnmadd_ps(p, exp_nonpositive(_mm512_sub_ps(_mm512_setzero_ps(), _mm512_mul_ps(a, a))),
                                      one);  // erf(|z|)
    const __m512 erf = _mm512_castsi512_ps(_mm512_or_si512(_mm512_castps_si512(y), _mm512_and_si512(
        _mm512_castps_si512(z), _mm512_set1_epi32(0x80000000))));
    return _mm512_mul_ps(_mm512_mul_ps(half, x), _mm512_add_ps(one, erf));
}
#endif

static void gelu64(float* v) {
#if defined(__AVX512F__)
    for (int j = 0; j < 64; j += 16) _mm512_storeu_ps(v + j, gelu16(_mm512_loadu_ps(v + j)));
#else
    for (int j = 0; j < 64; ++j) v[j] = 0.5f * v[j] * (1.f + std::erf(v[j] * 0.70710678f));
#endif
}

// acc (rows x 64) -> `count` token rows of y (a row every `stride`), 16 x 16 blocks transposed then narrowed.
template <typename Out>
static void transpose_out(const float* acc, int64_t rows, int64_t count, Out* y, int64_t stride) {
    int64_t o = 0;
#if defined(__AVX512F__)
    alignas(64) float block[256];
    for (; o + 16 <= rows; o += 16)
        for (int64_t t = 0; t < count; t += 16) {
            if (std::is_same<Out, float>::value && t + 16 <= count) {
                transpose16(acc + o * 64 + t, 64, reinterpret_cast<float*>(y) + t * stride + o, stride);
                continue;
            }
            transpose16(acc + o * 64 + t, 64, block, 16);
            for (int64_t c = 0; c < 16 && t + c < count; ++c) narrow<Out>(block + c * 16, y + (t + c) * stride + o, 16);
        }
#endif
    for (; o < rows; ++o)
        for (int64_t t = 0; t < count; ++t) y[t * stride + o] = static_cast<Out>(acc[o * 64 + t]);
}


// The frame of every layout's y = x Wᵀ + b: y (tokens x rows) in bf16 when x is or `bf16_out`, else fp32; work
// items of (tile of 64 tokens, block of `per` output rows), one block a tile when there are tiles enough for the
// threads, more when there are not (batch 1 with few tokens), in blocks of whole 16-row groups; `run(x, y, blocks,
// per, begin, end)` is called on each thread's items with x and y typed (float or at::BFloat16).
template <typename Run>
static torch::Tensor over_tiles(const torch::Tensor& x, int64_t rows, bool bf16_out, Run run) {
    const bool bf16_in = x.scalar_type() == at::ScalarType::BFloat16;
    const int64_t tokens = x.size(0), count = (tokens + 63) / 64;
    auto y = torch::empty({tokens, rows}, x.options().dtype(bf16_out || bf16_in ? at::kBFloat16 : at::kFloat));
    const int64_t threads = at::get_num_threads();
    const int64_t blocks = count >= threads ? 1 : std::min<int64_t>((threads + count - 1) / count,
                                                                     std::max<int64_t>(1, rows / 16));
    const int64_t per = ((rows + blocks - 1) / blocks + 15) / 16 * 16;
    auto each = [&](auto in, auto out) {
        using In = decltype(in);
        using Out = decltype(out);
        const In* xp = reinterpret_cast<const In*>(x.data_ptr());
        Out* yp = reinterpret_cast<Out*>(y.data_ptr());
        at::parallel_for(0, count * blocks, 1, [&](int64_t begin, int64_t end) {
            run(xp, yp, blocks, per, begin, end);
        });
    };
    if (bf16_in) each(at::BFloat16(), at::BFloat16());
    else if (bf16_out) each(float(), at::BFloat16());
    else each(float(), float());
    return y;
}
