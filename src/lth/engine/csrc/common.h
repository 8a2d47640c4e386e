// Helpers the sparse products and the fused attention share: widening and narrowing rows of bf16, 16 x 16
// transposes, and exp on AVX-512. Compiled with -march=native (see engine/build.py), so the #if branches pick
// what this CPU has.
#pragma once
#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <immintrin.h>
#include <vector>
#include <algorithm>
#include <cmath>
#include <cstring>
#include <string>
#include <type_traits>

// n values of T on a cache line's boundary (64 bytes): the kernels read their tiles and sums 64 bytes at a time,
// and a load across two lines costs two (std::vector's memory is aligned to 16 bytes only).
template <typename T> class Aligned {
  public:
    explicit Aligned(size_t n) : bytes_(n * sizeof(T) + 64) {}
    T* data() { return reinterpret_cast<T*>((reinterpret_cast<uintptr_t>(bytes_.data()) + 63) & ~uintptr_t(63)); }

  private:
    std::vector<unsigned char> bytes_;
};

#if defined(__AVX512F__)
// 16 values of In widened to fp32 in a register.
template <typename In> static inline __m512 load16(const In* src) {
    if constexpr (std::is_same<In, at::BFloat16>::value) {
        const __m256i h = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(src));
        return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
    } else {
        return _mm512_loadu_ps(reinterpret_cast<const float*>(src));
    }
}
#endif

// Rows of n values widened to fp32 / narrowed from fp32 (bf16: 16 at a time, rounding to nearest even as
// torch does, NaN kept a NaN); fp32 is a copy.
template <typename In> static inline void widen(const In* src, float* dst, int64_t n) {
    int64_t i = 0;
#if defined(__AVX512F__)
    if constexpr (std::is_same<In, at::BFloat16>::value)
        for (; i + 16 <= n; i += 16) _mm512_storeu_ps(dst + i, load16<In>(src + i));
#endif
    for (; i < n; ++i) dst[i] = static_cast<float>(src[i]);
}

#if defined(__AVX512F__)
// 16 floats -> 16 bf16, rounding to nearest even, NaN kept a NaN (torch's rounding; AVX512-BF16's instruction
// would be one, but it flushes subnormals to zero where torch keeps them).
static inline __m256i to_bf16(__m512 v) {
    const __m512i bits = _mm512_castps_si512(v);
    const __m512i odd = _mm512_and_si512(_mm512_srli_epi32(bits, 16), _mm512_set1_epi32(1));
    __m512i r = _mm512_srli_epi32(_mm512_add_epi32(bits, _mm512_add_epi32(odd, _mm512_set1_epi32(0x7FFF))), 16);
    r = _mm512_mask_mov_epi32(r, _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q), _mm512_set1_epi32(0x7FC0));
    return _mm512_cvtepi32_epi16(r);
}

// 16 floats stored as Out (fp32 as they are, bf16 narrowed as torch rounds); with `lanes`, only the first that many.
template <typename Out> static inline void store_as(Out* dst, __m512 v, int lanes = 16) {
    const __mmask16 keep = lanes >= 16 ? 0xFFFF : static_cast<__mmask16>((1u << lanes) - 1);
    if constexpr (std::is_same<Out, at::BFloat16>::value)
        _mm256_mask_storeu_epi16(reinterpret_cast<__m256i*>(dst), keep, to_bf16(v));
    else
        _mm512_mask_storeu_ps(reinterpret_cast<float*>(dst), keep, v);
}
#endif

template <typename Out> static inline void narrow(const float* src, Out* dst, int64_t n) {
    int64_t i = 0;
#if defined(__AVX512F__)
    if constexpr (std::is_same<Out, at::BFloat16>::value)
        for (; i + 16 <= n; i += 16) store_as<Out>(dst + i, _mm512_loadu_ps(src + i));
#endif
    for (; i < n; ++i) dst[i] = static_cast<Out>(src[i]);
}

#if defined(__AVX512F__)
// r[i] lane c -> r[c] lane i: a 16 x 16 block of floats transposed in registers.
static inline void transpose16(__m512 r[16]) {
    __m512 t[16];
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
}

// dst[c * dstride + r] = src[r * sstride + c] for a 16 x 16 block of floats.
static inline void transpose16(const float* src, int64_t sstride, float* dst, int64_t dstride) {
    __m512 r[16];
    for (int i = 0; i < 16; ++i) r[i] = _mm512_loadu_ps(src + i * sstride);
    transpose16(r);
    for (int i = 0; i < 16; ++i) _mm512_storeu_ps(dst + i * dstride, r[i]);
}
#endif

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
