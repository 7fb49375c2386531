// kernel_check.cu: the kernels of kernels.cuh on host data (see kernel_check.hpp).
#include "kernel_check.hpp"

#include <cmath>
#include <string>

#include "kernels.cuh"

namespace troupe::gpu_check {

namespace {

// A device copy of host data (or room for it), freed at the end of the call.
class Buf {
 public:
  explicit Buf(size_t bytes) { err_ = cudaMalloc(&p_, bytes ? bytes : 1); }
  Buf(const void* src, size_t bytes) : Buf(bytes) {
    if (err_ == cudaSuccess && bytes) err_ = cudaMemcpy(p_, src, bytes, cudaMemcpyHostToDevice);
  }
  Buf(const Buf&) = delete;
  Buf& operator=(const Buf&) = delete;
  ~Buf() { if (p_) cudaFree(p_); }
  template <class T> T* as() const { return static_cast<T*>(p_); }
  cudaError_t error() const { return err_; }

 private:
  void* p_ = nullptr;
  cudaError_t err_ = cudaSuccess;
};

Expected<void> status(std::initializer_list<const Buf*> bufs) {
  for (const Buf* b : bufs) {
    if (b->error() != cudaSuccess)
      return Error{ErrorKind::unavailable, std::string("cuda: ") + cudaGetErrorString(b->error())};
  }
  return {};
}

// Waits for the kernels and copies a result back.
Expected<void> finish(void* dst, const Buf& src, size_t bytes) {
  cudaError_t e = cudaGetLastError();
  if (e == cudaSuccess) e = cudaDeviceSynchronize();
  if (e == cudaSuccess && bytes) e = cudaMemcpy(dst, src.as<void>(), bytes, cudaMemcpyDeviceToHost);
  if (e != cudaSuccess) return Error{ErrorKind::unavailable, std::string("cuda: ") + cudaGetErrorString(e)};
  return {};
}

gpu::DevMatrix view(const Buf& b, const Matrix& w) { return {w.type, b.as<uint8_t>(), w.rows, w.cols, w.row_bytes}; }

// The step's metadata on the device, laid out as the stage lays it out.
struct Meta {
  std::vector<int> pos, seq, seq_bt, bt;
  explicit Meta(const StepLayout& step) {
    for (size_t s = 0; s < step.seqs.size(); ++s) {
      const auto& sq = step.seqs[s];
      seq_bt.push_back(static_cast<int>(bt.size()));
      bt.insert(bt.end(), sq.block_table.begin(), sq.block_table.end());
      for (int t = 0; t < sq.n; ++t) {
        pos.push_back(sq.pos0 + t);
        seq.push_back(static_cast<int>(s));
      }
    }
  }
};

}  // namespace

Expected<void> quantize_q8(const float* x, int n, int64_t cols, BlockQ8* y) {
  Buf dx(x, n * cols * 4), dy(n * (cols / kQBlock) * sizeof(BlockQ8));
  if (auto r = status({&dx, &dy}); !r) return r;
  gpu::quantize_q8(dx.as<float>(), dy.as<BlockQ8>(), n, cols, nullptr);
  return finish(y, dy, n * (cols / kQBlock) * sizeof(BlockQ8));
}

Expected<void> matmul(const Matrix& w, const float* x, int n, float* y) {
  Buf dw(w.data, w.rows * w.row_bytes), dx(x, n * w.cols * 4), dq(n * (w.cols / kQBlock + 1) * sizeof(BlockQ8)),
      dy(n * w.rows * 4);
  if (auto r = status({&dw, &dx, &dq, &dy}); !r) return r;
  if (w.quantized()) gpu::quantize_q8(dx.as<float>(), dq.as<BlockQ8>(), n, w.cols, nullptr);
  gpu::matmul(view(dw, w), dx.as<float>(), dq.as<BlockQ8>(), dy.as<float>(), n, w.rows, false, nullptr);
  return finish(y, dy, n * w.rows * 4);
}

Expected<void> rmsnorm(const float* x, const float* w, int n, int dim, float eps, float* out) {
  Buf dx(x, n * dim * 4), dw(w, dim * 4), dout(n * dim * 4);
  if (auto r = status({&dx, &dw, &dout}); !r) return r;
  gpu::rmsnorm(dx.as<float>(), dim, nullptr, dw.as<float>(), dout.as<float>(), n, dim, eps, nullptr);
  return finish(out, dout, n * dim * 4);
}

Expected<void> rope(float* x, const int* pos, int n, int n_heads, int head_dim, int rope_dim, float theta_base) {
  const size_t bytes = static_cast<size_t>(n) * n_heads * head_dim * 4;
  Buf dx(x, bytes), dpos(pos, n * 4);
  if (auto r = status({&dx, &dpos}); !r) return r;
  gpu::StepMeta m;
  m.tok_pos = dpos.as<int>();
  gpu::rope(dx.as<float>(), m, n, n_heads, head_dim, rope_dim,
            std::pow(theta_base, -2.0f / static_cast<float>(rope_dim)), nullptr);
  return finish(x, dx, bytes);
}

Expected<void> swiglu(float* g, const float* u, int64_t n) {
  Buf dg(g, n * 4), du(u, n * 4);
  if (auto r = status({&dg, &du}); !r) return r;
  gpu::swiglu(dg.as<float>(), du.as<float>(), n, nullptr);
  return finish(g, dg, n * 4);
}

Expected<void> embed(const Matrix& w, const int* tokens, int n, float* x) {
  Buf dw(w.data, w.rows * w.row_bytes), dt(tokens, n * 4), dx(n * w.cols * 4);
  if (auto r = status({&dw, &dt, &dx}); !r) return r;
  gpu::embed(view(dw, w), dt.as<int>(), dx.as<float>(), n, nullptr);
  return finish(x, dx, n * w.cols * 4);
}

Expected<void> attention(const StepLayout& step, const float* q, const float* k, const float* v,
                         std::vector<uint16_t>& k_cache, std::vector<uint16_t>& v_cache, int block_size, int n_head,
                         int n_head_kv, int head_dim, float* out) {
  const Meta meta(step);
  const int n = step.n_tokens;
  const int kv_dim = n_head_kv * head_dim, q_dim = n_head * head_dim;
  Buf dq(q, n * q_dim * 4), dk(k, n * kv_dim * 4), dv(v, n * kv_dim * 4), dkc(k_cache.data(), k_cache.size() * 2),
      dvc(v_cache.data(), v_cache.size() * 2), dout(n * q_dim * 4), dpos(meta.pos.data(), n * 4),
      dseq(meta.seq.data(), n * 4), dsbt(meta.seq_bt.data(), meta.seq_bt.size() * 4),
      dbt(meta.bt.data(), meta.bt.size() * 4);
  if (auto r = status({&dq, &dk, &dv, &dkc, &dvc, &dout, &dpos, &dseq, &dsbt, &dbt}); !r) return r;
  const gpu::StepMeta m{dpos.as<int>(), dseq.as<int>(), dsbt.as<int>(), dbt.as<int>(), block_size};
  gpu::kv_store(dk.as<float>(), dv.as<float>(), dkc.as<__half>(), dvc.as<__half>(), m, n, kv_dim, nullptr);
  gpu::attention(dq.as<float>(), dkc.as<__half>(), dvc.as<__half>(), dout.as<float>(), m, n, n_head, n_head_kv,
                 head_dim, 1.0f / std::sqrt(static_cast<float>(head_dim)), nullptr);
  if (auto r = finish(out, dout, n * q_dim * 4); !r) return r;
  if (auto r = finish(k_cache.data(), dkc, k_cache.size() * 2); !r) return r;
  return finish(v_cache.data(), dvc, v_cache.size() * 2);
}

}  // namespace troupe::gpu_check
