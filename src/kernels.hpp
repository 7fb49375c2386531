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
// Dot products are invariant to column splits. A quantised row's blocks each give an exact term: the integer dot
// product of 32 weights with 32 8-bit activations, times the weight scale times the activation scale (both values
// of fp16 precision, so the product is exact in double), plus for Q4_1 its offset times the activations' sum. The
// terms add in double, in four lanes (block b into lane b % 4) that are combined as (l0 + l2) + (l1 + l3). Float
// rows are summed in chunks of kChunk elements from their start: float within a chunk (SIMD lanes), double across
// chunks. Either way the only operation across kChunk-element chunks is double addition, so a layer split by columns
// at multiples of kChunk (tensor parallelism) gets, by adding its shards' double partials and rounding once, the same
// float as the unsplit dot product (up to a double rounding that changes the float with probability ~1e-9).
//
// The batched form (gemm) computes the same terms in the same order for several tokens at once, reading each weight
// block once per tile of tokens: a batch of B tokens costs far less than B single dot products.
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

// Where a batched kernel puts its results: out at (token t, row r) is f[t * ld + r] (rounded once to float) when f is
// set, else d[t * ld + r] (the unrounded double).
struct GemmOut {
  float* f = nullptr;
  double* d = nullptr;
  int64_t ld = 0;
};

// The dispatched kernel set.
struct Kernels {
  const char* name;
  // y (n/32 blocks) = 8-bit quantisation of x (n floats), n % 32 == 0; null when dot takes float activations only
  void (*quantize_q8)(const float* x, BlockQ8* y, int64_t n);
  // dot product of one weight row (cols values, in w.type) with activations x (f32) / xq (quantised), unrounded:
  // float within each kChunk-element chunk, double across chunks (see above)
  double (*dot)(const Matrix& w, int64_t r, const float* x, const BlockQ8* xq);
  // rows [r0, r1) of w against n tokens of activations (x: n rows of w.cols floats; xq: n rows of w.cols/32 blocks),
  // each result the value dot gives; null when the set has none (matmul then calls dot per row and token)
  void (*gemm)(const Matrix& w, const float* x, const BlockQ8* xq, int n, int64_t r0, int64_t r1, const GemmOut& out);
};
const Kernels& kernels();  // the fastest for this CPU (TROUPE_KERNELS=NAME picks a set by name: scalar, avx2, ...)
const Kernels& scalar_kernels();     // the reference
const Kernels& exact_kernels();      // fp32 activations: weights dequantised block by block, no 8-bit rounding
const Kernels& scalar_exact_kernels();   // its reference
const Kernels* avx2_exact_kernels();     // nullptr without AVX2/FMA
const Kernels* avx2_kernels();       // nullptr when the CPU lacks AVX2/FMA
const Kernels* avx2_vnni_kernels();  // the same with AVX-VNNI's dpbusd; nullptr when the CPU lacks it
const Kernels* avx512_vnni_kernels();  // with AVX512-VNNI's dpbusd (256-bit); nullptr when the CPU lacks it

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
// x (n) = softmax(x) in place. exp is computed by expf_poly (below) and the sum in double lanes, identically in the
// scalar and SIMD versions.
void softmax(float* x, int64_t n);
// e^x for x in float's range, to about 1 ulp: 2^k * p(r) with r = x - k ln 2 and p the degree-7 Taylor polynomial,
// every step a float fused multiply-add (0 below -87.3, so softmax of very distant scores underflows cleanly).
float expf_poly(float x);

// ---- attention over one head, on rows of a KV cache (fp16 or f32; row j at rows + j * stride) ----
// scores[j] = scale * (q . k_j) for j < n; each dot product sums head_dim products in 8 float lanes (lane d % 8,
// fused multiply-adds in order of d) combined as ((l0 + l1) + (l2 + l3)) + ((l4 + l5) + (l6 + l7)).
void attn_scores(const float* q, const uint16_t* k, int64_t stride, int n, int head_dim, float scale, float* scores);
void attn_scores(const float* q, const float* k, int64_t stride, int n, int head_dim, float scale, float* scores);
// out[d] = fma(p[j], v_j[d], out[d]) for j = 0 .. n-1 in order: a cache read in pieces (paged) accumulates the
// same as read whole.
void attn_accumulate(const float* p, const uint16_t* v, int64_t stride, int n, int head_dim, float* out);
void attn_accumulate(const float* p, const float* v, int64_t stride, int n, int head_dim, float* out);

// The attention steps above as a dispatched set (the functions above call the fastest; tests compare the sets).
struct AttnKernels {
  const char* name;
  void (*softmax)(float* x, int64_t n);
  void (*scores_f16)(const float* q, const uint16_t* k, int64_t stride, int n, int head_dim, float scale, float* s);
  void (*scores_f32)(const float* q, const float* k, int64_t stride, int n, int head_dim, float scale, float* s);
  void (*accumulate_f16)(const float* p, const uint16_t* v, int64_t stride, int n, int head_dim, float* out);
  void (*accumulate_f32)(const float* p, const float* v, int64_t stride, int n, int head_dim, float* out);
};
AttnKernels scalar_attn_kernels();
const AttnKernels* avx2_attn_kernels();  // nullptr without AVX2/FMA/F16C

}  // namespace troupe
