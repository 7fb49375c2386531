// kernel_check.hpp: each CUDA kernel run once on host data (upload, launch, download), for tests/gpu/gpu_check.cpp
// to compare against its CPU reference. Plain C++: no CUDA types. Slow by design (allocates per call); never used
// on the serving path.
#pragma once

#include <cstdint>
#include <vector>

#include "error.hpp"
#include "kernels.hpp"
#include "shard.hpp"

namespace troupe::gpu_check {

// y (n, cols/32) = 8-bit quantisation of x (n, cols)
Expected<void> quantize_q8(const float* x, int n, int64_t cols, BlockQ8* y);
// y (n, w.rows) = x (n, w.cols) . W^T; x is quantised on the device first when w is quantised
Expected<void> matmul(const Matrix& w, const float* x, int n, float* y);
// out (n, dim) = rmsnorm of x (n, dim) with weight w (dim)
Expected<void> rmsnorm(const float* x, const float* w, int n, int dim, float eps, float* out);
// x (n, n_heads * head_dim) rotated in place; token t at position pos[t]
Expected<void> rope(float* x, const int* pos, int n, int n_heads, int head_dim, int rope_dim, float theta_base);
// g (n) = silu(g) * u
Expected<void> swiglu(float* g, const float* u, int64_t n);
// x (n, w.cols) = rows tokens of w
Expected<void> embed(const Matrix& w, const int* tokens, int n, float* x);
// out (n_tokens, n_head * head_dim) = attention of q (n_tokens, n_head * head_dim) after storing k, v
// (n_tokens, n_head_kv * head_dim) into a paged fp16 cache that already holds k_cache, v_cache
// (n_blocks * block_size, kv_dim) halves; positions and pages from `step`.
Expected<void> attention(const StepLayout& step, const float* q, const float* k, const float* v,
                         std::vector<uint16_t>& k_cache, std::vector<uint16_t>& v_cache, int block_size, int n_head,
                         int n_head_kv, int head_dim, float* out);

}  // namespace troupe::gpu_check
