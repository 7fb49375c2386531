// kernels_avx2.cpp: AVX2 + FMA versions of the dot products and the activation quantiser.
// Each function carries its target attribute, so this file builds without -mavx2 and only runs after a CPU check.
#include <cpuid.h>
#include <immintrin.h>

#include <cmath>
#include <cstring>
#include <algorithm>
#include <type_traits>
#include <vector>

#include "fp16.hpp"
#include "kernels.hpp"

namespace troupe {

namespace ref {
double dot(const Matrix& w, int64_t r, const float* x, const BlockQ8* xq);
template <class T>
void attn_scores(const float* q, const T* k, int64_t stride, int n, int head_dim, float scale, float* scores);
template <class T>
void attn_accumulate(const float* p, const T* v, int64_t stride, int n, int head_dim, float* out);
}

namespace {

#define TROUPE_AVX2 __attribute__((target("avx2,fma,f16c")))
#define TROUPE_GEMM_VNNI_TARGET __attribute__((target("avx2,fma,f16c,avxvnni")))
#define TROUPE_GEMM_VNNI512_TARGET __attribute__((target("avx2,fma,f16c,avx512f,avx512vl,avx512vnni")))

template <class T>
void ref_attn_scores(const float* q, const T* k, int64_t stride, int n, int head_dim, float scale, float* scores) {
  ref::attn_scores(q, k, stride, n, head_dim, scale, scores);
}
template <class T>
void ref_attn_accumulate(const float* p, const T* v, int64_t stride, int n, int head_dim, float* out) {
  ref::attn_accumulate(p, v, stride, n, head_dim, out);
}

// ---- the chunk discipline of kernels.hpp ----
// A chunk (kChunk elements: two blocks) accumulates in 8 float lanes from zero; flush() adds the lanes' two halves
// in float and the 4 sums to 4 double lanes; hsum() adds the double lanes in a fixed order.
TROUPE_AVX2 inline void flush(__m256 chunk, __m256d& sums) {
  const __m128 half = _mm_add_ps(_mm256_castps256_ps128(chunk), _mm256_extractf128_ps(chunk, 1));
  sums = _mm256_add_pd(sums, _mm256_cvtps_pd(half));
}

TROUPE_AVX2 inline double hsum(__m256d sums) {
  const __m128d s = _mm_add_pd(_mm256_castpd256_pd128(sums), _mm256_extractf128_pd(sums, 1));
  return _mm_cvtsd_f64(_mm_add_sd(s, _mm_unpackhi_pd(s, s)));
}

TROUPE_AVX2 inline float h2f(uint16_t h) { return _cvtsh_ss(h); }

// 16 bytes of packed nibbles -> 32 bytes: low nibbles first (elements 0..15), then high nibbles (16..31).
TROUPE_AVX2 inline __m256i unpack_nibbles(const uint8_t* qs) {
  const __m128i packed = _mm_loadu_si128(reinterpret_cast<const __m128i*>(qs));
  return _mm256_and_si256(_mm256_set_m128i(_mm_srli_epi16(packed, 4), packed), _mm256_set1_epi8(0x0f));
}

// ---- fast path: 8-bit activations, batched (gemm_q8.inc, built three times: AVX2, AVX2 with AVX-VNNI, and with AVX512-VNNI) ----

#define TROUPE_GEMM TROUPE_AVX2
#define TROUPE_GEMM_INLINE TROUPE_AVX2 inline __attribute__((always_inline))
#define TROUPE_GEMM_VNNI 0
namespace q8_avx2 {
#include "gemm_q8.inc"
}
#undef TROUPE_GEMM
#undef TROUPE_GEMM_INLINE
#undef TROUPE_GEMM_VNNI

#define TROUPE_GEMM TROUPE_GEMM_VNNI_TARGET
#define TROUPE_GEMM_INLINE TROUPE_GEMM_VNNI_TARGET inline __attribute__((always_inline))
#define TROUPE_GEMM_VNNI 1
namespace q8_vnni {
#include "gemm_q8.inc"
}
#undef TROUPE_GEMM
#undef TROUPE_GEMM_INLINE
#undef TROUPE_GEMM_VNNI

#define TROUPE_GEMM TROUPE_GEMM_VNNI512_TARGET
#define TROUPE_GEMM_INLINE TROUPE_GEMM_VNNI512_TARGET inline __attribute__((always_inline))
#define TROUPE_GEMM_VNNI 2
namespace q8_vnni512 {
#include "gemm_q8.inc"
}
#undef TROUPE_GEMM
#undef TROUPE_GEMM_INLINE
#undef TROUPE_GEMM_VNNI

// ---- float weights (both paths) ----

// Float weights (f32, or f16 stored as uint16_t): 8 lanes over kChunk elements at a time; the remainder past the
// last whole chunk is one more chunk, its last n % 8 elements summed in scalar float.
TROUPE_AVX2 inline __m256 load8(const float* w) { return _mm256_loadu_ps(w); }
TROUPE_AVX2 inline __m256 load8(const uint16_t* w) {
  return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(w)));
}
inline float load1(const float* w) { return *w; }
inline float load1(const uint16_t* w) { return fp16_to_f32(*w); }

template <typename T>
TROUPE_AVX2 double dot_floats(const T* w, const float* x, int64_t n) {
  __m256d sums = _mm256_setzero_pd();
  int64_t j = 0;
  for (; j + kChunk <= n; j += kChunk) {
    __m256 acc = _mm256_setzero_ps();
    for (int k = 0; k < kChunk; k += 8) acc = _mm256_fmadd_ps(load8(w + j + k), _mm256_loadu_ps(x + j + k), acc);
    flush(acc, sums);
  }
  if (j == n) return hsum(sums);
  __m256 acc = _mm256_setzero_ps();
  for (; j + 8 <= n; j += 8) acc = _mm256_fmadd_ps(load8(w + j), _mm256_loadu_ps(x + j), acc);
  flush(acc, sums);
  float tail = 0;
  for (; j < n; ++j) tail += load1(w + j) * x[j];
  return hsum(sums) + tail;
}

// Same rounding as the reference (ties to even), so both give identical blocks.
TROUPE_AVX2 void quantize_q8(const float* x, BlockQ8* y, int64_t n) {
  const __m256 sign_mask = _mm256_set1_ps(-0.0f);
  for (int64_t b = 0; b < n / kQBlock; ++b) {
    const float* xb = x + b * kQBlock;
    __m256 v[4];
    __m256 amax = _mm256_setzero_ps();
    for (int k = 0; k < 4; ++k) {
      v[k] = _mm256_loadu_ps(xb + 8 * k);
      amax = _mm256_max_ps(amax, _mm256_andnot_ps(sign_mask, v[k]));
    }
    __m128 m = _mm_max_ps(_mm256_castps256_ps128(amax), _mm256_extractf128_ps(amax, 1));
    m = _mm_max_ps(m, _mm_movehl_ps(m, m));
    m = _mm_max_ss(m, _mm_movehdup_ps(m));
    const float max = _mm_cvtss_f32(m);
    const float d = max / 127.0f;
    const __m256 vid = _mm256_set1_ps(max != 0 ? 127.0f / max : 0.0f);
    __m256i sum = _mm256_setzero_si256();
    __m256i q32[4];
    for (int k = 0; k < 4; ++k) {
      const __m256 r = _mm256_round_ps(_mm256_mul_ps(v[k], vid), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
      q32[k] = _mm256_cvtps_epi32(r);
      sum = _mm256_add_epi32(sum, q32[k]);
    }
    alignas(32) int32_t tmp[32];
    for (int k = 0; k < 4; ++k) _mm256_store_si256(reinterpret_cast<__m256i*>(tmp + 8 * k), q32[k]);
    for (int j = 0; j < 32; ++j) y[b].qs[j] = static_cast<int8_t>(tmp[j]);
    __m128i s4 = _mm_add_epi32(_mm256_castsi256_si128(sum), _mm256_extracti128_si256(sum, 1));
    s4 = _mm_add_epi32(s4, _mm_shuffle_epi32(s4, 0x4e));
    s4 = _mm_add_epi32(s4, _mm_shuffle_epi32(s4, 0xb1));
    const int isum = _mm_cvtsi128_si32(s4);
    y[b].d = _cvtsh_ss(_cvtss_sh(d, 0));
    y[b].s = _cvtsh_ss(_cvtss_sh(d * static_cast<float>(isum), 0));
  }
}

// ---- exact (fp32) path: 32 weights dequantised in registers, multiplied with float activations ----

// acc += (d * q + m) * x for 32 unsigned 8-bit q's held in a 256-bit register.
TROUPE_AVX2 inline __m256 fma_block_u8(__m256i q, float d, float m, const float* x, __m256 acc) {
  const __m256 vd = _mm256_set1_ps(d), vm = _mm256_set1_ps(m);
  const __m128i lo = _mm256_castsi256_si128(q), hi = _mm256_extracti128_si256(q, 1);
  const __m128i parts[4] = {lo, _mm_srli_si128(lo, 8), hi, _mm_srli_si128(hi, 8)};
  for (int k = 0; k < 4; ++k) {
    const __m256 w = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(parts[k])), vd, vm);
    acc = _mm256_fmadd_ps(w, _mm256_loadu_ps(x + 8 * k), acc);
  }
  return acc;
}

// acc += the block's dequantised weights . its 32 activations x.
TROUPE_AVX2 inline __m256 fma_block(const BlockQ4_0& w, const float* x, __m256 acc) {
  const float d = h2f(w.d);
  return fma_block_u8(unpack_nibbles(w.qs), d, -8.0f * d, x, acc);
}

TROUPE_AVX2 inline __m256 fma_block(const BlockQ4_1& w, const float* x, __m256 acc) {
  return fma_block_u8(unpack_nibbles(w.qs), h2f(w.d), h2f(w.m), x, acc);
}

TROUPE_AVX2 inline __m256 fma_block(const BlockQ8_0& w, const float* x, __m256 acc) {
  const __m256 vd = _mm256_set1_ps(h2f(w.d));
  for (int k = 0; k < 4; ++k) {
    const __m128i q8 = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(w.qs + 8 * k));
    const __m256 wv = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(q8)), vd);
    acc = _mm256_fmadd_ps(wv, _mm256_loadu_ps(x + 8 * k), acc);
  }
  return acc;
}

// A quantised row, two blocks per chunk in float lanes, chunks in double; a trailing odd block is a chunk of its own.
template <typename Block>
TROUPE_AVX2 double exact_chunks(const Block* w, const float* x, int64_t n_blocks) {
  __m256d sums = _mm256_setzero_pd();
  int64_t b = 0;
  for (; b + 2 <= n_blocks; b += 2) {
    const __m256 acc = fma_block(w[b], x + b * kQBlock, _mm256_setzero_ps());
    flush(fma_block(w[b + 1], x + (b + 1) * kQBlock, acc), sums);
  }
  if (b < n_blocks) flush(fma_block(w[b], x + b * kQBlock, _mm256_setzero_ps()), sums);
  return hsum(sums);
}

// ---- dispatch on the weight type ----

// Float weights: one dot product per row and token.
TROUPE_AVX2 double dot_float_row(const Matrix& w, int64_t r, const float* x) {
  const uint8_t* row = w.row(r);
  switch (w.type) {
    case GgmlType::f32: return dot_floats(reinterpret_cast<const float*>(row), x, w.cols);
    case GgmlType::f16: return dot_floats(reinterpret_cast<const uint16_t*>(row), x, w.cols);
    default: return ref::dot(w, r, x, nullptr);
  }
}

TROUPE_AVX2 void gemm_floats(const Matrix& w, const float* x, int n, int64_t r0, int64_t r1, const GemmOut& out) {
  for (int64_t r = r0; r < r1; ++r) {
    for (int t = 0; t < n; ++t) {
      const double v = dot_float_row(w, r, x + t * w.cols);
      if (out.f) out.f[t * out.ld + r] = static_cast<float>(v);
      else out.d[t * out.ld + r] = v;
    }
  }
}

TROUPE_AVX2 void gemm(const Matrix& w, const float* x, const BlockQ8* xq, int n, int64_t r0, int64_t r1,
                      const GemmOut& out) {
  if (w.quantized()) q8_avx2::gemm_quantized(w, xq, n, r0, r1, out);
  else gemm_floats(w, x, n, r0, r1, out);
}

TROUPE_GEMM_VNNI_TARGET void gemm_vnni(const Matrix& w, const float* x, const BlockQ8* xq, int n, int64_t r0,
                                       int64_t r1, const GemmOut& out) {
  if (w.quantized()) q8_vnni::gemm_quantized(w, xq, n, r0, r1, out);
  else gemm_floats(w, x, n, r0, r1, out);
}

TROUPE_GEMM_VNNI512_TARGET void gemm_vnni512(const Matrix& w, const float* x, const BlockQ8* xq, int n, int64_t r0,
                                             int64_t r1, const GemmOut& out) {
  if (w.quantized()) q8_vnni512::gemm_quantized(w, xq, n, r0, r1, out);
  else gemm_floats(w, x, n, r0, r1, out);
}

// One row and one token: the batched kernel with a batch of one, so both give the same value.
template <auto Gemm>
TROUPE_AVX2 double dot_via(const Matrix& w, int64_t r, const float* x, const BlockQ8* xq) {
  if (!w.quantized()) return dot_float_row(w, r, x);
  double v = 0;
  Matrix one = w;
  one.data = w.row(r);
  one.rows = 1;
  Gemm(one, x, xq, 1, 0, 1, GemmOut{nullptr, &v, 1});
  return v;
}

TROUPE_AVX2 double dot(const Matrix& w, int64_t r, const float* x, const BlockQ8* xq) { return dot_via<gemm>(w, r, x, xq); }
TROUPE_AVX2 double dot_vnni(const Matrix& w, int64_t r, const float* x, const BlockQ8* xq) {
  return dot_via<gemm_vnni>(w, r, x, xq);
}
TROUPE_AVX2 double dot_vnni512(const Matrix& w, int64_t r, const float* x, const BlockQ8* xq) {
  return dot_via<gemm_vnni512>(w, r, x, xq);
}

TROUPE_AVX2 double exact_dot(const Matrix& w, int64_t r, const float* x, const BlockQ8* xq) {
  const uint8_t* row = w.row(r);
  const int64_t nb = w.cols / kQBlock;
  switch (w.type) {
    case GgmlType::q4_0: return exact_chunks(reinterpret_cast<const BlockQ4_0*>(row), x, nb);
    case GgmlType::q4_1: return exact_chunks(reinterpret_cast<const BlockQ4_1*>(row), x, nb);
    case GgmlType::q8_0: return exact_chunks(reinterpret_cast<const BlockQ8_0*>(row), x, nb);
    default: return dot(w, r, x, xq);  // float weights: already exact
  }
}

// ---- attention and softmax: the same arithmetic as the references in kernels.cpp, lane for lane ----

TROUPE_AVX2 inline __m256 load8k(const uint16_t* p) { return load8(p); }
TROUPE_AVX2 inline __m256 load8k(const float* p) { return _mm256_loadu_ps(p); }

TROUPE_AVX2 inline __m256 expf_poly8(__m256 x) {
  const __m256 k = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504f)),
                                   _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m256 r = _mm256_fmadd_ps(k, _mm256_set1_ps(-0.693145752f), x);
  r = _mm256_fmadd_ps(k, _mm256_set1_ps(-1.42860677e-06f), r);
  __m256 p = _mm256_set1_ps(1.0f / 5040);
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 720));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 120));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 24));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 6));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(0.5f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f));
  // k is clamped only for the exponent arithmetic; out-of-range x are replaced below
  const __m256i ki = _mm256_cvtps_epi32(_mm256_min_ps(_mm256_max_ps(k, _mm256_set1_ps(-126)), _mm256_set1_ps(128)));
  const __m256i k1 = _mm256_srai_epi32(ki, 1), k2 = _mm256_sub_epi32(ki, k1);
  const __m256i bias = _mm256_set1_epi32(127);
  const __m256 two1 = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(k1, bias), 23));
  const __m256 two2 = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(k2, bias), 23));
  __m256 e = _mm256_mul_ps(_mm256_mul_ps(p, two1), two2);
  e = _mm256_blendv_ps(e, _mm256_setzero_ps(), _mm256_cmp_ps(x, _mm256_set1_ps(-87.3f), _CMP_LT_OQ));
  return _mm256_blendv_ps(e, _mm256_set1_ps(INFINITY), _mm256_cmp_ps(x, _mm256_set1_ps(88.7f), _CMP_GT_OQ));
}

TROUPE_AVX2 void softmax8(float* x, int64_t n) {
  const int64_t n8 = n & ~int64_t{7};
  __m256 vmax = _mm256_set1_ps(x[0]);
  for (int64_t j = 0; j < n8; j += 8) vmax = _mm256_max_ps(vmax, _mm256_loadu_ps(x + j));
  alignas(32) float m8[8];
  _mm256_store_ps(m8, vmax);
  float max = x[0];
  for (float m : m8) max = std::fmax(max, m);
  for (int64_t j = n8; j < n; ++j) max = std::fmax(max, x[j]);
  const __m256 vm = _mm256_set1_ps(max);
  __m256d lo = _mm256_setzero_pd(), hi = _mm256_setzero_pd();
  for (int64_t j = 0; j < n8; j += 8) {
    const __m256 e = expf_poly8(_mm256_sub_ps(_mm256_loadu_ps(x + j), vm));
    _mm256_storeu_ps(x + j, e);
    lo = _mm256_add_pd(lo, _mm256_cvtps_pd(_mm256_castps256_ps128(e)));
    hi = _mm256_add_pd(hi, _mm256_cvtps_pd(_mm256_extractf128_ps(e, 1)));
  }
  alignas(32) double lanes[8];
  _mm256_store_pd(lanes, lo);
  _mm256_store_pd(lanes + 4, hi);
  for (int64_t j = n8; j < n; ++j) {
    x[j] = expf_poly(x[j] - max);
    lanes[j & 7] += x[j];
  }
  const double sum = ((lanes[0] + lanes[4]) + (lanes[2] + lanes[6])) + ((lanes[1] + lanes[5]) + (lanes[3] + lanes[7]));
  const __m256 inv = _mm256_set1_ps(static_cast<float>(1.0 / sum));
  for (int64_t j = 0; j < n8; j += 8) _mm256_storeu_ps(x + j, _mm256_mul_ps(_mm256_loadu_ps(x + j), inv));
  for (int64_t j = n8; j < n; ++j) x[j] *= static_cast<float>(1.0 / sum);
}

template <class T>
TROUPE_AVX2 inline __m256 qk_lanes(const float* q, const T* k, int head_dim) {
  __m256 acc = _mm256_setzero_ps();
  for (int d = 0; d < head_dim; d += 8) acc = _mm256_fmadd_ps(_mm256_loadu_ps(q + d), load8k(k + d), acc);
  return acc;
}

template <class T>
TROUPE_AVX2 void attn_scores(const float* q, const T* k, int64_t stride, int n, int head_dim, float scale,
                             float* scores) {
  if (head_dim % 8 != 0) return ref_attn_scores(q, k, stride, n, head_dim, scale, scores);
  const __m256 vs = _mm256_set1_ps(scale);
  int j = 0;
  for (; j + 8 <= n; j += 8) {
    __m256 v[8];
    for (int i = 0; i < 8; ++i) v[i] = qk_lanes(q, k + (j + i) * stride, head_dim);
    const __m256 h0 = _mm256_hadd_ps(_mm256_hadd_ps(v[0], v[1]), _mm256_hadd_ps(v[2], v[3]));
    const __m256 h1 = _mm256_hadd_ps(_mm256_hadd_ps(v[4], v[5]), _mm256_hadd_ps(v[6], v[7]));
    const __m256 sum = _mm256_add_ps(_mm256_permute2f128_ps(h0, h1, 0x20), _mm256_permute2f128_ps(h0, h1, 0x31));
    _mm256_storeu_ps(scores + j, _mm256_mul_ps(sum, vs));
  }
  for (; j < n; ++j) {
    const __m256 v = qk_lanes(q, k + j * stride, head_dim);
    const __m256 h = _mm256_hadd_ps(_mm256_hadd_ps(v, v), _mm256_hadd_ps(v, v));
    scores[j] = _mm_cvtss_f32(_mm_add_ss(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1))) * scale;
  }
}

template <class T>
TROUPE_AVX2 void attn_accumulate(const float* p, const T* v, int64_t stride, int n, int head_dim, float* out) {
  if (head_dim % 8 != 0) return ref_attn_accumulate(p, v, stride, n, head_dim, out);
  for (int c0 = 0; c0 < head_dim; c0 += 64) {
    const int nr = std::min(64, head_dim - c0) / 8;
    if (nr == 8) {
      __m256 acc[8];
      for (int i = 0; i < 8; ++i) acc[i] = _mm256_loadu_ps(out + c0 + 8 * i);
      for (int j = 0; j < n; ++j) {
        const __m256 pj = _mm256_set1_ps(p[j]);
        const T* vj = v + j * stride + c0;
        for (int i = 0; i < 8; ++i) acc[i] = _mm256_fmadd_ps(pj, load8k(vj + 8 * i), acc[i]);
      }
      for (int i = 0; i < 8; ++i) _mm256_storeu_ps(out + c0 + 8 * i, acc[i]);
    } else {
      for (int j = 0; j < n; ++j) {
        const __m256 pj = _mm256_set1_ps(p[j]);
        const T* vj = v + j * stride + c0;
        for (int i = 0; i < nr; ++i) {
          _mm256_storeu_ps(out + c0 + 8 * i, _mm256_fmadd_ps(pj, load8k(vj + 8 * i), _mm256_loadu_ps(out + c0 + 8 * i)));
        }
      }
    }
  }
}

}  // namespace

const Kernels* avx2_exact_kernels() {
  static const Kernels k{"avx2-exact", nullptr, exact_dot, nullptr};
  return avx2_kernels() ? &k : nullptr;
}

// AVX2, FMA and F16C, read from CPUID (clang 14's __builtin_cpu_supports does not know "f16c"), and the OS saving
// the AVX registers (OSXSAVE, XCR0 bits 1 and 2).
static bool cpu_has_avx2_fma_f16c() {
  unsigned a, b, c, d;
  if (!__get_cpuid(1, &a, &b, &c, &d)) return false;
  const bool fma = c & bit_FMA, f16c = c & bit_F16C, osxsave = c & bit_OSXSAVE;
  if (!fma || !f16c || !osxsave) return false;
  unsigned xcr0_lo, xcr0_hi;
  __asm__("xgetbv" : "=a"(xcr0_lo), "=d"(xcr0_hi) : "c"(0));
  if ((xcr0_lo & 6) != 6) return false;
  if (!__get_cpuid_count(7, 0, &a, &b, &c, &d)) return false;
  return b & bit_AVX2;
}

const Kernels* avx2_kernels() {
  static const Kernels k{"avx2", quantize_q8, dot, gemm};
  static const bool ok = cpu_has_avx2_fma_f16c();
  return ok ? &k : nullptr;
}

// AVX-VNNI (VEX-encoded dpbusd): CPUID leaf 7, subleaf 1, EAX bit 4.
static bool cpu_has_avx_vnni() {
  unsigned a, b, c, d;
  if (!__get_cpuid_count(7, 1, &a, &b, &c, &d)) return false;
  return a & (1u << 4);
}

// AVX512-VNNI with AVX512-VL (dpbusd on 256-bit registers): CPUID leaf 7 ECX bit 11 and EBX bit 31, and the OS
// saving the AVX-512 state (XCR0 bits 5-7).
static bool cpu_has_avx512_vnni() {
  unsigned a, b, c, d;
  if (!__get_cpuid_count(7, 0, &a, &b, &c, &d)) return false;
  if (!(c & (1u << 11)) || !(b & (1u << 31))) return false;
  unsigned xcr0_lo, xcr0_hi;
  __asm__("xgetbv" : "=a"(xcr0_lo), "=d"(xcr0_hi) : "c"(0));
  return (xcr0_lo & 0xe6) == 0xe6;
}

const Kernels* avx512_vnni_kernels() {
  static const Kernels k{"avx512-vnni", quantize_q8, dot_vnni512, gemm_vnni512};
  static const bool ok = avx2_kernels() && cpu_has_avx512_vnni();
  return ok ? &k : nullptr;
}

const Kernels* avx2_vnni_kernels() {
  static const Kernels k{"avx2-vnni", quantize_q8, dot_vnni, gemm_vnni};
  static const bool ok = avx2_kernels() && cpu_has_avx_vnni();
  return ok ? &k : nullptr;
}

const AttnKernels* avx2_attn_kernels() {
  static const AttnKernels k{"avx2", softmax8, attn_scores<uint16_t>, attn_scores<float>, attn_accumulate<uint16_t>,
                             attn_accumulate<float>};
  return avx2_kernels() ? &k : nullptr;
}

}  // namespace troupe
