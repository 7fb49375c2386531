// kernels.hpp: the math of the forward pass on the CPU.
//
// Weight matrices stay in their GGUF encoding (F32, F16, BF16, Q4_0, Q4_1, Q8_0) and are used directly in dot
// products; nothing dequantises the model into a copy. For quantized weights the activations are first quantised to
// 8 bits per block of 32 (as llama.cpp does: its q8_0/q8_1), so a block's dot product is integer multiply-adds and
// one scale.
//
// Every kernel has a plain scalar version (the reference, namespace ref) that the SIMD versions are tested against;
// the fastest version the CPU supports is chosen once at start-up (kernels()).
//
// Dot products are invariant to column splits. A row is summed in chunks of kChunk elements from its start: within a
// chunk the kernels accumulate in float (SIMD lanes, as llama.cpp does), and each finished chunk is added to double
// accumulators, so the only operation across chunks is double addition. A layer split by columns at multiples of
// kChunk (tensor parallelism) therefore gets, by adding its shards' double partials and rounding once, the same
// float as the unsplit dot product (up to a double rounding that changes the float with probability ~1e-9).
#pragma once

#include <cstdint>

#include "gguf.hpp"

namespace troupe {

constexpr int kQBlock = 32;  // elements per quantization block
constexpr int kChunk = 64;   // elements per float-accumulated chunk of a dot product; column splits fall on multiples

// Block layouts as stored in GGUF files.
struct BlockQ4_0 { uint16_t d; uint8_t qs[16]; };           // x = d * (q - 8); q[j] low nibble, q[j+16] high
struct BlockQ4_1 { uint16_t d; uint16_t m; uint8_t qs[16]; };  // x = d * q + m
struct BlockQ8_0 { uint16_t d; int8_t qs[32]; };               // x = d * q
static_assert(sizeof(BlockQ4_0) == 18 && sizeof(BlockQ4_1) == 20 && sizeof(BlockQ8_0) == 34);

// A quantised activation block: x ~= d * q, s = d * sum(q) (needed by Q4_1's offset). d and s are rounded through
// fp16 as llama.cpp stores them, so both implementations see the same numbers.
struct BlockQ8 { float d; float s; int8_t qs[32]; };

// A weight matrix W of shape (rows, cols): row r holds the weights of output r, cols is the contiguous dimension.
// A column slice [c, c + n) is the same Matrix with data advanced by c's blocks and cols = n; row_bytes stays the
// full row's stride, so kernels take rows only through row(r) and block counts only from cols.
struct Matrix {
  GgmlType type = GgmlType::f32;
  const uint8_t* data = nullptr;
  int64_t rows = 0;
  int64_t cols = 0;
  int64_t row_bytes = 0;

  static Matrix from(const GgufTensor& t);
  const uint8_t* row(int64_t r) const { return data + r * row_bytes; }
  bool quantized() const { return type == GgmlType::q4_0 || type == GgmlType::q4_1 || type == GgmlType::q8_0; }
};

// The dispatched kernel set.
struct Kernels {
  const char* name;
  // y (n/32 blocks) = 8-bit quantisation of x (n floats), n % 32 == 0; null when dot takes float activations only
  void (*quantize_q8)(const float* x, BlockQ8* y, int64_t n);
  // dot product of one weight row (cols values, in w.type) with activations x (f32) / xq (quantised), unrounded:
  // float within each kChunk-element chunk, double across chunks (see above)
  double (*dot)(const Matrix& w, int64_t r, const float* x, const BlockQ8* xq);
};
const Kernels& kernels();            // the fastest for this CPU (TROUPE_KERNELS=scalar forces the reference)
const Kernels& scalar_kernels();     // the reference
const Kernels& exact_kernels();      // fp32 activations: weights dequantised block by block, no 8-bit rounding
const Kernels& scalar_exact_kernels();   // its reference
const Kernels* avx2_exact_kernels();     // nullptr without AVX2/FMA
const Kernels* avx2_kernels();       // nullptr when the CPU lacks AVX2/FMA

// Y (n_tokens, rows) = X (n_tokens, cols) . W^T for rows [r0, r1): each weight row is read once for all tokens.
// xq holds X quantised (n_tokens, cols/32) when w is quantized; it may be null for float weights. Each output is
// its dot product rounded once to float.
void matmul(const Matrix& w, const float* x, const BlockQ8* xq, float* y, int n_tokens, int64_t r0, int64_t r1,
            const Kernels& k = kernels());

// As matmul, but each output is this matrix's partial sum in double precision, not yet rounded to float: a layer
// split by columns over shards adds its shards' partials and rounds once, which gives the float matmul would give
// on the whole matrix (see above: dot products accumulate in double across kChunk-element chunks). For a column
// slice, X (n_tokens, cols) and xq (n_tokens, cols/32) hold the slice's own columns.
void matmul_partial(const Matrix& w, const float* x, const BlockQ8* xq, double* y, int n_tokens, int64_t r0,
                    int64_t r1, const Kernels& k = kernels());

// out (cols) = row r of w as floats (embedding lookup).
void dequantize_row(const Matrix& w, int64_t r, float* out);

// ---- element-wise steps ----
// out (n) = x / rms(x) * weight
void rmsnorm(float* out, const float* x, const float* weight, int64_t n, float eps);
// Rotates consecutive pairs (x[2i], x[2i+1]) of each head by pos * theta_base^(-2i/rope_dim) (GGUF llama layout).
void rope(float* x, int n_heads, int head_dim, int rope_dim, int pos, float theta_base);
// out (n) = silu(gate) * up
void swiglu(float* out, const float* gate, const float* up, int64_t n);
// x (n) = softmax(x) in place
void softmax(float* x, int64_t n);

}  // namespace troupe
