// kernels.cuh: the CUDA kernels of the llama forward pass, and their launchers (all on one stream).
//
// Each kernel mirrors a CPU kernel of src/kernels.hpp, its reference (tests/gpu/gpu_check.cpp compares them):
//   quantize_q8   activations to 8-bit blocks: the CPU's bytes exactly (same rounding, fp16 scales)
//   matmul        quantised weights (Q4_0, Q4_1, Q8_0) against quantised activations with dp4a, one warp per
//                 weight row and up to kTileTokens tokens per pass over the row, so a decode batch reads each
//                 weight block once; float weights (F32, F16, BF16) against float activations
//   rmsnorm, rope, swiglu, embed: element-wise, as the CPU computes them (compiled with -fmad=false: no fused
//                 multiply-adds that the CPU does not do)
//   kv_store, attention: the paged cache (block tables); attention is flash-style: each (token, head) keeps a running
//                 max, sum and output over chunks of 32 keys, split over 4 warps that are merged at the end; no
//                 score matrix exists in memory.
#pragma once

#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "kernels.hpp"

namespace troupe::gpu {

constexpr int kTileTokens = 8;   // tokens per pass over a weight row
constexpr int kAttnWarps = 4;    // warps per (token, head) in attention
constexpr int kMaxHeadDim = 256; // head_dim % 32 == 0 and at most this

// The step's positions and pages, in device memory (filled once per step, read by rope, kv_store, attention).
struct StepMeta {
  const int* tok_pos = nullptr;  // (n_tokens) position of each token
  const int* tok_seq = nullptr;  // (n_tokens) its sequence
  const int* seq_bt = nullptr;   // (n_seqs) offset of each sequence's block table in bt
  const int* bt = nullptr;       // block tables, concatenated
  int block_size = 16;
};

// A weight matrix on the device: rows of row_bytes bytes, `cols` values each, in GGUF type `type`.
struct DevMatrix {
  GgmlType type = GgmlType::f32;
  const uint8_t* data = nullptr;
  int64_t rows = 0, cols = 0, row_bytes = 0;
  bool quantized() const { return type == GgmlType::q4_0 || type == GgmlType::q4_1 || type == GgmlType::q8_0; }
};

// y (n, cols/32) = 8-bit quantisation of x (n, cols)
void quantize_q8(const float* x, BlockQ8* y, int n, int64_t cols, cudaStream_t s);
// y (n, ld) = (or += when add) W (rows, cols) . x^T; xq for quantised W, x for float W
void matmul(const DevMatrix& w, const float* x, const BlockQ8* xq, float* y, int n, int64_t ld, bool add,
            cudaStream_t s);
// out (n, dim) = rmsnorm of rows of x (n rows, stride ld_x; row i is rows[i] when rows is set, else i)
void rmsnorm(const float* x, int64_t ld_x, const int* rows, const float* w, float* out, int n, int dim, float eps,
             cudaStream_t s);
// rotates x (n, n_heads * head_dim) in place at the tokens' positions
void rope(float* x, const StepMeta& m, int n, int n_heads, int head_dim, int rope_dim, float theta_scale,
          cudaStream_t s);
// g (n) = silu(g) * u
void swiglu(float* g, const float* u, int64_t n, cudaStream_t s);
// x (n, cols) = rows tokens[t] of the embedding matrix
void embed(const DevMatrix& w, const int* tokens, float* x, int n, cudaStream_t s);
// the step's keys and values (n, kv_dim) into layer caches k_cache, v_cache (rows of kv_dim halves)
void kv_store(const float* k, const float* v, __half* k_cache, __half* v_cache, const StepMeta& m, int n, int kv_dim,
              cudaStream_t s);
// out (n, n_head * head_dim) = causal grouped-query attention of q over the cache up to each token's position
void attention(const float* q, const __half* k_cache, const __half* v_cache, float* out, const StepMeta& m, int n,
               int n_head, int n_head_kv, int head_dim, float scale, cudaStream_t s);

}  // namespace troupe::gpu
