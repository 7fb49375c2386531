// gpu_shard.cu: GpuShard on CUDA (see gpu_shard.hpp).
#include "gpu_shard.hpp"

#include <cmath>
#include <cstring>

#include "device_memory.cuh"
#include "gpu_stage.hpp"
#include "kernels.cuh"

namespace troupe {

namespace {

using gpu::DevMem;
using gpu::HostMem;

struct ShardLayer {
  DevMem wq, wk, wv, wo, w_gate, w_up, w_down;
  gpu::DevMatrix q, k, v, o, gate, up, down;  // the shard's rows of q, k, v, gate, up; its columns of o and down
};

class CudaShard final : public GpuShard {
 public:
  CudaShard(std::shared_ptr<const Model> model, const GpuShardSpec& spec) : model_(std::move(model)), spec_(spec) {}
  Expected<void> init();
  Expected<void> attention(int il, const StepLayout& step, const float* xn, double* out) override;
  Expected<void> ffn(int il, int n, const float* xn, double* out) override;
  std::string device_name() const override { return dev_.name(); }
  bool broken() const override { return dev_.broken(); }

 private:
  Expected<const ShardLayer*> layer(int il, int n);
  Expected<void> upload_input(const float* xn, int n);
  Expected<void> download(double* out, int n);

  std::shared_ptr<const Model> model_;
  GpuShardSpec spec_;
  gpu::Device dev_;
  int n_head_ = 0, n_head_kv_ = 0, n_ff_ = 0;  // this shard's query heads, KV heads, FFN rows
  std::vector<ShardLayer> layers_;
  DevMem kv_;  // (layers, 2, n_blocks * block_size, shard kv_dim) halves
  // scratch: xn (T, n_embd); xq (T, max cols / 32); q (T, shard q_dim); k, v (T, shard kv_dim); att (T, shard q_dim);
  // gate, up (T, shard n_ff); out (T, n_embd); meta: pos, seq [T each], seq_bt [T], tables
  DevMem xn_, xq_, q_, k_, v_, att_, gate_, up_, out_, meta_;
  HostMem io_host_, meta_host_;
  size_t table_cap_ = 0;
};

Expected<void> CudaShard::init() {
  const ModelConfig& c = model_->config();
  const ShardSpec& sh = spec_.shard;
  if (c.head_dim % 32 != 0 || c.head_dim > gpu::kMaxHeadDim) {
    return Error{ErrorKind::invalid_model, "the CUDA attention needs a head size that is a multiple of 32 up to 256"};
  }
  if (auto r = dev_.open(spec_.device); !r) return r;
  const int group = c.n_head / c.n_head_kv;
  n_head_kv_ = sh.kv_head_end - sh.kv_head_begin;
  n_head_ = n_head_kv_ * group;
  n_ff_ = sh.ff_end - sh.ff_begin;
  const int64_t q0 = static_cast<int64_t>(sh.kv_head_begin) * group * c.head_dim, q1 = q0 + n_head_ * c.head_dim;
  const int64_t kv0 = static_cast<int64_t>(sh.kv_head_begin) * c.head_dim, kv1 = kv0 + n_head_kv_ * c.head_dim;
  layers_ = std::vector<ShardLayer>(sh.layer_end - sh.layer_begin);
  for (int il = sh.layer_begin; il < sh.layer_end; ++il) {
    const LayerWeights& L = model_->layer(il);
    ShardLayer& d = layers_[il - sh.layer_begin];
    auto wo = column_slice(L.wo, q0, q1);
    if (!wo) return wo.error();
    auto down = column_slice(L.w_down, sh.ff_begin, sh.ff_end);
    if (!down) return down.error();
    const std::pair<DevMem*, Matrix> mats[] = {{&d.wq, row_slice(L.wq, q0, q1)},   {&d.wk, row_slice(L.wk, kv0, kv1)},
                                               {&d.wv, row_slice(L.wv, kv0, kv1)}, {&d.wo, *wo},
                                               {&d.w_gate, row_slice(L.w_gate, sh.ff_begin, sh.ff_end)},
                                               {&d.w_up, row_slice(L.w_up, sh.ff_begin, sh.ff_end)},
                                               {&d.w_down, *down}};
    gpu::DevMatrix* views[] = {&d.q, &d.k, &d.v, &d.o, &d.gate, &d.up, &d.down};
    for (size_t i = 0; i < 7; ++i) {
      auto m = dev_.upload_matrix(*mats[i].first, mats[i].second);
      if (!m) return m.error();
      *views[i] = *m;
    }
  }
  const size_t T = spec_.max_tokens;
  const size_t rows = static_cast<size_t>(spec_.n_blocks) * spec_.block_size;
  const size_t kv_dim = static_cast<size_t>(n_head_kv_) * c.head_dim, q_dim = static_cast<size_t>(n_head_) * c.head_dim;
  if (auto r = dev_.alloc(kv_, layers_.size() * 2 * rows * kv_dim * 2); !r) return r;
  const size_t max_cols = std::max<size_t>({static_cast<size_t>(c.n_embd), q_dim, static_cast<size_t>(n_ff_)});
  const std::pair<DevMem*, size_t> scratch[] = {
      {&xn_, T * c.n_embd * 4}, {&xq_, T * (max_cols / kQBlock + 1) * sizeof(BlockQ8)}, {&q_, T * q_dim * 4},
      {&k_, T * kv_dim * 4},    {&v_, T * kv_dim * 4},  {&att_, T * q_dim * 4}, {&gate_, T * n_ff_ * 4},
      {&up_, T * n_ff_ * 4},    {&out_, T * c.n_embd * 4}};
  for (const auto& [mem, bytes] : scratch) {
    if (auto r = dev_.alloc(*mem, bytes); !r) return r;
  }
  return dev_.alloc_host(io_host_, T * c.n_embd * 4);
}

Expected<const ShardLayer*> CudaShard::layer(int il, int n) {
  if (dev_.broken())
    return Error{ErrorKind::unavailable, "cuda: " + dev_.name() + " is unusable after an earlier error"};
  if (il < spec_.shard.layer_begin || il >= spec_.shard.layer_end || n < 1 || n > spec_.max_tokens) {
    return Error{ErrorKind::invalid_argument, "GPU shard: layer or token count out of range"};
  }
  if (auto r = dev_.check(cudaSetDevice(spec_.device), "set device"); !r) return r.error();
  return &layers_[il - spec_.shard.layer_begin];
}

Expected<void> CudaShard::upload_input(const float* xn, int n) {
  const size_t bytes = static_cast<size_t>(n) * model_->config().n_embd * 4;
  std::memcpy(io_host_.p, xn, bytes);
  return dev_.check(cudaMemcpyAsync(xn_.p, io_host_.p, bytes, cudaMemcpyHostToDevice, dev_.stream()), "upload");
}

Expected<void> CudaShard::download(double* out, int n) {
  const size_t count = static_cast<size_t>(n) * model_->config().n_embd;
  if (auto r = dev_.check(cudaGetLastError(), "kernel launch"); !r) return r;
  if (auto r = dev_.check(cudaMemcpyAsync(io_host_.p, out_.p, count * 4, cudaMemcpyDeviceToHost, dev_.stream()),
                          "download");
      !r) {
    return r;
  }
  if (auto r = dev_.check(cudaStreamSynchronize(dev_.stream()), "step"); !r) return r;
  const float* f = io_host_.as<float>();
  for (size_t i = 0; i < count; ++i) out[i] = f[i];
  return {};
}

Expected<void> CudaShard::attention(int il, const StepLayout& step, const float* xn, double* out) {
  const int n = step.n_tokens;
  auto L = layer(il, n);
  if (!L) return L.error();
  const ModelConfig& c = model_->config();
  const int M = spec_.max_tokens;
  // the step's positions and pages (as GpuStage lays them out: pos [0, M), seq [M, 2M), seq_bt [2M, 3M), tables)
  size_t tables = 0;
  for (const auto& sq : step.seqs) tables += sq.block_table.size();
  if (step.seqs.size() > static_cast<size_t>(n)) return Error{ErrorKind::invalid_argument, "GPU shard: bad step"};
  if (tables > table_cap_) {
    table_cap_ = std::max(tables, 2 * table_cap_);
    dev_.release(meta_);
    if (auto r = dev_.alloc(meta_, (3 * static_cast<size_t>(M) + table_cap_) * 4); !r) return r;
    if (auto r = dev_.alloc_host(meta_host_, (3 * static_cast<size_t>(M) + table_cap_) * 4); !r) return r;
  }
  int* h = meta_host_.as<int>();
  auto filled = gpu::fill_step_meta(step, spec_.n_blocks, spec_.block_size, h, h + M, h + 2 * M, h + 3 * M);
  if (!filled) return filled.error();
  const size_t off = *filled;
  cudaStream_t s = dev_.stream();
  if (auto r =
          dev_.check(cudaMemcpyAsync(meta_.p, h, (3 * static_cast<size_t>(M) + off) * 4, cudaMemcpyHostToDevice, s),
                     "metadata upload");
      !r) {
    return r;
  }
  if (auto r = upload_input(xn, n); !r) return r;

  int* meta = meta_.as<int>();
  const gpu::StepMeta m{meta, meta + M, meta + 2 * M, meta + 3 * M, spec_.block_size};
  const int q_dim = n_head_ * c.head_dim, kv_dim = n_head_kv_ * c.head_dim;
  const size_t kv_rows = static_cast<size_t>(spec_.n_blocks) * spec_.block_size * kv_dim;
  __half* kc = kv_.as<__half>() + 2 * static_cast<size_t>(il - spec_.shard.layer_begin) * kv_rows;
  __half* vc = kc + kv_rows;
  const float theta_scale = std::pow(c.rope_theta, -2.0f / static_cast<float>(c.rope_dim));
  // Q, K, V of this shard's heads from one quantised input; RoPE; keys and values into the pages; attention; this
  // shard's columns of the output projection
  const ShardLayer& d = **L;
  BlockQ8* xq = xq_.as<BlockQ8>();
  if (d.q.quantized() || d.k.quantized() || d.v.quantized()) gpu::quantize_q8(xn_.as<float>(), xq, n, c.n_embd, s);
  gpu::matmul(d.q, xn_.as<float>(), xq, q_.as<float>(), n, q_dim, false, s);
  gpu::matmul(d.k, xn_.as<float>(), xq, k_.as<float>(), n, kv_dim, false, s);
  gpu::matmul(d.v, xn_.as<float>(), xq, v_.as<float>(), n, kv_dim, false, s);
  gpu::rope(q_.as<float>(), m, n, n_head_, c.head_dim, c.rope_dim, theta_scale, s);
  gpu::rope(k_.as<float>(), m, n, n_head_kv_, c.head_dim, c.rope_dim, theta_scale, s);
  gpu::kv_store(k_.as<float>(), v_.as<float>(), kc, vc, m, n, kv_dim, s);
  gpu::attention(q_.as<float>(), kc, vc, att_.as<float>(), m, n, n_head_, n_head_kv_, c.head_dim,
                 1.0f / std::sqrt(static_cast<float>(c.head_dim)), s);
  if (d.o.quantized()) gpu::quantize_q8(att_.as<float>(), xq, n, q_dim, s);
  gpu::matmul(d.o, att_.as<float>(), xq, out_.as<float>(), n, c.n_embd, false, s);
  return download(out, n);
}

Expected<void> CudaShard::ffn(int il, int n, const float* xn, double* out) {
  auto L = layer(il, n);
  if (!L) return L.error();
  const ModelConfig& c = model_->config();
  if (auto r = upload_input(xn, n); !r) return r;
  cudaStream_t s = dev_.stream();
  const ShardLayer& d = **L;
  BlockQ8* xq = xq_.as<BlockQ8>();
  // this shard's rows of gate and up, SwiGLU, its columns of down
  if (d.gate.quantized() || d.up.quantized()) gpu::quantize_q8(xn_.as<float>(), xq, n, c.n_embd, s);
  gpu::matmul(d.gate, xn_.as<float>(), xq, gate_.as<float>(), n, n_ff_, false, s);
  gpu::matmul(d.up, xn_.as<float>(), xq, up_.as<float>(), n, n_ff_, false, s);
  gpu::swiglu(gate_.as<float>(), up_.as<float>(), static_cast<int64_t>(n) * n_ff_, s);
  if (d.down.quantized()) gpu::quantize_q8(gate_.as<float>(), xq, n, n_ff_, s);
  gpu::matmul(d.down, gate_.as<float>(), xq, out_.as<float>(), n, c.n_embd, false, s);
  return download(out, n);
}

}  // namespace

Expected<std::unique_ptr<GpuShard>> GpuShard::create(std::shared_ptr<const Model> model, const GpuShardSpec& spec) {
  auto shard = std::make_unique<CudaShard>(std::move(model), spec);
  if (auto r = shard->init(); !r) return r.error();
  return std::unique_ptr<GpuShard>(std::move(shard));
}

}  // namespace troupe
