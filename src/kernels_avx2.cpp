// kernels_avx2.cpp: AVX2 + FMA versions of the quantised dot products and the activation quantiser.
// Each function carries its target attribute, so this file builds without -mavx2 and only runs after a CPU check.
#include <immintrin.h>

#include <cmath>

#include "fp16.hpp"
#include "kernels.hpp"

namespace troupe {

namespace ref {
float dot(const Matrix& w, int64_t r, const float* x, const BlockQ8* xq);
}

namespace {

#define TROUPE_AVX2 __attribute__((target("avx2,fma,f16c")))

TROUPE_AVX2 inline float hsum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

TROUPE_AVX2 inline float h2f(uint16_t h) { return _cvtsh_ss(h); }

// 16 bytes of packed nibbles -> 32 bytes: low nibbles first (elements 0..15), then high nibbles (16..31).
TROUPE_AVX2 inline __m256i unpack_nibbles(const uint8_t* qs) {
  const __m128i packed = _mm_loadu_si128(reinterpret_cast<const __m128i*>(qs));
  const __m128i mask = _mm_set1_epi8(0x0f);
  const __m128i lo = _mm_and_si128(packed, mask);
  const __m128i hi = _mm_and_si128(_mm_srli_epi16(packed, 4), mask);
  return _mm256_set_m128i(hi, lo);
}

// Sum over 32 lanes of u (unsigned 0..255) * s (signed), as 8 int32 partial sums.
TROUPE_AVX2 inline __m256i dot_u8_s8(__m256i u, __m256i s) {
  const __m256i p16 = _mm256_maddubs_epi16(u, s);
  return _mm256_madd_epi16(p16, _mm256_set1_epi16(1));
}

TROUPE_AVX2 float dot_q4_0(const uint8_t* row, const BlockQ8* xq, int64_t n_blocks) {
  const auto* w = reinterpret_cast<const BlockQ4_0*>(row);
  __m256 acc = _mm256_setzero_ps();
  const __m256i eight = _mm256_set1_epi8(8);
  for (int64_t b = 0; b < n_blocks; ++b) {
    // (q - 8) is signed: use |q - 8| as the unsigned operand and move its sign onto the activation.
    const __m256i q = _mm256_sub_epi8(unpack_nibbles(w[b].qs), eight);
    const __m256i a = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xq[b].qs));
    const __m256i sums = dot_u8_s8(_mm256_sign_epi8(q, q), _mm256_sign_epi8(a, q));
    acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(sums), _mm256_set1_ps(h2f(w[b].d) * xq[b].d), acc);
  }
  return hsum(acc);
}

TROUPE_AVX2 float dot_q4_1(const uint8_t* row, const BlockQ8* xq, int64_t n_blocks) {
  const auto* w = reinterpret_cast<const BlockQ4_1*>(row);
  __m256 acc = _mm256_setzero_ps();
  float offsets = 0;
  for (int64_t b = 0; b < n_blocks; ++b) {
    const __m256i q = unpack_nibbles(w[b].qs);
    const __m256i a = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xq[b].qs));
    acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot_u8_s8(q, a)), _mm256_set1_ps(h2f(w[b].d) * xq[b].d), acc);
    offsets += h2f(w[b].m) * xq[b].s;
  }
  return hsum(acc) + offsets;
}

TROUPE_AVX2 float dot_q8_0(const uint8_t* row, const BlockQ8* xq, int64_t n_blocks) {
  const auto* w = reinterpret_cast<const BlockQ8_0*>(row);
  __m256 acc = _mm256_setzero_ps();
  for (int64_t b = 0; b < n_blocks; ++b) {
    const __m256i q = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w[b].qs));
    const __m256i a = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xq[b].qs));
    const __m256i sums = dot_u8_s8(_mm256_sign_epi8(q, q), _mm256_sign_epi8(a, q));
    acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(sums), _mm256_set1_ps(h2f(w[b].d) * xq[b].d), acc);
  }
  return hsum(acc);
}

TROUPE_AVX2 float dot_f32(const float* w, const float* x, int64_t n) {
  __m256 acc = _mm256_setzero_ps();
  int64_t j = 0;
  for (; j + 8 <= n; j += 8) acc = _mm256_fmadd_ps(_mm256_loadu_ps(w + j), _mm256_loadu_ps(x + j), acc);
  float s = hsum(acc);
  for (; j < n; ++j) s += w[j] * x[j];
  return s;
}

TROUPE_AVX2 float dot_f16(const uint16_t* w, const float* x, int64_t n) {
  __m256 acc = _mm256_setzero_ps();
  int64_t j = 0;
  for (; j + 8 <= n; j += 8) {
    const __m256 wf = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(w + j)));
    acc = _mm256_fmadd_ps(wf, _mm256_loadu_ps(x + j), acc);
  }
  float s = hsum(acc);
  for (; j < n; ++j) s += fp16_to_f32(w[j]) * x[j];
  return s;
}

TROUPE_AVX2 float dot(const Matrix& w, int64_t r, const float* x, const BlockQ8* xq) {
  const uint8_t* row = w.row(r);
  switch (w.type) {
    case GgmlType::q4_0: return dot_q4_0(row, xq, w.cols / kQBlock);
    case GgmlType::q4_1: return dot_q4_1(row, xq, w.cols / kQBlock);
    case GgmlType::q8_0: return dot_q8_0(row, xq, w.cols / kQBlock);
    case GgmlType::f32: return dot_f32(reinterpret_cast<const float*>(row), x, w.cols);
    case GgmlType::f16: return dot_f16(reinterpret_cast<const uint16_t*>(row), x, w.cols);
    case GgmlType::bf16: return ref::dot(w, r, x, xq);
  }
  return 0;
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

TROUPE_AVX2 float exact_dot(const Matrix& w, int64_t r, const float* x, const BlockQ8* xq) {
  const uint8_t* row = w.row(r);
  const int64_t nb = w.cols / kQBlock;
  __m256 acc = _mm256_setzero_ps();
  switch (w.type) {
    case GgmlType::q4_0: {
      const auto* b = reinterpret_cast<const BlockQ4_0*>(row);
      for (int64_t i = 0; i < nb; ++i) {
        const float d = h2f(b[i].d);
        acc = fma_block_u8(unpack_nibbles(b[i].qs), d, -8.0f * d, x + i * kQBlock, acc);
      }
      return hsum(acc);
    }
    case GgmlType::q4_1: {
      const auto* b = reinterpret_cast<const BlockQ4_1*>(row);
      for (int64_t i = 0; i < nb; ++i) {
        acc = fma_block_u8(unpack_nibbles(b[i].qs), h2f(b[i].d), h2f(b[i].m), x + i * kQBlock, acc);
      }
      return hsum(acc);
    }
    case GgmlType::q8_0: {
      const auto* b = reinterpret_cast<const BlockQ8_0*>(row);
      for (int64_t i = 0; i < nb; ++i) {
        const __m256 vd = _mm256_set1_ps(h2f(b[i].d));
        for (int k = 0; k < 4; ++k) {
          const __m128i q8 = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(b[i].qs + 8 * k));
          const __m256 wv = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(q8)), vd);
          acc = _mm256_fmadd_ps(wv, _mm256_loadu_ps(x + i * kQBlock + 8 * k), acc);
        }
      }
      return hsum(acc);
    }
    default:
      return dot(w, r, x, xq);  // float weights: already exact
  }
}

}  // namespace

const Kernels* avx2_exact_kernels() {
  static const Kernels k{"avx2-exact", nullptr, exact_dot};
  return avx2_kernels() ? &k : nullptr;
}

const Kernels* avx2_kernels() {
  static const Kernels k{"avx2", quantize_q8, dot};
  __builtin_cpu_init();
  if (!__builtin_cpu_supports("avx2") || !__builtin_cpu_supports("fma") || !__builtin_cpu_supports("f16c")) {
    return nullptr;
  }
  return &k;
}

}  // namespace troupe
