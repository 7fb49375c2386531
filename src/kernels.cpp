// kernels.cpp: scalar reference kernels, dispatch, and the element-wise steps.
#include "kernels.hpp"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>

#include "fp16.hpp"

namespace troupe {

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

// The quantised dot products add each block's float term to a double sum. A block never straddles a chunk boundary,
// so this keeps the split invariance of kernels.hpp; only the SIMD versions need whole chunks in float lanes.
double dot_q4_0(const uint8_t* row, const BlockQ8* xq, int64_t n_blocks) {
  const auto* w = reinterpret_cast<const BlockQ4_0*>(row);
  double sum = 0;
  for (int64_t b = 0; b < n_blocks; ++b) {
    int sumi = 0;
    for (int j = 0; j < 16; ++j) {
      sumi += ((w[b].qs[j] & 0x0f) - 8) * xq[b].qs[j];
      sumi += ((w[b].qs[j] >> 4) - 8) * xq[b].qs[j + 16];
    }
    sum += static_cast<float>(sumi) * fp16_to_f32(w[b].d) * xq[b].d;
  }
  return sum;
}

double dot_q4_1(const uint8_t* row, const BlockQ8* xq, int64_t n_blocks) {
  const auto* w = reinterpret_cast<const BlockQ4_1*>(row);
  double sum = 0;
  for (int64_t b = 0; b < n_blocks; ++b) {
    int sumi = 0;
    for (int j = 0; j < 16; ++j) {
      sumi += (w[b].qs[j] & 0x0f) * xq[b].qs[j];
      sumi += (w[b].qs[j] >> 4) * xq[b].qs[j + 16];
    }
    sum += static_cast<float>(sumi) * fp16_to_f32(w[b].d) * xq[b].d;
    sum += static_cast<double>(fp16_to_f32(w[b].m)) * xq[b].s;  // the offset term, in double as the SIMD version
  }
  return sum;
}

double dot_q8_0(const uint8_t* row, const BlockQ8* xq, int64_t n_blocks) {
  const auto* w = reinterpret_cast<const BlockQ8_0*>(row);
  double sum = 0;
  for (int64_t b = 0; b < n_blocks; ++b) {
    int sumi = 0;
    for (int j = 0; j < kQBlock; ++j) sumi += w[b].qs[j] * xq[b].qs[j];
    sum += static_cast<float>(sumi) * fp16_to_f32(w[b].d) * xq[b].d;
  }
  return sum;
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
  static const Kernels k{"scalar-exact", nullptr, exact_dot};
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
  static const Kernels k{"scalar", ref::quantize_q8, ref::dot};
  return k;
}

const Kernels& kernels() {
  static const Kernels* chosen = [] {
    const char* force = std::getenv("TROUPE_KERNELS");
    if (force && std::strcmp(force, "scalar") == 0) return &scalar_kernels();
    if (const Kernels* k = avx2_kernels()) return k;
    return &scalar_kernels();
  }();
  return *chosen;
}

void matmul(const Matrix& w, const float* x, const BlockQ8* xq, float* y, int n_tokens, int64_t r0, int64_t r1,
            const Kernels& k) {
  const int64_t n_blocks = w.cols / kQBlock;
  for (int64_t r = r0; r < r1; ++r) {
    for (int t = 0; t < n_tokens; ++t) {
      y[t * w.rows + r] = static_cast<float>(k.dot(w, r, x + t * w.cols, xq ? xq + t * n_blocks : nullptr));
    }
  }
}

void matmul_partial(const Matrix& w, const float* x, const BlockQ8* xq, double* y, int n_tokens, int64_t r0,
                    int64_t r1, const Kernels& k) {
  const int64_t n_blocks = w.cols / kQBlock;
  for (int64_t r = r0; r < r1; ++r) {
    for (int t = 0; t < n_tokens; ++t) {
      y[t * w.rows + r] = k.dot(w, r, x + t * w.cols, xq ? xq + t * n_blocks : nullptr);
    }
  }
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

// theta for pair i is pos * base^(-2i/rope_dim), built by repeated multiplication as ggml does.
void rope(float* x, int n_heads, int head_dim, int rope_dim, int pos, float theta_base) {
  const float theta_scale = std::pow(theta_base, -2.0f / static_cast<float>(rope_dim));
  for (int h = 0; h < n_heads; ++h) {
    float* v = x + h * head_dim;
    float theta = static_cast<float>(pos);
    for (int i = 0; i < rope_dim; i += 2) {
      const float c = std::cos(theta), s = std::sin(theta);
      const float a = v[i], b = v[i + 1];
      v[i] = a * c - b * s;
      v[i + 1] = a * s + b * c;
      theta *= theta_scale;
    }
  }
}

void swiglu(float* out, const float* gate, const float* up, int64_t n) {
  for (int64_t j = 0; j < n; ++j) out[j] = gate[j] / (1.0f + std::exp(-gate[j])) * up[j];
}

void softmax(float* x, int64_t n) {
  float max = x[0];
  for (int64_t j = 1; j < n; ++j) max = std::fmax(max, x[j]);
  double sum = 0;
  for (int64_t j = 0; j < n; ++j) {
    x[j] = std::exp(x[j] - max);
    sum += x[j];
  }
  const float inv = static_cast<float>(1.0 / sum);
  for (int64_t j = 0; j < n; ++j) x[j] *= inv;
}

}  // namespace troupe
