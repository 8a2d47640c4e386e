// Fused attention, one pass a (sequence, head): softmax(scale q kᵀ + mask) v from a fused Q|K|V projection, in
// bf16 (VDPBF16PS pairs) or fp32 (fused multiply-adds); no (batch x heads x tokens x tokens) tensor is written.
#include "common.h"
#include "kernels.h"

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
