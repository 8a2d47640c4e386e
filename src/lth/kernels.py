"""Sparse x dense matrix products for CPU inference.

Y = X Wᵀ + b for activations X (tokens, in) and a pruned W (out, in) kept in CSR (rows = outputs), split into
column chunks where the input is wide or the matrix dense (`choose_chunk`). Tokens are taken 64 at a time: the
tile of X is transposed into a buffer (in x 64), then, chunk by chunk, for every output row each non-zero weight
adds w · X[:, i] to 64 running sums at once (four AVX-512 registers, fused multiply-adds), and the tile of
outputs is transposed back into Y. Tiles run in parallel on torch's threads (and blocks of output rows too,
where there are fewer tiles than threads). Inputs and outputs may be bf16 (converted while transposing), the products are fp32. Where the CPU has
AVX512-BF16 a second layout (`CSR(pairs=True)`) keeps W and the tile in bf16 and multiplies two non-zeros of a row
per instruction (VDPBF16PS, sums in fp32): what bf16 autocast's matmul computes, in half the bytes; on MiniLM's
shapes 1.2-2.8x the fp32 layout's speed (measured at 5-50% density).

Also here: attention fused into one pass a head (`fused_attention`), in bf16 with the same instructions and in fp32.

Three implementations, best first: a C++ kernel with AVX-512 (or AVX2) intrinsics, compiled for this machine
on first use (needs a C++ compiler; cached by torch); the same algorithm in numba (a wheel, no compiler); and
none (the engine then keeps the dense matmul). `backend()` says which one runs and why.
"""
from __future__ import annotations

import os
from functools import lru_cache

import numpy as np
import torch

TILE = 64

CPP = r"""
#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <immintrin.h>
#include <vector>
#include <algorithm>
#include <cmath>
#include <cstring>
#include <string>
#include <type_traits>

// Rows of n values widened to fp32 / narrowed from fp32 (bf16: 16 at a time, rounding to nearest even as
// torch does, NaN kept a NaN); fp32 is a copy.
template <typename In> static inline void widen(const In* src, float* dst, int64_t n) {
    int64_t i = 0;
#if defined(__AVX512F__)
    if constexpr (std::is_same<In, at::BFloat16>::value)
        for (; i + 16 <= n; i += 16) {
            const __m256i h = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(src + i));
            _mm512_storeu_ps(dst + i, _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16)));
        }
#endif
    for (; i < n; ++i) dst[i] = static_cast<float>(src[i]);
}

template <typename Out> static inline void narrow(const float* src, Out* dst, int64_t n) {
    int64_t i = 0;
#if defined(__AVX512F__)
    if constexpr (std::is_same<Out, at::BFloat16>::value)
        for (; i + 16 <= n; i += 16) {
            const __m512 v = _mm512_loadu_ps(src + i);
            const __m512i bits = _mm512_castps_si512(v);
            const __m512i odd = _mm512_and_si512(_mm512_srli_epi32(bits, 16), _mm512_set1_epi32(1));
            __m512i r = _mm512_srli_epi32(_mm512_add_epi32(bits, _mm512_add_epi32(odd, _mm512_set1_epi32(0x7FFF))), 16);
            r = _mm512_mask_mov_epi32(r, _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q), _mm512_set1_epi32(0x7FC0));
            _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst + i), _mm512_cvtepi32_epi16(r));
        }
#endif
    for (; i < n; ++i) dst[i] = static_cast<Out>(src[i]);
}

#if defined(__AVX512F__)
// dst[c * dstride + r] = src[r * sstride + c] for a 16 x 16 block of floats.
static inline void transpose16(const float* src, int64_t sstride, float* dst, int64_t dstride) {
    __m512 r[16], t[16];
    for (int i = 0; i < 16; ++i) r[i] = _mm512_loadu_ps(src + i * sstride);
    for (int i = 0; i < 16; i += 2) {
        t[i] = _mm512_unpacklo_ps(r[i], r[i + 1]);
        t[i + 1] = _mm512_unpackhi_ps(r[i], r[i + 1]);
    }
    for (int i = 0; i < 16; i += 4) {
        r[i] = _mm512_castpd_ps(_mm512_unpacklo_pd(_mm512_castps_pd(t[i]), _mm512_castps_pd(t[i + 2])));
        r[i + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(_mm512_castps_pd(t[i]), _mm512_castps_pd(t[i + 2])));
        r[i + 2] = _mm512_castpd_ps(_mm512_unpacklo_pd(_mm512_castps_pd(t[i + 1]), _mm512_castps_pd(t[i + 3])));
        r[i + 3] = _mm512_castpd_ps(_mm512_unpackhi_pd(_mm512_castps_pd(t[i + 1]), _mm512_castps_pd(t[i + 3])));
    }
    for (int i = 0; i < 4; ++i) {
        t[i] = _mm512_shuffle_f32x4(r[i], r[i + 4], 0x88);
        t[i + 4] = _mm512_shuffle_f32x4(r[i], r[i + 4], 0xdd);
        t[i + 8] = _mm512_shuffle_f32x4(r[i + 8], r[i + 12], 0x88);
        t[i + 12] = _mm512_shuffle_f32x4(r[i + 8], r[i + 12], 0xdd);
    }
    for (int i = 0; i < 8; ++i) {
        r[i] = _mm512_shuffle_f32x4(t[i], t[i + 8], 0x88);
        r[i + 8] = _mm512_shuffle_f32x4(t[i], t[i + 8], 0xdd);
    }
    for (int i = 0; i < 16; ++i) _mm512_storeu_ps(dst + i * dstride, r[i]);
}
#endif

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

#if defined(__AVX512F__)
// exp(x) for x <= 0 (clamped at -100: e^-100 is 0 next to the row's largest term, which is 1): 2^(x log2 e), an
// integer power by scalef and the fraction by a degree-6 polynomial.
static inline __m512 exp_nonpositive(__m512 x) {
    const __m512 e = _mm512_mul_ps(_mm512_max_ps(x, _mm512_set1_ps(-100.f)), _mm512_set1_ps(1.44269504f));
    const __m512 n = _mm512_roundscale_ps(e, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    const __m512 f = _mm512_sub_ps(e, n);
    __m512 q = _mm512_set1_ps(1.53524e-4f);
    q = _mm512_fmadd_ps(q, f, _mm512_set1_ps(1.33988e-3f));
    q = _mm512_fmadd_ps(q, f, _mm512_set1_ps(9.61817e-3f));
    q = _mm512_fmadd_ps(q, f, _mm512_set1_ps(5.55036e-2f));
    q = _mm512_fmadd_ps(q, f, _mm512_set1_ps(2.40226e-1f));
    q = _mm512_fmadd_ps(q, f, _mm512_set1_ps(6.93147e-1f));
    q = _mm512_fmadd_ps(q, f, _mm512_set1_ps(1.f));
    return _mm512_scalef_ps(q, n);
}
#endif

// GELU(x) = x/2 (1 + erf(x/sqrt 2)), erf by Abramowitz and Stegun 7.1.26 (|error| < 1.5e-7), over a row of 64.
static void gelu64(float* v) {
#if defined(__AVX512F__)
    const __m512 half = _mm512_set1_ps(0.5f), one = _mm512_set1_ps(1.f), scale = _mm512_set1_ps(0.70710678f);
    for (int j = 0; j < 64; j += 16) {
        const __m512 x = _mm512_loadu_ps(v + j), z = _mm512_mul_ps(x, scale);
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
        _mm512_storeu_ps(v + j, _mm512_mul_ps(_mm512_mul_ps(half, x), _mm512_add_ps(one, erf)));
    }
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

// out[0:64] = (first ? bias : out) + the sum over k in [k, end) of values[k] * xt[indices[k]]
static inline void products(const float* xt, int64_t k, const int64_t end, const int16_t* indices,
                                const float* values, float bias, bool first, float* out) {
#if defined(__AVX512F__)
    // two interleaved sets of accumulators: two independent chains of fused multiply-adds hide their latency
    __m512 a0, a1, a2, a3;
    if (first) { a0 = _mm512_set1_ps(bias); a1 = a0; a2 = a0; a3 = a0; }
    else { a0 = _mm512_loadu_ps(out); a1 = _mm512_loadu_ps(out + 16); a2 = _mm512_loadu_ps(out + 32);
           a3 = _mm512_loadu_ps(out + 48); }
    __m512 b0 = _mm512_setzero_ps(), b1 = b0, b2 = b0, b3 = b0;
    for (; k + 1 < end; k += 2) {
        const __m512 w = _mm512_set1_ps(values[k]), v = _mm512_set1_ps(values[k + 1]);
        const float* c = xt + static_cast<int64_t>(indices[k]) * 64;
        const float* d = xt + static_cast<int64_t>(indices[k + 1]) * 64;
        a0 = _mm512_fmadd_ps(w, _mm512_loadu_ps(c), a0);
        a1 = _mm512_fmadd_ps(w, _mm512_loadu_ps(c + 16), a1);
        a2 = _mm512_fmadd_ps(w, _mm512_loadu_ps(c + 32), a2);
        a3 = _mm512_fmadd_ps(w, _mm512_loadu_ps(c + 48), a3);
        b0 = _mm512_fmadd_ps(v, _mm512_loadu_ps(d), b0);
        b1 = _mm512_fmadd_ps(v, _mm512_loadu_ps(d + 16), b1);
        b2 = _mm512_fmadd_ps(v, _mm512_loadu_ps(d + 32), b2);
        b3 = _mm512_fmadd_ps(v, _mm512_loadu_ps(d + 48), b3);
    }
    if (k < end) {
        const __m512 w = _mm512_set1_ps(values[k]);
        const float* c = xt + static_cast<int64_t>(indices[k]) * 64;
        a0 = _mm512_fmadd_ps(w, _mm512_loadu_ps(c), a0);
        a1 = _mm512_fmadd_ps(w, _mm512_loadu_ps(c + 16), a1);
        a2 = _mm512_fmadd_ps(w, _mm512_loadu_ps(c + 32), a2);
        a3 = _mm512_fmadd_ps(w, _mm512_loadu_ps(c + 48), a3);
    }
    _mm512_storeu_ps(out, _mm512_add_ps(a0, b0)); _mm512_storeu_ps(out + 16, _mm512_add_ps(a1, b1));
    _mm512_storeu_ps(out + 32, _mm512_add_ps(a2, b2)); _mm512_storeu_ps(out + 48, _mm512_add_ps(a3, b3));
#elif defined(__AVX2__) && defined(__FMA__)
    __m256 a[8];
    for (int j = 0; j < 8; ++j) a[j] = first ? _mm256_set1_ps(bias) : _mm256_loadu_ps(out + 8 * j);
    for (; k < end; ++k) {
        const __m256 w = _mm256_set1_ps(values[k]);
        const float* c = xt + static_cast<int64_t>(indices[k]) * 64;
        for (int j = 0; j < 8; ++j) a[j] = _mm256_fmadd_ps(w, _mm256_loadu_ps(c + 8 * j), a[j]);
    }
    for (int j = 0; j < 8; ++j) _mm256_storeu_ps(out + 8 * j, a[j]);
#else
    if (first)
        for (int t = 0; t < 64; ++t) out[t] = bias;
    for (; k < end; ++k) {
        const float w = values[k];
        const float* c = xt + static_cast<int64_t>(indices[k]) * 64;
        for (int t = 0; t < 64; ++t) out[t] += w * c[t];
    }
#endif
}


// bf16 pairs (AVX512-BF16): W and x rounded to bf16 and multiplied two non-zeros at a time by VDPBF16PS, which
// sums a[2i] b[2i] + a[2i+1] b[2i+1] into fp32 lane i. A row's non-zeros come in pairs (columns p, q; both
// weights packed in one 32-bit word, an odd row padded with weight 0 on its last column); the tile of x is kept
// in bf16, one row of 64 per column (half the bytes of fp32: a 256-column chunk is 32 KiB, L1's size), its tokens
// stored in the order that makes unpacklo/hi of columns p and q the (x[p, t], x[q, t]) pairs of tokens
// 0-15, 16-31 (first half) and 32-47, 48-63 (second half). The products are what bf16 autocast's matmul computes.
bool has_pairs() {
#if defined(__AVX512BF16__)
    return true;
#else
    return false;
#endif
}

#if defined(__AVX512BF16__)
// 16 columns x 64 tokens of fp32 (`strip`, column-major) -> bf16 rows of xt, rounded to nearest even, permuted.
static inline void strip_to_bf16(const float* strip, int64_t columns, uint16_t* xt) {
    alignas(64) static const uint16_t order[32] = {0, 1, 2, 3, 16, 17, 18, 19, 4, 5, 6, 7, 20, 21, 22, 23,
                                                   8, 9, 10, 11, 24, 25, 26, 27, 12, 13, 14, 15, 28, 29, 30, 31};
    const __m512i idx = _mm512_load_si512(order);
    for (int64_t c = 0; c < columns; ++c)
        for (int h = 0; h < 2; ++h) {
            const float* r = strip + c * 64 + 32 * h;
            const __m512i both = (__m512i)_mm512_cvtne2ps_pbh(_mm512_loadu_ps(r + 16), _mm512_loadu_ps(r));
            _mm512_storeu_si512(xt + c * 64 + 32 * h, _mm512_permutexvar_epi16(idx, both));
        }
}

// A tile of `count` token rows of x -> xt (width x 64 bf16, permuted), zero past `count`.
template <typename In>
static void load_tile(const In* x, int64_t width, int64_t count, uint16_t* xt) {
    alignas(64) float block[256], strip[16 * 64];
    for (int64_t i = 0; i < width; i += 16) {
        const int64_t columns = std::min<int64_t>(16, width - i);
        for (int64_t t = 0; t < 64; t += 16) {
            for (int64_t r = 0; r < 16; ++r) {
                float* row = block + r * 16;
                if (t + r >= count || columns < 16) std::fill(row, row + 16, 0.f);
                if (t + r < count) widen<In>(x + (t + r) * width + i, row, columns);
            }
            transpose16(block, 16, strip + t, 64);
        }
        strip_to_bf16(strip, columns, xt + i * 64);
    }
}

static inline void products(const uint16_t* xt, int64_t k, const int64_t end, const int16_t* indices,
                                 const int32_t* pairs, float bias, bool first, float* out) {
    __m512 a0, a1, a2, a3;
    if (first) { a0 = _mm512_set1_ps(bias); a1 = a0; a2 = a0; a3 = a0; }
    else { a0 = _mm512_loadu_ps(out); a1 = _mm512_loadu_ps(out + 16); a2 = _mm512_loadu_ps(out + 32);
           a3 = _mm512_loadu_ps(out + 48); }
    __m512 b0 = _mm512_setzero_ps(), b1 = b0, b2 = b0, b3 = b0;
    // acc[0..3] += the pair's products for tokens 0-15, 16-31, 32-47, 48-63
    auto step = [&](int64_t j, __m512& s0, __m512& s1, __m512& s2, __m512& s3) {
        const __m512bh w = (__m512bh)_mm512_set1_epi32(pairs[j]);
        const uint16_t* p = xt + static_cast<int64_t>(indices[2 * j]) * 64;
        const uint16_t* q = xt + static_cast<int64_t>(indices[2 * j + 1]) * 64;
        const __m512i p0 = _mm512_loadu_si512(p), p1 = _mm512_loadu_si512(p + 32);
        const __m512i q0 = _mm512_loadu_si512(q), q1 = _mm512_loadu_si512(q + 32);
        s0 = _mm512_dpbf16_ps(s0, (__m512bh)_mm512_unpacklo_epi16(p0, q0), w);
        s1 = _mm512_dpbf16_ps(s1, (__m512bh)_mm512_unpackhi_epi16(p0, q0), w);
        s2 = _mm512_dpbf16_ps(s2, (__m512bh)_mm512_unpacklo_epi16(p1, q1), w);
        s3 = _mm512_dpbf16_ps(s3, (__m512bh)_mm512_unpackhi_epi16(p1, q1), w);
    };
    for (; k + 1 < end; k += 2) {  // two chains of accumulators hide the instruction's latency
        step(k, a0, a1, a2, a3);
        step(k + 1, b0, b1, b2, b3);
    }
    if (k < end) step(k, a0, a1, a2, a3);
    _mm512_storeu_ps(out, _mm512_add_ps(a0, b0)); _mm512_storeu_ps(out + 16, _mm512_add_ps(a1, b1));
    _mm512_storeu_ps(out + 32, _mm512_add_ps(a2, b2)); _mm512_storeu_ps(out + 48, _mm512_add_ps(a3, b3));
}

#endif

// The weights come in column chunks (indptr: chunk-major, then rows; indices relative to the chunk): every row
// sums over the first chunk, then the next... so the chunk of the tile being read stays in L1, not all of it.
// Work items are (tile, block of `per` output rows): one block a tile when there are tiles enough for the threads,
// more when there are not (batch 1 with few tokens), so every thread has work. A thread keeps its tile loaded
// across consecutive items of the same tile.
template <typename Tile, typename Value, typename In, typename Out>
static void tiles(const In* x, int64_t tokens, int64_t width, int64_t chunk, const int64_t* indptr,
                  const int16_t* indices, const Value* values, const float* bias, int64_t rows, Out* y, bool gelu,
                  int64_t blocks, int64_t per, int64_t begin, int64_t end) {
    std::vector<Tile> xt(((width + 15) / 16) * 16 * 64);
    std::vector<float> acc(per * 64);
    const int64_t chunks = (width + chunk - 1) / chunk;
    int64_t loaded = -1;
    for (int64_t item = begin; item < end; ++item) {
        const int64_t tile = item / blocks, first = item % blocks * per, last = std::min(rows, first + per);
        const int64_t start = tile * 64, count = std::min<int64_t>(64, tokens - start);
        if (first >= last) continue;
        if (tile != loaded) load_tile<In>(x + start * width, width, count, xt.data());
        loaded = tile;
        for (int64_t c = 0; c < chunks; ++c) {
            const int64_t* ptr = indptr + c * rows;
            for (int64_t o = first; o < last; ++o)
                if (c == 0 || ptr[o] < ptr[o + 1])
                    products(xt.data() + c * chunk * 64, ptr[o], ptr[o + 1], indices, values, bias[o], c == 0,
                             acc.data() + (o - first) * 64);
        }
        if (gelu)
            for (int64_t o = 0; o < last - first; ++o) gelu64(acc.data() + o * 64);
        transpose_out<Out>(acc.data(), last - first, count, y + start * rows + first, rows);
    }
}

// y = x Wᵀ + b (then GELU if asked) with a tile of Tile (float: fp32 values; uint16_t: bf16 pairs, int32 values);
// x float32 or bfloat16, y bf16 when x is or `bf16_out`.
template <typename Tile, typename Value>
static torch::Tensor linear(const torch::Tensor& x, int64_t chunk, const torch::Tensor& indptr,
                            const torch::Tensor& indices, const torch::Tensor& values, const torch::Tensor& bias,
                            bool gelu, bool bf16_out) {
    const bool bf16_in = x.scalar_type() == at::ScalarType::BFloat16;
    const int64_t tokens = x.size(0), width = x.size(1), rows = bias.size(0), count = (tokens + 63) / 64;
    auto y = torch::empty({tokens, rows}, x.options().dtype(bf16_out || bf16_in ? at::kBFloat16 : at::kFloat));
    // fewer tiles than threads: split the rows too, in blocks of whole 16-row groups
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
            tiles<Tile, Value, In, Out>(xp, tokens, width, chunk, indptr.data_ptr<int64_t>(),
                                        indices.data_ptr<int16_t>(), values.data_ptr<Value>(), bias.data_ptr<float>(),
                                        rows, yp, gelu, blocks, per, begin, end);
        });
    };
    if (bf16_in) each(at::BFloat16(), at::BFloat16());
    else if (bf16_out) each(float(), at::BFloat16());
    else each(float(), float());
    return y;
}

torch::Tensor sparse_linear(torch::Tensor x, int64_t chunk, torch::Tensor indptr, torch::Tensor indices,
                            torch::Tensor values, torch::Tensor bias, bool gelu, bool bf16_out) {
    return linear<float, float>(x, chunk, indptr, indices, values, bias, gelu, bf16_out);
}

// The same with bf16 pairs: y = bf16(x) bf16(W)ᵀ + b, summed in fp32.
torch::Tensor pair_linear(torch::Tensor x, int64_t chunk, torch::Tensor indptr, torch::Tensor indices,
                          torch::Tensor pairs, torch::Tensor bias, bool gelu, bool bf16_out) {
#if defined(__AVX512BF16__)
    return linear<uint16_t, int32_t>(x, chunk, indptr, indices, pairs, bias, gelu, bf16_out);
#else
    TORCH_CHECK(false, "this build has no AVX512-BF16: use the fp32 layout");
    return x;
#endif
}
#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VL__)
#define LTH_ATTENTION 1
// The additive mask's values for 16 keys (`real`: those that exist), in fp32: from bf16 bits or from fp32.
static inline __m512 mask16(const uint16_t* m, __mmask16 real) {
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(real, m)), 16));
}
static inline __m512 mask16(const float* m, __mmask16 real) { return _mm512_maskz_loadu_ps(real, m); }

static inline void store16(float* p, __m512 v) { _mm512_storeu_ps(p, v); }
#if defined(__AVX512BF16__)
static inline void store16(uint16_t* p, __m512 v) {
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), (__m256i)_mm512_cvtneps_pbh(v));
}
#endif

// A row of scores (`keys` wide, fp32) -> its softmax into `out` (fp32, which may be `s` itself, or bf16): scaled,
// the mask (if any) added, keys past `tokens` left out.
template <typename M, typename Out>
static void softmax_row(float* s, int64_t keys, int64_t tokens, const M* m, float scale, Out* out) {
    __m512 top = _mm512_set1_ps(-INFINITY);
    for (int64_t j = 0; j < keys; j += 16) {
        __m512 v = _mm512_mul_ps(_mm512_loadu_ps(s + j), _mm512_set1_ps(scale));
        const __mmask16 real = j + 16 <= tokens ? 0xFFFF : static_cast<__mmask16>((1u << (tokens - j)) - 1);
        if (m) v = _mm512_add_ps(v, mask16(m + j, real));
        v = _mm512_mask_blend_ps(real, _mm512_set1_ps(-INFINITY), v);
        _mm512_storeu_ps(s + j, v);
        top = _mm512_max_ps(top, v);
    }
    const __m512 most = _mm512_set1_ps(_mm512_reduce_max_ps(top));
    __m512 total = _mm512_setzero_ps();
    for (int64_t j = 0; j < keys; j += 16) {
        const __m512 e = exp_nonpositive(_mm512_sub_ps(_mm512_loadu_ps(s + j), most));
        _mm512_storeu_ps(s + j, e);
        total = _mm512_add_ps(total, e);
    }
    const __m512 inv = _mm512_set1_ps(1.f / _mm512_reduce_add_ps(total));
    for (int64_t j = 0; j < keys; j += 16) store16(out + j, _mm512_mul_ps(_mm512_loadu_ps(s + j), inv));
}

// One head of one sequence in fp32: context = softmax(scale q kᵀ + mask) v with fused multiply-adds; q, k and v
// read from the fused projection (tokens x 3 width), the context written into its (tokens x width) slice. Scores
// for 8 query rows x 16 keys at a time from kt (k transposed), the context from v's rows where they are.
template <int D>
static void one_head(const float* qkv, int64_t tokens, int64_t width, int64_t head, const float* mask,
                     int64_t mask_stride, float scale, float* out, std::vector<float>& kt, std::vector<float>& scores) {
    constexpr int NV = D / 16, ROWS = 8, G = 16 / NV;
    const int64_t keys = (tokens + 15) / 16 * 16, stride = 3 * width;
    const float* q0 = qkv + head * D;
    const float* k0 = qkv + width + head * D;
    const float* v0 = qkv + 2 * width + head * D;
    for (int64_t d = 0; d < D; ++d)
        for (int64_t j = 0; j < keys; ++j) kt[d * keys + j] = j < tokens ? k0[j * stride + d] : 0.f;
    for (int64_t i0 = 0; i0 < tokens; i0 += ROWS) {
        const float* qr[ROWS];
        for (int r = 0; r < ROWS; ++r) qr[r] = q0 + std::min<int64_t>(i0 + r, tokens - 1) * stride;
        for (int64_t jb = 0; jb < keys; jb += 16) {
            __m512 acc[ROWS];
            for (int r = 0; r < ROWS; ++r) acc[r] = _mm512_setzero_ps();
            for (int d = 0; d < D; ++d) {
                const __m512 kv = _mm512_loadu_ps(kt.data() + d * keys + jb);
                for (int r = 0; r < ROWS; ++r) acc[r] = _mm512_fmadd_ps(_mm512_set1_ps(qr[r][d]), kv, acc[r]);
            }
            for (int r = 0; r < ROWS; ++r) _mm512_storeu_ps(scores.data() + r * keys + jb, acc[r]);
        }
        for (int r = 0; r < ROWS && i0 + r < tokens; ++r) {
            float* s = scores.data() + r * keys;
            softmax_row(s, keys, tokens, mask ? mask + (i0 + r) * mask_stride : nullptr, scale, s);
        }
        for (int g = 0; g < ROWS; g += G) {
            __m512 acc[G][NV];
            for (int r = 0; r < G; ++r)
                for (int n = 0; n < NV; ++n) acc[r][n] = _mm512_setzero_ps();
            for (int64_t j = 0; j < tokens; ++j) {
                __m512 vv[NV];
                for (int n = 0; n < NV; ++n) vv[n] = _mm512_loadu_ps(v0 + j * stride + 16 * n);
                for (int r = 0; r < G; ++r) {
                    const __m512 p = _mm512_set1_ps(scores[(g + r) * keys + j]);
                    for (int n = 0; n < NV; ++n) acc[r][n] = _mm512_fmadd_ps(p, vv[n], acc[r][n]);
                }
            }
            for (int r = 0; r < G && i0 + g + r < tokens; ++r)
                for (int n = 0; n < NV; ++n) _mm512_storeu_ps(out + (i0 + g + r) * width + head * D + 16 * n, acc[r][n]);
        }
    }
}
#endif

#if defined(__AVX512BF16__) && defined(LTH_ATTENTION)
// The same in bf16, both products taking pairs along their sum with VDPBF16PS: scores pair two dimensions of q
// (broadcast) against the same two of 16 keys, the context two keys' probabilities (broadcast) against their
// values of 16 dimensions. Scores and softmax in fp32, probabilities rounded to bf16 as softmax's bf16 output is.
template <int D>
static void one_head(const uint16_t* qkv, int64_t tokens, int64_t width, int64_t head, const uint16_t* mask,
                     int64_t mask_stride, float scale, uint16_t* out, std::vector<uint32_t>& kp,
                     std::vector<uint32_t>& vp, std::vector<float>& scores, std::vector<uint16_t>& probs) {
    constexpr int NV = D / 16, ROWS = 8, G = 16 / NV;  // vectors a context row; query rows at a time
    const int64_t keys = (tokens + 15) / 16 * 16, stride = 3 * width;
    const uint16_t* q0 = qkv + head * D;
    const uint16_t* k0 = qkv + width + head * D;
    const uint16_t* v0 = qkv + 2 * width + head * D;
    // kp[d/2][j] = (k[j][d], k[j][d+1]); vp[j/2][d] = (v[j][d], v[j+1][d]); zero past the last token
    for (int64_t j = 0; j < keys; ++j)
        for (int64_t dd = 0; dd < D / 2; ++dd)
            kp[dd * keys + j] = j < tokens ? reinterpret_cast<const uint32_t*>(k0 + j * stride)[dd] : 0u;
    for (int64_t jj = 0; jj < keys / 2; ++jj)
        for (int64_t d = 0; d < D; ++d) {
            const uint32_t lo = 2 * jj < tokens ? v0[2 * jj * stride + d] : 0;
            const uint32_t hi = 2 * jj + 1 < tokens ? v0[(2 * jj + 1) * stride + d] : 0;
            vp[jj * D + d] = lo | (hi << 16);
        }
    for (int64_t i0 = 0; i0 < tokens; i0 += ROWS) {
        const uint32_t* qr[ROWS];
        for (int r = 0; r < ROWS; ++r)
            qr[r] = reinterpret_cast<const uint32_t*>(q0 + std::min<int64_t>(i0 + r, tokens - 1) * stride);
        for (int64_t jb = 0; jb < keys; jb += 16) {
            __m512 acc[ROWS];
            for (int r = 0; r < ROWS; ++r) acc[r] = _mm512_setzero_ps();
            for (int dd = 0; dd < D / 2; ++dd) {
                const __m512bh kv = (__m512bh)_mm512_loadu_si512(kp.data() + dd * keys + jb);
                for (int r = 0; r < ROWS; ++r)
                    acc[r] = _mm512_dpbf16_ps(acc[r], (__m512bh)_mm512_set1_epi32(qr[r][dd]), kv);
            }
            for (int r = 0; r < ROWS; ++r) _mm512_storeu_ps(scores.data() + r * keys + jb, acc[r]);
        }
        for (int r = 0; r < ROWS && i0 + r < tokens; ++r)  // softmax of each row, into bf16 probabilities
            softmax_row(scores.data() + r * keys, keys, tokens, mask ? mask + (i0 + r) * mask_stride : nullptr,
                        scale, probs.data() + r * keys);
        for (int g = 0; g < ROWS; g += G) {  // context rows, G at a time
            __m512 acc[G][NV];
            for (int r = 0; r < G; ++r)
                for (int n = 0; n < NV; ++n) acc[r][n] = _mm512_setzero_ps();
            const uint32_t* p = reinterpret_cast<const uint32_t*>(probs.data() + g * keys);
            for (int64_t jj = 0; jj < keys / 2; ++jj) {
                __m512bh vv[NV];
                for (int n = 0; n < NV; ++n) vv[n] = (__m512bh)_mm512_loadu_si512(vp.data() + jj * D + 16 * n);
                for (int r = 0; r < G; ++r) {
                    const __m512bh pr = (__m512bh)_mm512_set1_epi32(p[r * keys / 2 + jj]);
                    for (int n = 0; n < NV; ++n) acc[r][n] = _mm512_dpbf16_ps(acc[r][n], pr, vv[n]);
                }
            }
            for (int r = 0; r < G && i0 + g + r < tokens; ++r)
                for (int n = 0; n < NV; ++n)
                    _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + (i0 + g + r) * width + head * D + 16 * n),
                                        (__m256i)_mm512_cvtneps_pbh(acc[r][n]));
        }
    }
}
#endif

#if defined(LTH_ATTENTION)
// Every (sequence, head) of the batch, in parallel: T is uint16_t (bf16) or float.
template <int D, typename T>
static void heads_of(const torch::Tensor& qkv, const torch::Tensor& mask, int64_t heads, double scale,
                     torch::Tensor& out) {
    const int64_t batch = qkv.size(0), tokens = qkv.size(1), width = heads * D, keys = (tokens + 15) / 16 * 16;
    const T* src = reinterpret_cast<const T*>(qkv.data_ptr());
    T* dst = reinterpret_cast<T*>(out.data_ptr());
    const bool masked = mask.numel() > 0;
    const T* mp = masked ? reinterpret_cast<const T*>(mask.data_ptr()) : nullptr;
    const int64_t rows = masked ? mask.size(1) : 0;
    at::parallel_for(0, batch * heads, 1, [&](int64_t begin, int64_t end) {
        std::vector<float> scores(8 * keys), kt;
        std::vector<uint32_t> kp, vp;
        std::vector<uint16_t> probs;
        if constexpr (std::is_same<T, float>::value) kt.resize(D * keys);
        else { kp.resize(D / 2 * keys); vp.resize(keys / 2 * D); probs.resize(8 * keys); }
        for (int64_t item = begin; item < end; ++item) {
            const int64_t b = item / heads, h = item % heads;
            const T* m = masked ? mp + item * rows * tokens : nullptr;
            if constexpr (std::is_same<T, float>::value)
                one_head<D>(src + b * tokens * 3 * width, tokens, width, h, m, rows > 1 ? tokens : 0,
                            static_cast<float>(scale), dst + b * tokens * width, kt, scores);
#if defined(__AVX512BF16__)
            else
                one_head<D>(src + b * tokens * 3 * width, tokens, width, h, m, rows > 1 ? tokens : 0,
                            static_cast<float>(scale), dst + b * tokens * width, kp, vp, scores, probs);
#endif
        }
    });
}

template <typename T>
static void attention_in(const torch::Tensor& qkv, const torch::Tensor& mask, int64_t heads, int64_t size,
                         double scale, torch::Tensor& out) {
    if (size == 32) heads_of<32, T>(qkv, mask, heads, scale, out);
    else if (size == 64) heads_of<64, T>(qkv, mask, heads, scale, out);
    else if (size == 128) heads_of<128, T>(qkv, mask, heads, scale, out);
    else TORCH_CHECK(false, "head size ", size, " has no fused attention: 32, 64 or 128");
}
#endif

// Which dtypes the fused attention is built for here: "bf16,fp32", "fp32" or "".
std::string attention_dtypes() {
#if defined(LTH_ATTENTION) && defined(__AVX512BF16__)
    return "bf16,fp32";
#elif defined(LTH_ATTENTION)
    return "fp32";
#else
    return "";
#endif
}

// context (batch, tokens, heads x size) of a fused Q|K|V projection (batch, tokens, 3 x heads x size), bf16 or
// fp32; mask: empty, or additive in the same dtype (batch x heads, 1 or tokens, tokens). Head sizes 32, 64, 128.
torch::Tensor attention(torch::Tensor qkv, torch::Tensor mask, int64_t heads, double scale) {
    const int64_t size = qkv.size(2) / 3 / heads;
    auto out = torch::empty({qkv.size(0), qkv.size(1), heads * size}, qkv.options());
    const bool bf16 = qkv.scalar_type() == at::ScalarType::BFloat16;
    TORCH_CHECK(attention_dtypes().find(bf16 ? "bf16" : "fp32") != std::string::npos,
                "no fused attention for this dtype in this build");
#if defined(LTH_ATTENTION)
    if (bf16) attention_in<uint16_t>(qkv, mask, heads, size, scale, out);
    else attention_in<float>(qkv, mask, heads, size, scale, out);
#endif
    return out;
}
"""


CHUNK = 128  # input columns per chunk when chunking pays: 128 x 64 tokens x 4 bytes = 32 KiB, L1's size


def choose_chunk(width: int, density: float, pairs: bool = False) -> int:
    """Columns per chunk. fp32 layout: all of them (plain CSR) for narrow, sparse matrices; 128 for wide inputs or
    denser matrices, where re-reading a 64-token tile of a wide input from L2 for every non-zero costs more than
    re-reading each row's 64 running sums once per chunk (measured on 384 x 1536 and at 30% density). bf16 pairs
    (half the bytes a column): 512 up to 20% density, 256 above (measured at 5-50% on MiniLM's shapes)."""
    if pairs:
        return min(width, 512 if density <= 0.2 else 256)
    return CHUNK if width > CHUNK and (width > 512 or density > 0.2) else width


class CSR:
    """A pruned weight matrix in column chunks of CSR: for chunk c and output row o, the non-zeros at
    indptr[c * rows + o] : indptr[c * rows + o + 1], their columns (int16, relative to the chunk) and values (fp32).
    With one chunk it is plain CSR.

    `pairs=True` (for `pair_kernel()`): the weights are rounded to bf16 and each row's non-zeros (in each chunk)
    go in pairs: indptr counts pairs, `indices` holds two columns a pair, `values` one int32 a pair, the first
    weight's bf16 bits in its low half; a row with an odd count ends on a pair whose second weight is 0 on its
    last column again."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None = None, chunk: int | None = None,
                 pairs: bool = False):
        w = weight.detach().float().cpu()
        if w.shape[1] > 32767:
            raise ValueError(f"{w.shape[1]} input features do not fit int16 column indices")
        self.shape = rows, width = tuple(w.shape)
        self.pairs = pairs
        nonzero = w != 0
        density = float(nonzero.float().mean()) if w.numel() else 0.0
        self.chunk = max(1, min(width, chunk or choose_chunk(width, density, pairs)))
        r, c = nonzero.nonzero(as_tuple=True)
        key = (c // self.chunk) * rows + r  # chunk-major, then row, then column
        order = torch.sort(key * width + c).indices
        r, c, key = r[order], c[order], key[order]
        chunks = (width + self.chunk - 1) // self.chunk
        counts = torch.bincount(key, minlength=chunks * rows)
        self.bias = (torch.zeros(rows) if bias is None else bias.detach().float().cpu()).contiguous()
        if not pairs:
            self.indptr = torch.cat([torch.zeros(1, dtype=torch.int64), counts.cumsum(0)])
            self.indices = (c % self.chunk).to(torch.int16).contiguous()
            self.values = w[r, c].contiguous()
            return
        self.indptr = torch.cat([torch.zeros(1, dtype=torch.int64), ((counts + 1) // 2).cumsum(0)])
        first = torch.cat([torch.zeros(1, dtype=torch.int64), counts.cumsum(0)[:-1]])  # each segment's first
        slot = 2 * self.indptr[key] + torch.arange(len(key)) - first[key]  # place in the flattened pairs
        indices = torch.full((2 * int(self.indptr[-1]),), -1, dtype=torch.int64)
        bits = torch.zeros(2 * int(self.indptr[-1]), dtype=torch.int64)
        indices[slot] = c % self.chunk
        bits[slot] = w[r, c].bfloat16().view(torch.int16).to(torch.int64) & 0xFFFF
        indices, bits = indices.view(-1, 2), bits.view(-1, 2)
        odd = indices[:, 1] < 0  # a padded pair: the same column again, weight 0
        indices[odd, 1] = indices[odd, 0]
        packed = bits[:, 0] | (bits[:, 1] << 16)
        self.indices = indices.reshape(-1).to(torch.int16).contiguous()
        self.values = torch.where(packed >= 2 ** 31, packed - 2 ** 32, packed).to(torch.int32).contiguous()


@lru_cache(maxsize=1)
def _native():
    """The compiled C++ kernel, or the reason it is not there."""
    if os.environ.get("LTH_NO_NATIVE"):
        return None, "LTH_NO_NATIVE is set"
    try:
        from torch.utils.cpp_extension import load_inline

        module = load_inline("lth_sparse_v17", cpp_sources=CPP,
                             functions=["sparse_linear", "pair_linear", "has_pairs", "attention",
                                        "attention_dtypes"],
                             extra_cflags=["-O3", "-march=native", "-fopenmp"], extra_ldflags=["-fopenmp"],
                             verbose=False)
        return module, None
    except Exception as exc:  # no compiler, no ninja, an unsupported platform: numba or dense instead
        return None, f"{type(exc).__name__}: {str(exc).strip().splitlines()[0][:160] if str(exc).strip() else ''}"


@lru_cache(maxsize=1)
def _numba():
    try:
        from numba import njit, prange
    except ImportError:
        return None

    @njit(parallel=True, fastmath=True, cache=True)
    def run(x, chunk, indptr, indices, values, bias, out):  # pragma: no cover - compiled
        tokens, width = x.shape
        rows = out.shape[1]
        chunks = (width + chunk - 1) // chunk
        for tile in prange((tokens + TILE - 1) // TILE):
            start = tile * TILE
            count = min(TILE, tokens - start)
            xt = np.zeros((width, TILE), dtype=np.float32)
            for t in range(count):
                for i in range(width):
                    xt[i, t] = x[start + t, i]
            acc = np.empty((rows, TILE), dtype=np.float32)
            for o in range(rows):
                for t in range(TILE):
                    acc[o, t] = bias[o]
            for c in range(chunks):
                for o in range(rows):
                    for k in range(indptr[c * rows + o], indptr[c * rows + o + 1]):
                        w, column = values[k], xt[c * chunk + indices[k]]
                        for t in range(TILE):
                            acc[o, t] += w * column[t]
            for t in range(count):
                for o in range(rows):
                    out[start + t, o] = acc[o, t]
    return run


def backend() -> tuple[str, str]:
    """(which sparse kernel runs here, why not a better one)."""
    native, why = _native()
    if native is not None:
        return "native", "C++ kernel compiled for this CPU"
    if _numba() is not None:
        return "numba", f"the C++ kernel could not be built ({why}); numba instead"
    return "none", f"no C++ kernel ({why}) and no numba: the dense matmuls are kept"


def pair_kernel() -> bool:
    """Whether the bf16 pair kernel (AVX512-BF16) is built here; without it bf16 runs on the fp32 layout."""
    native, _ = _native()
    return native is not None and native.has_pairs()


def sparse_linear(x: torch.Tensor, csr: CSR, gelu: bool = False, bf16_out: bool = False) -> torch.Tensor:
    """x (..., in) -> (..., out) = x Wᵀ + b from the non-zeros of W, then (exact, erf) GELU if asked.

    The result is bf16 when x is, or when `bf16_out`; fp32 otherwise. A `pairs` layout multiplies bf16 roundings
    of x and W (as bf16 autocast's matmul does) and needs `pair_kernel()`; the fp32 layout multiplies x as given."""
    lead, flat = x.shape[:-1], x.reshape(-1, x.shape[-1])
    flat = flat if flat.dtype in (torch.float32, torch.bfloat16) else flat.float()
    native, _ = _native()
    if csr.pairs:
        if not pair_kernel():
            raise RuntimeError("the bf16 pair layout needs the AVX512-BF16 kernel, not built here: use CSR(pairs=False)")
        out = native.pair_linear(flat.contiguous(), csr.chunk, csr.indptr, csr.indices, csr.values, csr.bias, gelu,
                                 bf16_out)
        return out.reshape(*lead, csr.shape[0])
    if native is not None:
        out = native.sparse_linear(flat.contiguous(), csr.chunk, csr.indptr, csr.indices, csr.values, csr.bias, gelu,
                                   bf16_out)
        return out.reshape(*lead, csr.shape[0])
    run = _numba()
    if run is None:
        raise RuntimeError("no sparse kernel here: " + backend()[1])
    out = np.empty((flat.shape[0], csr.shape[0]), dtype=np.float32)
    run(flat.float().contiguous().numpy(), csr.chunk, csr.indptr.numpy(), csr.indices.numpy(), csr.values.numpy(),
        csr.bias.numpy(), out)
    y = torch.from_numpy(out)
    y = torch.nn.functional.gelu(y) if gelu else y
    return y.to(torch.bfloat16 if bf16_out else x.dtype).reshape(*lead, csr.shape[0])


ATTENTION_SIZES = (32, 64, 128)  # head sizes the fused attention is compiled for


def attention_dtypes() -> set[torch.dtype]:
    """The dtypes the fused attention is built for here: bf16 needs AVX512-BF16, fp32 AVX-512 (F, BW, VL)."""
    native, _ = _native()
    if native is None:
        return set()
    return {torch.bfloat16 if name == "bf16" else torch.float32 for name in native.attention_dtypes().split(",")
            if name}


def fused_attention(qkv: torch.Tensor, mask: torch.Tensor | None, heads: int, scale: float) -> torch.Tensor:
    """softmax(scale q kᵀ + mask) v for every head, from a fused Q|K|V projection (batch, tokens, 3 x width) in bf16
    or fp32, as (batch, tokens, width) in the same dtype; `mask` additive (batch x heads, 1 or tokens, tokens) or
    None.

    One C++ pass a head, no (batch x heads x tokens x tokens) tensor written, scores and softmax in fp32. In bf16
    both products use the pair kernel's instructions and the probabilities are rounded to bf16 (as softmax's bf16
    output is): 2.5x torch's baddbmm-softmax-bmm at batch 1 x 128 on MiniLM, 1.7x at 32. Needs the dtype in
    `attention_dtypes()` and a head size in ATTENTION_SIZES."""
    size = qkv.shape[-1] // 3 // heads
    if qkv.dtype not in attention_dtypes() or size not in ATTENTION_SIZES:
        raise RuntimeError(f"no fused attention for head size {size} in {qkv.dtype} here; use torch's")
    batch, tokens = qkv.shape[:2]
    if mask is not None and (mask.dim() != 3 or mask.shape[0] != batch * heads or mask.shape[1] not in (1, tokens)
                             or mask.shape[2] != tokens):
        raise ValueError(f"mask of shape {tuple(mask.shape)}: give ({batch * heads}, 1 or {tokens}, {tokens})")
    mask = torch.empty(0, dtype=qkv.dtype) if mask is None else mask.to(qkv.dtype).contiguous()
    return _native()[0].attention(qkv.contiguous(), mask, heads, scale)
