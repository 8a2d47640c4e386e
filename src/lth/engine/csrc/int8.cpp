// int8 quads (AVX512-VNNI): y = dequant(q(x) q(W)ᵀ) + b for a pruned W quantised per output row (symmetric, int8)
// and x quantised per token on the fly (symmetric, to [-127, 127], stored offset by 128 as u8).
//
// A row's non-zeros (in each column chunk) go in fours: `indices` holds four columns a quad, `values` one int32 a
// quad, the k-th column's int8 weight in byte k; a row whose count is no multiple of 4 ends on a quad padded with
// weight 0 on its last column. VPDPBUSD multiplies four u8 by four s8 and adds the four products into a 32-bit lane,
// so a quad is four instructions for 64 tokens, after two rounds of byte/word unpacks put (x[p,t], x[q,t], x[r,t],
// x[s,t]) in lane t. The tile of x is kept as u8, one row of 64 per column (a 512-column chunk is 32 KiB, L1's
// size), its tokens stored in the order that makes those unpacks land tokens 0-15, 16-31, 32-47, 48-63 in order.
// Sums are exact in int32 (|q(x) + 128| <= 255, |q(w)| <= 127: 2^31 allows 66,000 columns); then
// y[o, t] = (sum - 128 rowsum[o]) scale_w[o] scale_x[t] + bias[o] (+ GELU) in fp32.
#include "common.h"
#include "kernels.h"
#include "tiles.h"

bool has_quads() {
#if defined(__AVX512VNNI__) && defined(__AVX512BW__)
    return true;
#else
    return false;
#endif
}

#if defined(__AVX512VNNI__) && defined(__AVX512BW__)
// Per token of the tile: its scale (max |x| / 127; 0 for an all-zero token and past the tile's count, which
// load_tile zero-fills), from the transposed tile: a lane-wise max down its columns.
static void tile_scales(const float* xt, int64_t width, float* scale, float* inverse) {
    __m512 m[4] = {_mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps()};
    for (int64_t i = 0; i < width; ++i)
        for (int j = 0; j < 4; ++j) m[j] = _mm512_max_ps(m[j], _mm512_abs_ps(_mm512_loadu_ps(xt + i * 64 + 16 * j)));
    alignas(64) float top[64];
    for (int j = 0; j < 4; ++j) _mm512_store_ps(top + 16 * j, m[j]);
    for (int t = 0; t < 64; ++t) {
        scale[t] = top[t] > 0.f ? top[t] / 127.f : 0.f;
        inverse[t] = top[t] > 0.f ? 127.f / top[t] : 0.f;
    }
}

// The fp32 tile (width x 64, natural token order) -> u8 (width x 64): round(x / scale) + 128, nearest even, each
// column's 16 dwords of 4 tokens permuted by the 4 x 4 transpose the unpacks of `quad_products` undo.
static void quantize_tile(const float* xt, int64_t width, const float* inverse, uint8_t* q) {
    alignas(64) static const int32_t order[16] = {0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15};
    const __m512i idx = _mm512_load_si512(order), offset = _mm512_set1_epi32(128);
    const __m512i low = _mm512_set1_epi32(-127), high = _mm512_set1_epi32(127);
    __m512 inv[4];
    for (int j = 0; j < 4; ++j) inv[j] = _mm512_loadu_ps(inverse + 16 * j);
    for (int64_t i = 0; i < width; ++i) {
        __m128i part[4];
        for (int j = 0; j < 4; ++j) {
            __m512i v = _mm512_cvtps_epi32(_mm512_mul_ps(_mm512_loadu_ps(xt + i * 64 + 16 * j), inv[j]));
            v = _mm512_add_epi32(_mm512_min_epi32(_mm512_max_epi32(v, low), high), offset);
            part[j] = _mm512_cvtepi32_epi8(v);
        }
        __m512i all = _mm512_castsi128_si512(part[0]);
        all = _mm512_inserti32x4(all, part[1], 1);
        all = _mm512_inserti32x4(all, part[2], 2);
        all = _mm512_inserti32x4(all, part[3], 3);
        _mm512_storeu_si512(q + i * 64, _mm512_permutexvar_epi32(idx, all));
    }
}

// out[0:64] (int32) = (first ? 0 : out) + the sum over quads [k, end) of the four weights times their columns.
static inline void quad_products(const uint8_t* xt, int64_t k, const int64_t end, const int16_t* indices,
                                 const int32_t* quads, bool first, int32_t* out) {
    __m512i a0, a1, a2, a3;
    if (first) { a0 = _mm512_setzero_si512(); a1 = a0; a2 = a0; a3 = a0; }
    else { a0 = _mm512_loadu_si512(out); a1 = _mm512_loadu_si512(out + 16); a2 = _mm512_loadu_si512(out + 32);
           a3 = _mm512_loadu_si512(out + 48); }
    __m512i b0 = _mm512_setzero_si512(), b1 = b0, b2 = b0, b3 = b0;
    auto step = [&](int64_t j, __m512i& s0, __m512i& s1, __m512i& s2, __m512i& s3) {
        const __m512i w = _mm512_set1_epi32(quads[j]);
        const int16_t* c = indices + 4 * j;
        const __m512i p = _mm512_loadu_si512(xt + static_cast<int64_t>(c[0]) * 64);
        const __m512i q = _mm512_loadu_si512(xt + static_cast<int64_t>(c[1]) * 64);
        const __m512i r = _mm512_loadu_si512(xt + static_cast<int64_t>(c[2]) * 64);
        const __m512i s = _mm512_loadu_si512(xt + static_cast<int64_t>(c[3]) * 64);
        const __m512i pq0 = _mm512_unpacklo_epi8(p, q), pq1 = _mm512_unpackhi_epi8(p, q);
        const __m512i rs0 = _mm512_unpacklo_epi8(r, s), rs1 = _mm512_unpackhi_epi8(r, s);
        s0 = _mm512_dpbusd_epi32(s0, _mm512_unpacklo_epi16(pq0, rs0), w);  // tokens 0-15
        s1 = _mm512_dpbusd_epi32(s1, _mm512_unpackhi_epi16(pq0, rs0), w);  // 16-31
        s2 = _mm512_dpbusd_epi32(s2, _mm512_unpacklo_epi16(pq1, rs1), w);  // 32-47
        s3 = _mm512_dpbusd_epi32(s3, _mm512_unpackhi_epi16(pq1, rs1), w);  // 48-63
    };
    for (; k + 1 < end; k += 2) {  // two chains of accumulators hide the instruction's latency
        step(k, a0, a1, a2, a3);
        step(k + 1, b0, b1, b2, b3);
    }
    if (k < end) step(k, a0, a1, a2, a3);
    _mm512_storeu_si512(out, _mm512_add_epi32(a0, b0)); _mm512_storeu_si512(out + 16, _mm512_add_epi32(a1, b1));
    _mm512_storeu_si512(out + 32, _mm512_add_epi32(a2, b2)); _mm512_storeu_si512(out + 48, _mm512_add_epi32(a3, b3));
}

// The int32 sums of `rows` output rows (rows x 64) -> fp32 in place: (sum - 128 rowsum) scale_w scale_x + bias.
static void dequantize(int32_t* acc, int64_t rows, const int32_t* rowsum, const float* wscale, const float* bias,
                       const float* xscale) {
    __m512 xs[4];
    for (int j = 0; j < 4; ++j) xs[j] = _mm512_loadu_ps(xscale + 16 * j);
    for (int64_t o = 0; o < rows; ++o) {
        const __m512i shift = _mm512_set1_epi32(128 * rowsum[o]);
        const __m512 w = _mm512_set1_ps(wscale[o]), b = _mm512_set1_ps(bias[o]);
        for (int j = 0; j < 4; ++j) {
            int32_t* p = acc + o * 64 + 16 * j;
            const __m512 v = _mm512_cvtepi32_ps(_mm512_sub_epi32(_mm512_loadu_si512(p), shift));
            _mm512_storeu_ps(reinterpret_cast<float*>(p), _mm512_fmadd_ps(_mm512_mul_ps(v, w), xs[j], b));
        }
    }
}

// As `tiles` in sparse.cpp: work items are (tile, block of `per` output rows); a thread keeps its tile quantised
// across consecutive items of the same tile.
template <typename In, typename Out>
static void quad_tiles(const In* x, int64_t tokens, int64_t width, int64_t chunk, const int64_t* indptr,
                       const int16_t* indices, const int32_t* quads, const float* wscale, const int32_t* rowsum,
                       const float* bias, int64_t rows, Out* y, bool gelu, int64_t blocks, int64_t per,
                       int64_t begin, int64_t end) {
    const int64_t padded = ((width + 15) / 16) * 16;
    std::vector<float> xt(padded * 64);
    std::vector<uint8_t> q(padded * 64);
    std::vector<int32_t> acc(per * 64);
    alignas(64) float scale[64], inverse[64];
    const int64_t chunks = (width + chunk - 1) / chunk;
    int64_t loaded = -1;
    for (int64_t item = begin; item < end; ++item) {
        const int64_t tile = item / blocks, first = item % blocks * per, last = std::min(rows, first + per);
        const int64_t start = tile * 64, count = std::min<int64_t>(64, tokens - start);
        if (first >= last) continue;
        if (tile != loaded) {
            load_tile<In>(x + start * width, width, count, xt.data());
            tile_scales(xt.data(), width, scale, inverse);
            quantize_tile(xt.data(), width, inverse, q.data());
        }
        loaded = tile;
        for (int64_t c = 0; c < chunks; ++c) {
            const int64_t* ptr = indptr + c * rows;
            for (int64_t o = first; o < last; ++o)
                if (c == 0 || ptr[o] < ptr[o + 1])
                    quad_products(q.data() + c * chunk * 64, ptr[o], ptr[o + 1], indices, quads, c == 0,
                                  acc.data() + (o - first) * 64);
        }
        dequantize(acc.data(), last - first, rowsum + first, wscale + first, bias + first, scale);
        float* out = reinterpret_cast<float*>(acc.data());
        if (gelu)
            for (int64_t o = 0; o < last - first; ++o) gelu64(out + o * 64);
        transpose_out<Out>(out, last - first, count, y + start * rows + first, rows);
    }
}
#endif

torch::Tensor quad_linear(torch::Tensor x, int64_t chunk, torch::Tensor indptr, torch::Tensor indices,
                          torch::Tensor quads, torch::Tensor wscale, torch::Tensor rowsum, torch::Tensor bias,
                          bool gelu, bool bf16_out) {
#if defined(__AVX512VNNI__) && defined(__AVX512BW__)
    const int64_t tokens = x.size(0), width = x.size(1), rows = bias.size(0);
    return over_tiles(x, rows, bf16_out, [&](auto xp, auto yp, int64_t blocks, int64_t per, int64_t begin,
                                             int64_t end) {
        using In = std::remove_const_t<std::remove_pointer_t<decltype(xp)>>;
        using Out = std::remove_pointer_t<decltype(yp)>;
        quad_tiles<In, Out>(xp, tokens, width, chunk, indptr.data_ptr<int64_t>(), indices.data_ptr<int16_t>(),
                            quads.data_ptr<int32_t>(), wscale.data_ptr<float>(), rowsum.data_ptr<int32_t>(),
                            bias.data_ptr<float>(), rows, yp, gelu, blocks, per, begin, end);
    });
#else
    TORCH_CHECK(false, "this build has no AVX512-VNNI: int8 quads need it");
    return x;
#endif
}
