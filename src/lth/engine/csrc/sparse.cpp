// Y = X Wᵀ + b for activations X (tokens x in) and a pruned W kept in column chunks of CSR (engine/kernels.py
// builds the layouts): 64 tokens a tile, fp32 fused multiply-adds or, on AVX512-BF16, bf16 pairs.
#include "common.h"
#include "kernels.h"
#include "tiles.h"

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
    Aligned<Tile> xt(((width + 15) / 16) * 16 * 64);
    Aligned<float> acc(per * 64);
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
    const int64_t tokens = x.size(0), width = x.size(1), rows = bias.size(0);
    return over_tiles(x, rows, bf16_out, [&](auto xp, auto yp, int64_t blocks, int64_t per, int64_t begin,
                                             int64_t end) {
        using In = std::remove_const_t<std::remove_pointer_t<decltype(xp)>>;
        using Out = std::remove_pointer_t<decltype(yp)>;
        tiles<Tile, Value, In, Out>(xp, tokens, width, chunk, indptr.data_ptr<int64_t>(), indices.data_ptr<int16_t>(),
                                    values.data_ptr<Value>(), bias.data_ptr<float>(), rows, yp, gelu, blocks, per,
                                    begin, end);
    });
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
