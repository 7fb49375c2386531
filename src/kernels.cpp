// kernels.cpp: scalar reference kernels, dispatch, and the element-wise steps.
#include "kernels.hpp"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "fp16.hpp"

namespace troupe {

namespace {
inline float load(uint16_t h) { return fp16_to_f32(h); }
inline float load(float f) { return f; }
}  // namespace

Matrix Matrix::from(const GgufTensor& t) {
  Matrix m;
  m.type = static_cast<GgmlType>(t.type_id);
  m.data = t.data;
  m.cols = t.dims[0];
  m.rows = t.rows();
  m.row_bytes = t.row_bytes();
  return m;
}

namespace ref {

// As llama.cpp rounds on x86: d = amax / 127, q = nearest-even(x * 127 / amax). Using the same rounding matters:
// 8-bit activations amplify any difference in a rounding decision through every later layer.
void quantize_q8(const float* x, BlockQ8* y, int64_t n) {
  for (int64_t b = 0; b < n / kQBlock; ++b) {
    const float* xb = x + b * kQBlock;
    float amax = 0;
    for (int j = 0; j < kQBlock; ++j) amax = std::fmax(amax, std::fabs(xb[j]));
    const float d = amax / 127.0f;
    const float id = amax != 0 ? 127.0f / amax : 0.0f;
    int sum = 0;
    for (int j = 0; j < kQBlock; ++j) {
      y[b].qs[j] = static_cast<int8_t>(std::nearbyint(xb[j] * id));  // default rounding mode: ties to even
      sum += y[b].qs[j];
    }
    y[b].d = fp16_to_f32(f32_to_fp16(d));
    y[b].s = fp16_to_f32(f32_to_fp16(d * static_cast<float>(sum)));
  }
}

// The quantised dot products: each block's exact term (kernels.hpp) into double lane b % 4.
inline double combine(const double* lanes) { return (lanes[0] + lanes[2]) + (lanes[1] + lanes[3]); }

inline double block_scale(uint16_t dw, const BlockQ8& a) {
  return static_cast<double>(fp16_to_f32(dw)) * static_cast<double>(a.d);  // exact: two 11-bit significands
}

double dot_q4_0(const uint8_t* row, const BlockQ8* xq, int64_t n_blocks) {
  const auto* w = reinterpret_cast<const BlockQ4_0*>(row);
  double lanes[4] = {0, 0, 0, 0};
  for (int64_t b = 0; b < n_blocks; ++b) {
    int sumi = 0;
    for (int j = 0; j < 16; ++j) {
      sumi += ((w[b].qs[j] & 0x0f) - 8) * xq[b].qs[j];
      sumi += ((w[b].qs[j] >> 4) - 8) * xq[b].qs[j + 16];
    }
    lanes[b & 3] += sumi * block_scale(w[b].d, xq[b]);
  }
  return combine(lanes);
}

double dot_q4_1(const uint8_t* row, const BlockQ8* xq, int64_t n_blocks) {
  const auto* w = reinterpret_cast<const BlockQ4_1*>(row);
  double lanes[4] = {0, 0, 0, 0};
  for (int64_t b = 0; b < n_blocks; ++b) {
    int sumi = 0;
    for (int j = 0; j < 16; ++j) {
      sumi += (w[b].qs[j] & 0x0f) * xq[b].qs[j];
      sumi += (w[b].qs[j] >> 4) * xq[b].qs[j + 16];
    }
    lanes[b & 3] += sumi * block_scale(w[b].d, xq[b]);
    lanes[b & 3] += static_cast<double>(fp16_to_f32(w[b].m)) * xq[b].s;  // the offset term, also exact
  }
  return combine(lanes);
}

double dot_q8_0(const uint8_t* row, const BlockQ8* xq, int64_t n_blocks) {
  const auto* w = reinterpret_cast<const BlockQ8_0*>(row);
  double lanes[4] = {0, 0, 0, 0};
  for (int64_t b = 0; b < n_blocks; ++b) {
    int sumi = 0;
    for (int j = 0; j < kQBlock; ++j) sumi += w[b].qs[j] * xq[b].qs[j];
    lanes[b & 3] += sumi * block_scale(w[b].d, xq[b]);
  }
  return combine(lanes);
}

// Float weights: a float sum per kChunk elements from the row's start, the chunks added in double.
template <typename T, typename ToFloat>
double dot_float(const T* v, const float* x, int64_t n, ToFloat to_f32) {
  double sum = 0;
  for (int64_t j0 = 0; j0 < n; j0 += kChunk) {
    float s = 0;
    for (int64_t j = j0; j < std::min<int64_t>(j0 + kChunk, n); ++j) s += to_f32(v[j]) * x[j];
    sum += s;
  }
  return sum;
}

double dot(const Matrix& w, int64_t r, const float* x, const BlockQ8* xq) {
  const uint8_t* row = w.row(r);
  const int64_t n = w.cols;
  const auto* half = reinterpret_cast<const uint16_t*>(row);
  switch (w.type) {
    case GgmlType::q4_0: return dot_q4_0(row, xq, n / kQBlock);
    case GgmlType::q4_1: return dot_q4_1(row, xq, n / kQBlock);
    case GgmlType::q8_0: return dot_q8_0(row, xq, n / kQBlock);
    case GgmlType::f32: return dot_float(reinterpret_cast<const float*>(row), x, n, [](float f) { return f; });
    case GgmlType::f16: return dot_float(half, x, n, fp16_to_f32);
    case GgmlType::bf16: return dot_float(half, x, n, bf16_to_f32);
  }
  return 0;
}

}  // namespace ref

// Dequantises 32 weights at a time and multiplies them with the float activations (the scalar reference): a float
// sum per block, the blocks added in double.
double exact_dot(const Matrix& w, int64_t r, const float* x, const BlockQ8* xq) {
  if (!w.quantized()) return ref::dot(w, r, x, xq);
  Matrix blocks = w;  // the row's blocks, viewed as a (cols/32) x 32 matrix
  blocks.cols = kQBlock;
  blocks.row_bytes = ggml_type_traits(static_cast<uint32_t>(w.type))->block_bytes;
  blocks.data = w.row(r);
  float buf[kQBlock];
  double sum = 0;
  for (int64_t b = 0; b < w.cols / kQBlock; ++b) {
    dequantize_row(blocks, b, buf);
    float s = 0;
    for (int j = 0; j < kQBlock; ++j) s += buf[j] * x[b * kQBlock + j];
    sum += s;
  }
  return sum;
}

const Kernels& scalar_exact_kernels() {
  static const Kernels k{"scalar-exact", nullptr, exact_dot, nullptr};
  return k;
}

const Kernels& exact_kernels() {
  static const Kernels* chosen = [] {
    const char* force = std::getenv("TROUPE_KERNELS");
    if (force && std::strcmp(force, "scalar") == 0) return &scalar_exact_kernels();
    if (const Kernels* k = avx2_exact_kernels()) return k;
    return &scalar_exact_kernels();
  }();
  return *chosen;
}

const Kernels& scalar_kernels() {
  static const Kernels k{"scalar", ref::quantize_q8, ref::dot, nullptr};
  return k;
}

const Kernels& kernels() {
  static const Kernels* chosen = [] {
    const char* force = std::getenv("TROUPE_KERNELS");
    // the fastest first; TROUPE_KERNELS=NAME picks a set by name where this CPU has it
    const Kernels* sets[] = {avx2_vnni_kernels(), avx512_vnni_kernels(), avx2_kernels(), &scalar_kernels()};
    for (const Kernels* k : sets) {
      if (k && force && std::strcmp(force, k->name) == 0) return k;
    }
    for (const Kernels* k : sets) {
      if (k) return k;
    }
    return &scalar_kernels();
  }();
  return *chosen;
}

// One dot product per row and token, for kernel sets without a batched form.
static void gemm_by_dots(const Kernels& k, const Matrix& w, const float* x, const BlockQ8* xq, int n, int64_t r0,
                         int64_t r1, const GemmOut& out) {
  const int64_t n_blocks = w.cols / kQBlock;
  for (int64_t r = r0; r < r1; ++r) {
    for (int t = 0; t < n; ++t) {
      const double v = k.dot(w, r, x + t * w.cols, xq ? xq + t * n_blocks : nullptr);
      if (out.f) out.f[t * out.ld + r] = static_cast<float>(v);
      else out.d[t * out.ld + r] = v;
    }
  }
}

void matmul(const Matrix& w, const float* x, const BlockQ8* xq, float* y, int n_tokens, int64_t r0, int64_t r1,
            const Kernels& k) {
  const GemmOut out{y, nullptr, w.rows};
  if (k.gemm) k.gemm(w, x, xq, n_tokens, r0, r1, out);
  else gemm_by_dots(k, w, x, xq, n_tokens, r0, r1, out);
}

void matmul_partial(const Matrix& w, const float* x, const BlockQ8* xq, double* y, int n_tokens, int64_t r0,
                    int64_t r1, const Kernels& k) {
  const GemmOut out{nullptr, y, w.rows};
  if (k.gemm) k.gemm(w, x, xq, n_tokens, r0, r1, out);
  else gemm_by_dots(k, w, x, xq, n_tokens, r0, r1, out);
}

void dequantize_row(const Matrix& w, int64_t r, float* out) {
  const uint8_t* row = w.row(r);
  const int64_t nb = w.cols / kQBlock;
  switch (w.type) {
    case GgmlType::f32: std::memcpy(out, row, w.cols * sizeof(float)); break;
    case GgmlType::f16:
      for (int64_t j = 0; j < w.cols; ++j) out[j] = fp16_to_f32(reinterpret_cast<const uint16_t*>(row)[j]);
      break;
    case GgmlType::bf16:
      for (int64_t j = 0; j < w.cols; ++j) out[j] = bf16_to_f32(reinterpret_cast<const uint16_t*>(row)[j]);
      break;
    case GgmlType::q4_0: {
      const auto* b = reinterpret_cast<const BlockQ4_0*>(row);
      for (int64_t i = 0; i < nb; ++i) {
        const float d = fp16_to_f32(b[i].d);
        for (int j = 0; j < 16; ++j) {
          out[i * 32 + j] = d * ((b[i].qs[j] & 0x0f) - 8);
          out[i * 32 + j + 16] = d * ((b[i].qs[j] >> 4) - 8);
        }
      }
      break;
    }
    case GgmlType::q4_1: {
      const auto* b = reinterpret_cast<const BlockQ4_1*>(row);
      for (int64_t i = 0; i < nb; ++i) {
        const float d = fp16_to_f32(b[i].d), m = fp16_to_f32(b[i].m);
        for (int j = 0; j < 16; ++j) {
          out[i * 32 + j] = d * (b[i].qs[j] & 0x0f) + m;
          out[i * 32 + j + 16] = d * (b[i].qs[j] >> 4) + m;
        }
      }
      break;
    }
    case GgmlType::q8_0: {
      const auto* b = reinterpret_cast<const BlockQ8_0*>(row);
      for (int64_t i = 0; i < nb; ++i) {
        const float d = fp16_to_f32(b[i].d);
        for (int j = 0; j < 32; ++j) out[i * 32 + j] = d * b[i].qs[j];
      }
      break;
    }
  }
}

// As ggml: the mean of squares accumulates in double.
void rmsnorm(float* out, const float* x, const float* weight, int64_t n, float eps) {
  double ss = 0;
  for (int64_t j = 0; j < n; ++j) ss += x[j] * x[j];
  const float mean = static_cast<float>(ss / static_cast<double>(n));
  const float scale = 1.0f / std::sqrt(mean + eps);
  for (int64_t j = 0; j < n; ++j) out[j] = x[j] * scale * weight[j];
}

// theta for pair i is pos * base^(-2i/rope_dim), built by repeated multiplication as ggml does; the cosines and
// sines are computed once per pair and used for every head.
void rope(float* x, int n_heads, int head_dim, int rope_dim, int pos, float theta_base) {
  const float theta_scale = std::pow(theta_base, -2.0f / static_cast<float>(rope_dim));
  thread_local std::vector<float> cs;  // [cos, sin] per pair; grows once to the largest rope_dim
  if (cs.size() < static_cast<size_t>(rope_dim)) cs.resize(rope_dim);
  float theta = static_cast<float>(pos);
  for (int i = 0; i < rope_dim; i += 2) {
    cs[i] = std::cos(theta);
    cs[i + 1] = std::sin(theta);
    theta *= theta_scale;
  }
  for (int h = 0; h < n_heads; ++h) {
    float* v = x + h * head_dim;
    for (int i = 0; i < rope_dim; i += 2) {
      const float c = cs[i], s = cs[i + 1];
      const float a = v[i], b = v[i + 1];
      v[i] = a * c - b * s;
      v[i + 1] = a * s + b * c;
    }
  }
}

void swiglu(float* out, const float* gate, const float* up, int64_t n) {
  for (int64_t j = 0; j < n; ++j) out[j] = gate[j] / (1.0f + std::exp(-gate[j])) * up[j];
}

float expf_poly(float x) {
  if (x < -87.3f) return 0.0f;
  if (x > 88.7f) return INFINITY;
  const float k = std::nearbyint(x * 1.44269504f);  // round to nearest even
  float r = std::fmaf(k, -0.693145752f, x);          // ln 2 in two parts: the first exact times any k
  r = std::fmaf(k, -1.42860677e-06f, r);
  float p = 1.0f / 5040;
  p = std::fmaf(p, r, 1.0f / 720);
  p = std::fmaf(p, r, 1.0f / 120);
  p = std::fmaf(p, r, 1.0f / 24);
  p = std::fmaf(p, r, 1.0f / 6);
  p = std::fmaf(p, r, 0.5f);
  p = std::fmaf(p, r, 1.0f);
  p = std::fmaf(p, r, 1.0f);
  // 2^k by adding k to the exponent, in two steps so that k down to -126 and up to 127 stay in range
  const int ki = static_cast<int>(k);
  const int k1 = ki >> 1, k2 = ki - k1;  // floor half (arithmetic shift), as the SIMD version
  return p * bits_to_f32(static_cast<uint32_t>(k1 + 127) << 23) * bits_to_f32(static_cast<uint32_t>(k2 + 127) << 23);
}

namespace ref {

// Softmax with the sum of the exponentials in 8 double lanes (element j into lane j % 8), combined as
// ((l0 + l4) + (l2 + l6)) + ((l1 + l5) + (l3 + l7)), the order of the SIMD version's reduction.
void softmax(float* x, int64_t n) {
  float max = x[0];
  for (int64_t j = 1; j < n; ++j) max = std::fmax(max, x[j]);
  double lanes[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  for (int64_t j = 0; j < n; ++j) {
    x[j] = expf_poly(x[j] - max);
    lanes[j & 7] += x[j];
  }
  const double sum = ((lanes[0] + lanes[4]) + (lanes[2] + lanes[6])) + ((lanes[1] + lanes[5]) + (lanes[3] + lanes[7]));
  const float inv = static_cast<float>(1.0 / sum);
  for (int64_t j = 0; j < n; ++j) x[j] *= inv;
}

template <class T>
void attn_scores(const float* q, const T* k, int64_t stride, int n, int head_dim, float scale, float* scores) {
  for (int j = 0; j < n; ++j) {
    const T* kj = k + j * stride;
    float l[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    for (int d = 0; d < head_dim; ++d) l[d & 7] = std::fmaf(q[d], load(kj[d]), l[d & 7]);
    scores[j] = (((l[0] + l[1]) + (l[2] + l[3])) + ((l[4] + l[5]) + (l[6] + l[7]))) * scale;
  }
}

template <class T>
void attn_accumulate(const float* p, const T* v, int64_t stride, int n, int head_dim, float* out) {
  for (int j = 0; j < n; ++j) {
    const T* vj = v + j * stride;
    for (int d = 0; d < head_dim; ++d) out[d] = std::fmaf(p[j], load(vj[d]), out[d]);
  }
}

template void attn_scores<uint16_t>(const float*, const uint16_t*, int64_t, int, int, float, float*);
template void attn_scores<float>(const float*, const float*, int64_t, int, int, float, float*);
template void attn_accumulate<uint16_t>(const float*, const uint16_t*, int64_t, int, int, float*);
template void attn_accumulate<float>(const float*, const float*, int64_t, int, int, float*);

}  // namespace ref

AttnKernels scalar_attn_kernels() {
  return {"scalar", ref::softmax, ref::attn_scores<uint16_t>, ref::attn_scores<float>, ref::attn_accumulate<uint16_t>,
          ref::attn_accumulate<float>};
}

static const AttnKernels& attn() {
  static const AttnKernels chosen = [] {
    const char* force = std::getenv("TROUPE_KERNELS");
    if (force && std::strcmp(force, "scalar") == 0) return scalar_attn_kernels();
    if (const AttnKernels* k = avx2_attn_kernels()) return *k;
    return scalar_attn_kernels();
  }();
  return chosen;
}

void softmax(float* x, int64_t n) { attn().softmax(x, n); }
void attn_scores(const float* q, const uint16_t* k, int64_t stride, int n, int head_dim, float scale, float* scores) {
  attn().scores_f16(q, k, stride, n, head_dim, scale, scores);
}
void attn_scores(const float* q, const float* k, int64_t stride, int n, int head_dim, float scale, float* scores) {
  attn().scores_f32(q, k, stride, n, head_dim, scale, scores);
}
void attn_accumulate(const float* p, const uint16_t* v, int64_t stride, int n, int head_dim, float* out) {
  attn().accumulate_f16(p, v, stride, n, head_dim, out);
}
void attn_accumulate(const float* p, const float* v, int64_t stride, int n, int head_dim, float* out) {
  attn().accumulate_f32(p, v, stride, n, head_dim, out);
}

}  // namespace troupe
