// kernels.cu: the CUDA kernels of kernels.cuh. Compiled with -fmad=false: a * b + c stays two roundings as on the
// CPU; fmaf is written where a fused multiply-add is meant (attention, as the CPU's attention kernels do).
#include "kernels.cuh"

#include <cmath>

namespace troupe::gpu {

namespace {

constexpr unsigned kFull = 0xffffffffu;

__device__ inline float warp_max(float v) {
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(kFull, v, o));
  return v;
}
__device__ inline float warp_sum(float v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(kFull, v, o);
  return v;
}
__device__ inline int warp_sum(int v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(kFull, v, o);
  return v;
}
__device__ inline double warp_sum(double v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(kFull, v, o);
  return v;
}

__device__ inline float half_bits_to_float(uint16_t h) { return __half2float(__ushort_as_half(h)); }
__device__ inline float round_through_half(float f) { return __half2float(__float2half_rn(f)); }

// The CPU's expf_poly (src/kernels.cpp): 2^k * p(r), p the degree-7 Taylor polynomial, in float fused multiply-adds.
__device__ inline float expf_poly(float x) {
  if (x < -87.3f) return 0.0f;
  if (x > 88.7f) return INFINITY;
  const float k = rintf(x * 1.44269504f);
  float r = fmaf(k, -0.693145752f, x);
  r = fmaf(k, -1.42860677e-06f, r);
  float p = 1.0f / 5040;
  p = fmaf(p, r, 1.0f / 720);
  p = fmaf(p, r, 1.0f / 120);
  p = fmaf(p, r, 1.0f / 24);
  p = fmaf(p, r, 1.0f / 6);
  p = fmaf(p, r, 0.5f);
  p = fmaf(p, r, 1.0f);
  p = fmaf(p, r, 1.0f);
  const int ki = static_cast<int>(k);
  const int k1 = ki >> 1, k2 = ki - k1;
  return p * __int_as_float((k1 + 127) << 23) * __int_as_float((k2 + 127) << 23);
}

// ---- quantize_q8: one warp per block of 32 ----

__global__ void quantize_q8_kernel(const float* x, BlockQ8* y, int64_t n_blocks_total, int64_t nb, int64_t cols) {
  const int64_t gw = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) / 32;
  const int lane = threadIdx.x & 31;
  if (gw >= n_blocks_total) return;
  const int64_t t = gw / nb, b = gw % nb;
  const float v = x[t * cols + b * kQBlock + lane];
  const float amax = warp_max(fabsf(v));
  const float d = amax / 127.0f;
  const float id = amax != 0 ? 127.0f / amax : 0.0f;
  const int q = __float2int_rn(v * id);  // ties to even, as nearbyint on the CPU
  const int sum = warp_sum(q);
  BlockQ8& out = y[gw];
  out.qs[lane] = static_cast<int8_t>(q);
  if (lane == 0) {
    out.d = round_through_half(d);
    out.s = round_through_half(d * static_cast<float>(sum));
  }
}

// ---- quantised matmul: one warp per weight row, kTileTokens tokens per pass ----

// 32 weights of one block as 8 words of 4 signed bytes (elements 4i .. 4i+3), with the block's scale and offset.
template <GgmlType T>
struct WBlock {
  int q[8];
  float d, m;
};

__device__ inline uint32_t load_u32_from_u16(const uint8_t* p) {
  const uint16_t* h = reinterpret_cast<const uint16_t*>(p);
  return static_cast<uint32_t>(h[0]) | (static_cast<uint32_t>(h[1]) << 16);
}

template <GgmlType T>
__device__ inline void load_block(const uint8_t* row, int64_t b, WBlock<T>& w) {
  if constexpr (T == GgmlType::q4_1) {
    const uint8_t* p = row + b * sizeof(BlockQ4_1);  // 20 bytes: 4-byte aligned
    const uint32_t dm = *reinterpret_cast<const uint32_t*>(p);
    w.d = half_bits_to_float(dm & 0xffff);
    w.m = half_bits_to_float(dm >> 16);
    for (int i = 0; i < 4; ++i) {
      const uint32_t v = reinterpret_cast<const uint32_t*>(p + 4)[i];
      w.q[i] = static_cast<int>(v & 0x0f0f0f0fu);             // elements 4i .. 4i+3
      w.q[i + 4] = static_cast<int>((v >> 4) & 0x0f0f0f0fu);  // elements 16 + 4i ..
    }
  } else if constexpr (T == GgmlType::q4_0) {
    const uint8_t* p = row + b * sizeof(BlockQ4_0);  // 18 bytes: 2-byte aligned
    w.d = half_bits_to_float(*reinterpret_cast<const uint16_t*>(p));
    w.m = 0;
    for (int i = 0; i < 4; ++i) {
      const uint32_t v = load_u32_from_u16(p + 2 + 4 * i);
      w.q[i] = static_cast<int>(v & 0x0f0f0f0fu);
      w.q[i + 4] = static_cast<int>((v >> 4) & 0x0f0f0f0fu);
    }
  } else {  // q8_0: 34 bytes, 2-byte aligned
    const uint8_t* p = row + b * sizeof(BlockQ8_0);
    w.d = half_bits_to_float(*reinterpret_cast<const uint16_t*>(p));
    w.m = 0;
    for (int i = 0; i < 8; ++i) w.q[i] = static_cast<int>(load_u32_from_u16(p + 2 + 4 * i));
  }
}

template <GgmlType T>
__device__ inline float block_term(const WBlock<T>& w, const BlockQ8& a) {
  const int* x = reinterpret_cast<const int*>(a.qs);
  int sumi = 0;
  for (int i = 0; i < 8; ++i) sumi = __dp4a(w.q[i], x[i], sumi);
  if constexpr (T == GgmlType::q4_0) {
    int sumx = 0;  // the activations' sum, for the -8 of every weight
    for (int i = 0; i < 8; ++i) sumx = __dp4a(x[i], 0x01010101, sumx);
    sumi -= 8 * sumx;
  }
  float term = static_cast<float>(sumi) * (w.d * a.d);  // w.d * a.d is exact in float (two 11-bit significands)
  if constexpr (T == GgmlType::q4_1) term += w.m * a.s;
  return term;
}

template <GgmlType T>
__global__ void matmul_q_kernel(const uint8_t* w, int64_t rows, int64_t nb, int64_t row_bytes, const BlockQ8* xq,
                                int n, float* y, int64_t ld, bool add) {
  const int lane = threadIdx.x & 31;
  const int64_t r = static_cast<int64_t>(blockIdx.x) * (blockDim.x / 32) + threadIdx.x / 32;
  if (r >= rows) return;
  const int t0 = blockIdx.y * kTileTokens;
  const int nt = min(kTileTokens, n - t0);
  const uint8_t* row = w + r * row_bytes;
  float acc[kTileTokens];
  for (int i = 0; i < kTileTokens; ++i) acc[i] = 0;
  for (int64_t b = lane; b < nb; b += 32) {
    WBlock<T> wb;
    load_block<T>(row, b, wb);
#pragma unroll
    for (int i = 0; i < kTileTokens; ++i) {
      if (i < nt) acc[i] += block_term<T>(wb, xq[(t0 + i) * nb + b]);
    }
  }
#pragma unroll
  for (int i = 0; i < kTileTokens; ++i) {
    if (i >= nt) break;
    const float v = warp_sum(acc[i]);
    if (lane == 0) {
      float* out = y + static_cast<int64_t>(t0 + i) * ld + r;
      *out = add ? *out + v : v;
    }
  }
}

// ---- float matmul (F32, F16, BF16 weights) ----

__device__ inline float to_float(float v) { return v; }
__device__ inline float to_float(__half v) { return __half2float(v); }
struct Bf16 { uint16_t bits; };
__device__ inline float to_float(Bf16 v) { return __int_as_float(static_cast<int>(v.bits) << 16); }

template <class W>
__global__ void matmul_f_kernel(const uint8_t* w, int64_t rows, int64_t cols, int64_t row_bytes, const float* x,
                                int n, float* y, int64_t ld, bool add) {
  const int lane = threadIdx.x & 31;
  const int64_t r = static_cast<int64_t>(blockIdx.x) * (blockDim.x / 32) + threadIdx.x / 32;
  if (r >= rows) return;
  const int t0 = blockIdx.y * kTileTokens;
  const int nt = min(kTileTokens, n - t0);
  const W* row = reinterpret_cast<const W*>(w + r * row_bytes);
  float acc[kTileTokens];
  for (int i = 0; i < kTileTokens; ++i) acc[i] = 0;
  for (int64_t j = lane; j < cols; j += 32) {
    const float wj = to_float(row[j]);
#pragma unroll
    for (int i = 0; i < kTileTokens; ++i) {
      if (i < nt) acc[i] += wj * x[static_cast<int64_t>(t0 + i) * cols + j];
    }
  }
#pragma unroll
  for (int i = 0; i < kTileTokens; ++i) {
    if (i >= nt) break;
    const float v = warp_sum(acc[i]);
    if (lane == 0) {
      float* out = y + static_cast<int64_t>(t0 + i) * ld + r;
      *out = add ? *out + v : v;
    }
  }
}

// ---- element-wise ----

__global__ void rmsnorm_kernel(const float* x, int64_t ld_x, const int* rows, const float* w, float* out, int dim,
                               float eps) {
  const int i = blockIdx.x;
  const float* xr = x + static_cast<int64_t>(rows ? rows[i] : i) * ld_x;
  double ss = 0;  // as the CPU: float squares added in double
  for (int j = threadIdx.x; j < dim; j += blockDim.x) ss += xr[j] * xr[j];
  __shared__ double part[32];
  ss = warp_sum(ss);
  if ((threadIdx.x & 31) == 0) part[threadIdx.x / 32] = ss;
  __syncthreads();
  if (threadIdx.x < 32) {
    double v = threadIdx.x < blockDim.x / 32 ? part[threadIdx.x] : 0.0;
    v = warp_sum(v);
    if (threadIdx.x == 0) part[0] = v;
  }
  __syncthreads();
  const float mean = static_cast<float>(part[0] / static_cast<double>(dim));
  const float scale = 1.0f / sqrtf(mean + eps);
  float* o = out + static_cast<int64_t>(i) * dim;
  for (int j = threadIdx.x; j < dim; j += blockDim.x) o[j] = xr[j] * scale * w[j];
}

__global__ void rope_kernel(float* x, StepMeta m, int n, int n_heads, int head_dim, int rope_dim, float theta_scale) {
  const int pairs = rope_dim / 2;
  const int64_t idx = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (idx >= static_cast<int64_t>(n) * n_heads * pairs) return;
  const int i = idx % pairs;
  const int h = (idx / pairs) % n_heads;
  const int t = idx / (static_cast<int64_t>(pairs) * n_heads);
  float theta = static_cast<float>(m.tok_pos[t]);  // pos * theta_scale^i by repeated multiplication, as the CPU
  for (int k = 0; k < i; ++k) theta *= theta_scale;
  const float c = cosf(theta), s = sinf(theta);
  float* v = x + (static_cast<int64_t>(t) * n_heads + h) * head_dim + 2 * i;
  const float a = v[0], b = v[1];
  v[0] = a * c - b * s;
  v[1] = a * s + b * c;
}

__global__ void swiglu_kernel(float* g, const float* u, int64_t n) {
  const int64_t j = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (j < n) g[j] = g[j] / (1.0f + expf(-g[j])) * u[j];
}

__global__ void embed_kernel(const uint8_t* w, GgmlType type, int64_t cols, int64_t row_bytes, const int* tokens,
                             float* x, int n) {
  const int64_t idx = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (idx >= n * cols) return;
  const int64_t t = idx / cols, j = idx % cols;
  const uint8_t* row = w + static_cast<int64_t>(tokens[t]) * row_bytes;
  const int64_t b = j / kQBlock;
  const int e = j % kQBlock;
  float v = 0;
  switch (type) {
    case GgmlType::f32: v = reinterpret_cast<const float*>(row)[j]; break;
    case GgmlType::f16: v = half_bits_to_float(reinterpret_cast<const uint16_t*>(row)[j]); break;
    case GgmlType::bf16: v = __int_as_float(static_cast<int>(reinterpret_cast<const uint16_t*>(row)[j]) << 16); break;
    case GgmlType::q4_0: {
      const uint8_t* p = row + b * sizeof(BlockQ4_0);
      const uint8_t q = p[2 + (e & 15)];
      v = half_bits_to_float(*reinterpret_cast<const uint16_t*>(p)) *
          static_cast<float>((e < 16 ? q & 0x0f : q >> 4) - 8);
      break;
    }
    case GgmlType::q4_1: {
      const uint8_t* p = row + b * sizeof(BlockQ4_1);
      const uint8_t q = p[4 + (e & 15)];
      const float d = half_bits_to_float(reinterpret_cast<const uint16_t*>(p)[0]);
      const float mn = half_bits_to_float(reinterpret_cast<const uint16_t*>(p)[1]);
      v = d * static_cast<float>(e < 16 ? q & 0x0f : q >> 4) + mn;
      break;
    }
    case GgmlType::q8_0: {
      const uint8_t* p = row + b * sizeof(BlockQ8_0);
      v = half_bits_to_float(*reinterpret_cast<const uint16_t*>(p)) * static_cast<float>(static_cast<int8_t>(p[2 + e]));
      break;
    }
  }
  x[idx] = v;
}

// ---- the paged KV cache ----

__device__ inline int64_t cache_row(const StepMeta& m, int seq, int pos) {
  return static_cast<int64_t>(m.bt[m.seq_bt[seq] + pos / m.block_size]) * m.block_size + pos % m.block_size;
}

__global__ void kv_store_kernel(const float* k, const float* v, __half* kc, __half* vc, StepMeta m, int n, int kv_dim) {
  const int64_t idx = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (idx >= static_cast<int64_t>(n) * kv_dim) return;
  const int t = idx / kv_dim, e = idx % kv_dim;
  const int64_t row = cache_row(m, m.tok_seq[t], m.tok_pos[t]);
  kc[row * kv_dim + e] = __float2half_rn(k[idx]);
  vc[row * kv_dim + e] = __float2half_rn(v[idx]);
}

// One block of kAttnWarps warps per (token, query head). Warp w takes the chunks of 32 keys w, w + kAttnWarps, ...:
// each lane scores one key of the chunk against q (in shared memory), the warp updates its running max and sum, then
// every lane adds the chunk's value rows for its head_dim / 32 dimensions. The warps' states merge at the end.
__global__ void attention_kernel(const float* q, const __half* kc, const __half* vc, float* out, StepMeta m,
                                 int n_head, int n_head_kv, int head_dim, float scale) {
  const int t = blockIdx.x, h = blockIdx.y;
  const int lane = threadIdx.x & 31, warp = threadIdx.x / 32;
  const int q_dim = n_head * head_dim, kv_dim = n_head_kv * head_dim;
  const int kv_off = (h / (n_head / n_head_kv)) * head_dim;
  const int dpl = head_dim / 32;  // dimensions per lane
  __shared__ float qs[kMaxHeadDim];
  __shared__ float wm[kAttnWarps], wl[kAttnWarps];
  __shared__ float wacc[kAttnWarps][kMaxHeadDim];
  for (int d = threadIdx.x; d < head_dim; d += blockDim.x)
    qs[d] = q[static_cast<int64_t>(t) * q_dim + h * head_dim + d];
  __syncthreads();

  const int seq = m.tok_seq[t];
  const int n_keys = m.tok_pos[t] + 1;
  float mx = -INFINITY, l = 0;
  float acc[kMaxHeadDim / 32];
  for (int i = 0; i < kMaxHeadDim / 32; ++i) acc[i] = 0;
  for (int c = warp * 32; c < n_keys; c += kAttnWarps * 32) {
    const int j = c + lane;
    float s = -INFINITY;
    int64_t row = 0;
    if (j < n_keys) {
      row = cache_row(m, seq, j);
      const __half2* kp = reinterpret_cast<const __half2*>(kc + row * kv_dim + kv_off);
      float a0 = 0, a1 = 0;
      for (int d = 0; d < head_dim / 2; ++d) {
        const float2 kk = __half22float2(kp[d]);
        a0 = fmaf(qs[2 * d], kk.x, a0);
        a1 = fmaf(qs[2 * d + 1], kk.y, a1);
      }
      s = (a0 + a1) * scale;
    }
    const float m_new = fmaxf(mx, warp_max(s));
    const float corr = mx == -INFINITY ? 0.0f : expf_poly(mx - m_new);
    const float p = j < n_keys ? expf_poly(s - m_new) : 0.0f;
    l = l * corr + warp_sum(p);
    for (int i = 0; i < dpl; ++i) acc[i] *= corr;
    const int n_chunk = min(32, n_keys - c);
    for (int jj = 0; jj < n_chunk; ++jj) {
      const float pj = __shfl_sync(kFull, p, jj);
      const int64_t rj = __shfl_sync(kFull, row, jj);
      const __half* vp = vc + rj * kv_dim + kv_off;
      for (int i = 0; i < dpl; ++i) acc[i] = fmaf(pj, __half2float(vp[lane + 32 * i]), acc[i]);
    }
    mx = m_new;
  }
  if (lane == 0) {
    wm[warp] = mx;
    wl[warp] = l;
  }
  for (int i = 0; i < dpl; ++i) wacc[warp][lane + 32 * i] = acc[i];
  __syncthreads();
  float M = -INFINITY;
  for (int w = 0; w < kAttnWarps; ++w) M = fmaxf(M, wm[w]);
  float L = 0, e[kAttnWarps];
  for (int w = 0; w < kAttnWarps; ++w) {
    e[w] = wm[w] == -INFINITY ? 0.0f : expf_poly(wm[w] - M);
    L += wl[w] * e[w];
  }
  for (int d = threadIdx.x; d < head_dim; d += blockDim.x) {
    float o = 0;
    for (int w = 0; w < kAttnWarps; ++w) o += wacc[w][d] * e[w];
    out[static_cast<int64_t>(t) * q_dim + h * head_dim + d] = o / L;
  }
}

unsigned blocks_for(int64_t n, int per_block) { return static_cast<unsigned>((n + per_block - 1) / per_block); }

}  // namespace

void quantize_q8(const float* x, BlockQ8* y, int n, int64_t cols, cudaStream_t s) {
  const int64_t nb = cols / kQBlock, total = nb * n;
  if (total == 0) return;
  quantize_q8_kernel<<<blocks_for(total * 32, 256), 256, 0, s>>>(x, y, total, nb, cols);
}

void matmul(const DevMatrix& w, const float* x, const BlockQ8* xq, float* y, int n, int64_t ld, bool add,
            cudaStream_t s) {
  if (n == 0 || w.rows == 0) return;
  constexpr int kWarps = 4;
  const dim3 grid(blocks_for(w.rows, kWarps), blocks_for(n, kTileTokens));
  const int threads = 32 * kWarps;
  const int64_t nb = w.cols / kQBlock;
  switch (w.type) {
    case GgmlType::q4_0:
      matmul_q_kernel<GgmlType::q4_0><<<grid, threads, 0, s>>>(w.data, w.rows, nb, w.row_bytes, xq, n, y, ld, add);
      break;
    case GgmlType::q4_1:
      matmul_q_kernel<GgmlType::q4_1><<<grid, threads, 0, s>>>(w.data, w.rows, nb, w.row_bytes, xq, n, y, ld, add);
      break;
    case GgmlType::q8_0:
      matmul_q_kernel<GgmlType::q8_0><<<grid, threads, 0, s>>>(w.data, w.rows, nb, w.row_bytes, xq, n, y, ld, add);
      break;
    case GgmlType::f32:
      matmul_f_kernel<float><<<grid, threads, 0, s>>>(w.data, w.rows, w.cols, w.row_bytes, x, n, y, ld, add);
      break;
    case GgmlType::f16:
      matmul_f_kernel<__half><<<grid, threads, 0, s>>>(w.data, w.rows, w.cols, w.row_bytes, x, n, y, ld, add);
      break;
    case GgmlType::bf16:
      matmul_f_kernel<Bf16><<<grid, threads, 0, s>>>(w.data, w.rows, w.cols, w.row_bytes, x, n, y, ld, add);
      break;
  }
}

void rmsnorm(const float* x, int64_t ld_x, const int* rows, const float* w, float* out, int n, int dim, float eps,
             cudaStream_t s) {
  if (n > 0) rmsnorm_kernel<<<n, 256, 0, s>>>(x, ld_x, rows, w, out, dim, eps);
}

void rope(float* x, const StepMeta& m, int n, int n_heads, int head_dim, int rope_dim, float theta_scale,
          cudaStream_t s) {
  const int64_t total = static_cast<int64_t>(n) * n_heads * (rope_dim / 2);
  if (total > 0) rope_kernel<<<blocks_for(total, 256), 256, 0, s>>>(x, m, n, n_heads, head_dim, rope_dim, theta_scale);
}

void swiglu(float* g, const float* u, int64_t n, cudaStream_t s) {
  if (n > 0) swiglu_kernel<<<blocks_for(n, 256), 256, 0, s>>>(g, u, n);
}

void embed(const DevMatrix& w, const int* tokens, float* x, int n, cudaStream_t s) {
  const int64_t total = static_cast<int64_t>(n) * w.cols;
  if (total > 0) embed_kernel<<<blocks_for(total, 256), 256, 0, s>>>(w.data, w.type, w.cols, w.row_bytes, tokens, x, n);
}

void kv_store(const float* k, const float* v, __half* k_cache, __half* v_cache, const StepMeta& m, int n, int kv_dim,
              cudaStream_t s) {
  const int64_t total = static_cast<int64_t>(n) * kv_dim;
  if (total > 0) kv_store_kernel<<<blocks_for(total, 256), 256, 0, s>>>(k, v, k_cache, v_cache, m, n, kv_dim);
}

void attention(const float* q, const __half* k_cache, const __half* v_cache, float* out, const StepMeta& m, int n,
               int n_head, int n_head_kv, int head_dim, float scale, cudaStream_t s) {
  if (n > 0) {
    attention_kernel<<<dim3(n, n_head), 32 * kAttnWarps, 0, s>>>(q, k_cache, v_cache, out, m, n_head, n_head_kv,
                                                                  head_dim, scale);
  }
}

}  // namespace troupe::gpu
