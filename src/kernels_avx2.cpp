// kernels_avx2.cpp: AVX2 + FMA versions of the dot products and the activation quantiser.
// Each function carries its target attribute, so this file builds without -mavx2 and only runs after a CPU check.
#include <cpuid.h>
#include <immintrin.h>

#include <cmath>
#include <cstring>
#include <type_traits>

#include "fp16.hpp"
#include "kernels.hpp"

namespace troupe {

namespace ref {
double dot(const Matrix& w, int64_t r, const float* x, const BlockQ8* xq);
}

namespace {

#define TROUPE_AVX2 __attribute__((target("avx2,fma,f16c")))

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

// ---- fast path: 8-bit activations ----

// Sum over 32 lanes of u (unsigned 0..255) * s (signed), as 8 partial sums (int32, converted exactly to float).
TROUPE_AVX2 inline __m256 dot_u8_s8(__m256i u, __m256i s) {
  const __m256i p16 = _mm256_maddubs_epi16(u, s);
  return _mm256_cvtepi32_ps(_mm256_madd_epi16(p16, _mm256_set1_epi16(1)));
}

// A block's integer dot product with its activations, as 8 partial sums.
TROUPE_AVX2 inline __m256 int_dot(const BlockQ4_0& w, const BlockQ8& a) {
  // (q - 8) is signed: use |q - 8| as the unsigned operand and move its sign onto the activation.
  const __m256i q = _mm256_sub_epi8(unpack_nibbles(w.qs), _mm256_set1_epi8(8));
  const __m256i x = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(a.qs));
  return dot_u8_s8(_mm256_sign_epi8(q, q), _mm256_sign_epi8(x, q));
}

TROUPE_AVX2 inline __m256 int_dot(const BlockQ4_1& w, const BlockQ8& a) {
  return dot_u8_s8(unpack_nibbles(w.qs), _mm256_loadu_si256(reinterpret_cast<const __m256i*>(a.qs)));
}

TROUPE_AVX2 inline __m256 int_dot(const BlockQ8_0& w, const BlockQ8& a) {
  const __m256i q = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w.qs));
  const __m256i x = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(a.qs));
  return dot_u8_s8(_mm256_sign_epi8(q, q), _mm256_sign_epi8(x, q));
}

// A quantised row, two blocks per chunk. Each block adds its integer dot product * (its weight scale * its
// activation scale) to the chunk's float lanes, as llama.cpp computes it; both scales of a chunk come from one
// conversion and one multiply, [d0, d1] * [d0', d1']. Q4_1 also adds sum over blocks of m * s (llama.cpp's q4_1 x
// q8_1): a block's (d, m) and its activations' (d', s) are adjacent, so the same multiply is
// [d0, m0, d1, m1] * [d0', s0, d1', s1]; each m * s is exact in float (two fp16 values) and the offsets accumulate
// in double (lanes: even and odd blocks). A trailing odd block is a chunk of its own.
template <typename Block>
TROUPE_AVX2 double dot_chunks(const Block* w, const BlockQ8* xq, int64_t n_blocks) {
  constexpr bool kOffsets = std::is_same_v<Block, BlockQ4_1>;
  __m256d sums = _mm256_setzero_pd();
  __m128d offsets = _mm_setzero_pd();
  int64_t b = 0;
  for (; b + 2 <= n_blocks; b += 2) {
    __m256 scale0, scale1;
    if constexpr (kOffsets) {
      uint32_t dm0, dm1;
      std::memcpy(&dm0, &w[b].d, 4);
      std::memcpy(&dm1, &w[b + 1].d, 4);
      const __m128i dm = _mm_insert_epi32(_mm_cvtsi32_si128(static_cast<int>(dm0)), static_cast<int>(dm1), 1);
      const __m128 ds = _mm_loadh_pi(_mm_loadl_pi(_mm_setzero_ps(), reinterpret_cast<const __m64*>(&xq[b].d)),
                                     reinterpret_cast<const __m64*>(&xq[b + 1].d));
      const __m128 p = _mm_mul_ps(_mm_cvtph_ps(dm), ds);  // [scale0, offset0, scale1, offset1]
      scale0 = _mm256_broadcastss_ps(p);
      scale1 = _mm256_broadcastss_ps(_mm_movehl_ps(p, p));
      offsets = _mm_add_pd(offsets, _mm_cvtps_pd(_mm_shuffle_ps(p, p, _MM_SHUFFLE(3, 1, 3, 1))));
    } else {
      const __m128i d = _mm_insert_epi16(_mm_cvtsi32_si128(w[b].d), w[b + 1].d, 1);
      const __m128 dd = _mm_insert_ps(_mm_load_ss(&xq[b].d), _mm_load_ss(&xq[b + 1].d), 0x10);
      const __m128 p = _mm_mul_ps(_mm_cvtph_ps(d), dd);  // [scale0, scale1, 0, 0]
      scale0 = _mm256_broadcastss_ps(p);
      scale1 = _mm256_broadcastss_ps(_mm_movehdup_ps(p));
    }
    const __m256 acc = _mm256_mul_ps(int_dot(w[b], xq[b]), scale0);
    flush(_mm256_fmadd_ps(int_dot(w[b + 1], xq[b + 1]), scale1, acc), sums);
  }
  double offset = _mm_cvtsd_f64(_mm_add_sd(offsets, _mm_unpackhi_pd(offsets, offsets)));
  if (b < n_blocks) {
    flush(_mm256_mul_ps(int_dot(w[b], xq[b]), _mm256_set1_ps(h2f(w[b].d) * xq[b].d)), sums);
    if constexpr (kOffsets) offset += static_cast<double>(h2f(w[b].m)) * xq[b].s;
  }
  return hsum(sums) + offset;
}

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

TROUPE_AVX2 double dot(const Matrix& w, int64_t r, const float* x, const BlockQ8* xq) {
  const uint8_t* row = w.row(r);
  const int64_t nb = w.cols / kQBlock;
  switch (w.type) {
    case GgmlType::q4_0: return dot_chunks(reinterpret_cast<const BlockQ4_0*>(row), xq, nb);
    case GgmlType::q4_1: return dot_chunks(reinterpret_cast<const BlockQ4_1*>(row), xq, nb);
    case GgmlType::q8_0: return dot_chunks(reinterpret_cast<const BlockQ8_0*>(row), xq, nb);
    case GgmlType::f32: return dot_floats(reinterpret_cast<const float*>(row), x, w.cols);
    case GgmlType::f16: return dot_floats(reinterpret_cast<const uint16_t*>(row), x, w.cols);
    case GgmlType::bf16: return ref::dot(w, r, x, xq);
  }
  return 0;
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

}  // namespace

const Kernels* avx2_exact_kernels() {
  static const Kernels k{"avx2-exact", nullptr, exact_dot};
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
  static const Kernels k{"avx2", quantize_q8, dot};
  static const bool ok = cpu_has_avx2_fma_f16c();
  return ok ? &k : nullptr;
}

}  // namespace troupe
