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
// max |v| over a row of n values.
template <typename In> static float max_abs(const In* v, int64_t n) {
    int64_t i = 0;
    __m512 m = _mm512_setzero_ps();
    for (; i + 16 <= n; i += 16) m = _mm512_max_ps(m, _mm512_abs_ps(load16<In>(v + i)));
    float top = _mm512_reduce_max_ps(m);
    for (; i < n; ++i) top = std::max(top, std::fabs(static_cast<float>(v[i])));
    return top;
}

// A tile of `count` token rows of x (tokens x width, count <= 64) -> per token its scale (max |x| / 127; 0 for an
// all-zero token and past `count`) and q (width x 64 u8): round(x / scale) + 128, nearest even, each column's 16
// dwords of 4 tokens permuted by the 4 x 4 transpose the unpacks of `quad_products` undo. The scales come from the
// token rows as they lie; then 16 x 16 blocks are quantised as int32, transposed in registers and narrowed to bytes
// (no fp32 copy of the tile is written and read back).
template <typename In>
static void quantize_tile(const In* x, int64_t width, int64_t count, float* scale, float* inverse, uint8_t* q) {
    for (int64_t t = 0; t < 64; ++t) {
        const float top = t < count ? max_abs<In>(x + t * width, width) : 0.f;
        scale[t] = top > 0.f ? top / 127.f : 0.f;
        inverse[t] = top > 0.f ? 127.f / top : 0.f;
    }
    const __m512i low = _mm512_set1_epi32(-127), high = _mm512_set1_epi32(127), offset = _mm512_set1_epi32(128);
    int64_t i = 0;
    for (; i + 16 <= width; i += 16)
        for (int64_t b = 0; b < 64; b += 16) {
            __m512 r[16];
            for (int64_t k = 0; k < 16; ++k) {
                __m512i v = offset;  // a token past `count` quantises to 0
                if (b + k < count) {
                    v = _mm512_cvtps_epi32(_mm512_mul_ps(load16<In>(x + (b + k) * width + i),
                                                         _mm512_set1_ps(inverse[b + k])));
                    v = _mm512_add_epi32(_mm512_min_epi32(_mm512_max_epi32(v, low), high), offset);
                }
                r[k] = _mm512_castsi512_ps(v);
            }
            transpose16(r);
            for (int64_t c = 0; c < 16; ++c)
                _mm_storeu_si128(reinterpret_cast<__m128i*>(q + (i + c) * 64 + b),
                                 _mm512_cvtepi32_epi8(_mm512_castps_si512(r[c])));
        }
    for (; i < width; ++i)  // the columns past the last 16
        for (int64_t t = 0; t < 64; ++t) {
            const int v = t < count ? static_cast<int>(std::nearbyint(static_cast<float>(x[t * width + i]) * inverse[t]))
                                    : 0;
            q[i * 64 + t] = static_cast<uint8_t>(std::min(127, std::max(-127, v)) + 128);
        }
    alignas(64) static const int32_t order[16] = {0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15};
    const __m512i idx = _mm512_load_si512(order);
    for (int64_t c = 0; c < width; ++c)
        _mm512_storeu_si512(q + c * 64, _mm512_permutexvar_epi32(idx, _mm512_loadu_si512(q + c * 64)));
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

// The int32 sums of `rows` output rows (rows x 64) -> `count` token rows of y (a row every `stride`):
// (sum - 128 rowsum) scale_w scale_x + bias (then GELU) in registers, 16 rows x 16 tokens at a time, transposed there
// and stored as Out; a last group of fewer than 16 rows is computed whole (acc has room) and stored masked.
template <typename Out>
static void dequantize_out(const int32_t* acc, int64_t rows, int64_t count, const int32_t* rowsum,
                           const float* wscale, const float* bias, const float* xscale, bool gelu, Out* y,
                           int64_t stride) {
    for (int64_t o = 0; o < rows; o += 16) {
        const int64_t n = std::min<int64_t>(16, rows - o);
        __m512i shift[16];
        __m512 w[16], b[16];
        for (int64_t k = 0; k < 16; ++k) {
            shift[k] = _mm512_set1_epi32(k < n ? 128 * rowsum[o + k] : 0);
            w[k] = _mm512_set1_ps(k < n ? wscale[o + k] : 0.f);
            b[k] = _mm512_set1_ps(k < n ? bias[o + k] : 0.f);
        }
        for (int64_t t = 0; t < count; t += 16) {
            const __m512 xs = _mm512_loadu_ps(xscale + t);
            __m512 r[16];
            for (int64_t k = 0; k < 16; ++k) {
                const __m512 v = _mm512_cvtepi32_ps(_mm512_sub_epi32(_mm512_loadu_si512(acc + (o + k) * 64 + t),
                                                                     shift[k]));
                r[k] = _mm512_fmadd_ps(_mm512_mul_ps(v, w[k]), xs, b[k]);
                if (gelu) r[k] = gelu16(r[k]);
            }
            transpose16(r);
            for (int64_t c = 0; c < 16 && t + c < count; ++c)
                store_as<Out>(y + (t + c) * stride + o, r[c], static_cast<int>(n));
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
    Aligned<uint8_t> q(width * 64);
    Aligned<int32_t> acc(((per + 15) / 16 * 16) * 64);  // whole groups of 16 rows: see dequantize_out
    alignas(64) float scale[64], inverse[64];
    const int64_t chunks = (width + chunk - 1) / chunk;
    int64_t loaded = -1;
    for (int64_t item = begin; item < end; ++item) {
        const int64_t tile = item / blocks, first = item % blocks * per, last = std::min(rows, first + per);
        const int64_t start = tile * 64, count = std::min<int64_t>(64, tokens - start);
        if (first >= last) continue;
        if (tile != loaded) quantize_tile<In>(x + start * width, width, count, scale, inverse, q.data());
        loaded = tile;
        for (int64_t c = 0; c < chunks; ++c) {
            const int64_t* ptr = indptr + c * rows;
            for (int64_t o = first; o < last; ++o)
                if (c == 0 || ptr[o] < ptr[o + 1])
                    quad_products(q.data() + c * chunk * 64, ptr[o], ptr[o + 1], indices, quads, c == 0,
                                  acc.data() + (o - first) * 64);
        }
        dequantize_out<Out>(acc.data(), last - first, count, rowsum + first, wscale + first, bias + first, scale,
                            gelu, y + start * rows + first, rows);
    }
}
// The dense int8 side (layers where the sparse kernel does not pay): x quantised per token into a plain int8
// matrix for torch._int_mm (oneDNN's int8 GEMM), then its int32 sums dequantised. Both do exactly what the quad
// kernel does (the same rounding of x, the same fmadd), so for the same q(W) a layer gives bit-identical outputs
// whichever side it runs.

// x (tokens x width, fp32 or bf16) -> q (tokens x width, int8): round(x 127 / max |x|) per token, nearest even, and
// that token's scale (max |x| / 127; 0 for an all-zero token), written to scale.
template <typename In>
static void quantize_rows_of(const In* x, int64_t width, int64_t begin, int64_t end, int8_t* q, float* scale) {
    const __m512i low = _mm512_set1_epi32(-127), high = _mm512_set1_epi32(127);
    for (int64_t t = begin; t < end; ++t) {
        const In* row = x + t * width;
        int8_t* out = q + t * width;
        const float top = max_abs<In>(row, width);
        const float inverse = top > 0.f ? 127.f / top : 0.f;
        scale[t] = top > 0.f ? top / 127.f : 0.f;
        int64_t i = 0;
        for (; i + 16 <= width; i += 16) {
            __m512i v = _mm512_cvtps_epi32(_mm512_mul_ps(load16<In>(row + i), _mm512_set1_ps(inverse)));
            _mm_storeu_si128(reinterpret_cast<__m128i*>(out + i),
                             _mm512_cvtepi32_epi8(_mm512_min_epi32(_mm512_max_epi32(v, low), high)));
        }
        for (; i < width; ++i)
            out[i] = static_cast<int8_t>(std::min(127, std::max(-127, static_cast<int>(std::nearbyint(
                static_cast<float>(row[i]) * inverse)))));
    }
}

// sums (tokens x rows, int32, of q(x) q(W)ᵀ) -> y = sums scale_w scale_x + bias (then GELU), written as Out.
template <typename Out>
static void dequantize_rows_of(const int32_t* acc, int64_t rows, int64_t begin, int64_t end, const float* xscale,
                               const float* wscale, const float* bias, bool gelu, Out* y) {
    for (int64_t t = begin; t < end; ++t) {
        const __m512 xs = _mm512_set1_ps(xscale[t]);
        for (int64_t o = 0; o < rows; o += 16) {
            const int n = static_cast<int>(std::min<int64_t>(16, rows - o));
            const __mmask16 keep = n >= 16 ? 0xFFFF : static_cast<__mmask16>((1u << n) - 1);
            const __m512 v = _mm512_cvtepi32_ps(_mm512_maskz_loadu_epi32(keep, acc + t * rows + o));
            __m512 r = _mm512_fmadd_ps(_mm512_mul_ps(v, _mm512_maskz_loadu_ps(keep, wscale + o)), xs,
                                       _mm512_maskz_loadu_ps(keep, bias + o));
            if (gelu) r = gelu16(r);
            store_as<Out>(y + t * rows + o, r, n);
        }
    }
}
#endif

std::vector<torch::Tensor> quantize_tokens(torch::Tensor x) {
#if defined(__AVX512VNNI__) && defined(__AVX512BW__)
    TORCH_CHECK(x.dim() == 2 && x.is_contiguous(), "quantize_tokens: x must be a contiguous (tokens, width) matrix");
    const int64_t tokens = x.size(0), width = x.size(1);
    auto q = torch::empty({tokens, width}, x.options().dtype(at::kChar));
    auto scale = torch::empty({tokens}, x.options().dtype(at::kFloat));
    const int64_t grain = std::max<int64_t>(1, 16384 / std::max<int64_t>(1, width));
    at::parallel_for(0, tokens, grain, [&](int64_t begin, int64_t end) {
        if (x.scalar_type() == at::ScalarType::BFloat16)
            quantize_rows_of<at::BFloat16>(reinterpret_cast<const at::BFloat16*>(x.data_ptr()), width, begin, end,
                                           q.data_ptr<int8_t>(), scale.data_ptr<float>());
        else
            quantize_rows_of<float>(x.data_ptr<float>(), width, begin, end, q.data_ptr<int8_t>(),
                                    scale.data_ptr<float>());
    });
    return {q, scale};
#else
    TORCH_CHECK(false, "this build has no AVX512-VNNI: int8 needs it");
    return {x};
#endif
}

void dequantize_rows(torch::Tensor acc, torch::Tensor xscale, torch::Tensor wscale, torch::Tensor bias, bool gelu,
                     torch::Tensor y) {
#if defined(__AVX512VNNI__) && defined(__AVX512BW__)
    TORCH_CHECK(acc.dim() == 2 && acc.is_contiguous() && acc.scalar_type() == at::kInt,
                "dequantize_rows: the sums must be a contiguous int32 (tokens, rows) matrix");
    const int64_t tokens = acc.size(0), rows = acc.size(1);
    TORCH_CHECK(xscale.numel() == tokens && wscale.numel() == rows && bias.numel() == rows,
                "dequantize_rows: one scale per token, one scale and bias per row");
    TORCH_CHECK(y.is_contiguous() && y.size(0) == tokens && y.size(1) == rows &&
                (y.scalar_type() == at::kFloat || y.scalar_type() == at::kBFloat16),
                "dequantize_rows: y must be a contiguous fp32 or bf16 matrix of the sums' shape");
    const bool bf16_out = y.scalar_type() == at::kBFloat16;
    const int64_t grain = std::max<int64_t>(1, 16384 / std::max<int64_t>(1, rows));
    at::parallel_for(0, tokens, grain, [&](int64_t begin, int64_t end) {
        if (bf16_out)
            dequantize_rows_of<at::BFloat16>(acc.data_ptr<int32_t>(), rows, begin, end, xscale.data_ptr<float>(),
                                             wscale.data_ptr<float>(), bias.data_ptr<float>(), gelu,
                                             reinterpret_cast<at::BFloat16*>(y.data_ptr()));
        else
            dequantize_rows_of<float>(acc.data_ptr<int32_t>(), rows, begin, end, xscale.data_ptr<float>(),
                                      wscale.data_ptr<float>(), bias.data_ptr<float>(), gelu, y.data_ptr<float>());
    });
#else
    TORCH_CHECK(false, "this build has no AVX512-VNNI: int8 needs it");
#endif
}

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
