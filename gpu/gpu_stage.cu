// gpu_stage.cu: GpuStage on CUDA (see gpu_stage.hpp).
#include "gpu_stage.hpp"

#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <map>
#include <utility>

#include "device_memory.cuh"
#include "kernels.cuh"

namespace troupe {

namespace {

using gpu::DevMem;
using gpu::HostMem;

struct DevLayer {
  DevMem attn_norm, ffn_norm;  // (n_embd) floats
  DevMem wq, wk, wv, wo, w_gate, w_up, w_down;
  gpu::DevMatrix q, k, v, o, gate, up, down;  // views of the buffers above
};

class CudaStage final : public GpuStage {
 public:
  CudaStage(std::shared_ptr<const Model> model, const GpuStageSpec& spec) : model_(std::move(model)), spec_(spec) {}
  ~CudaStage() override {
    if (dev_.stream()) {
      cudaSetDevice(spec_.device);
      for (auto& [key, exec] : graphs_) cudaGraphExecDestroy(exec);
    }
  }

  Expected<void> init();
  Expected<void> run(const StepLayout& step, const TokenId* tokens, const float* x_in, float* x_out,
                     const std::vector<int>& logit_rows, float* logits) override {
    return run_device(step, 0, tokens, x_in, nullptr, x_out, false, nullptr, logit_rows, logits);
  }
  Expected<void> run_device(const StepLayout& step, uint64_t step_id, const TokenId* tokens, const float* x_in,
                            const DeviceActivations* x_dev, float* x_out, bool to_device,
                            DeviceActivations* x_dev_out, const std::vector<int>& logit_rows, float* logits) override;
  const GpuStageSpec& spec() const override { return spec_; }
  std::string device_name() const override { return dev_.name(); }
  size_t device_bytes() const override { return dev_.bytes(); }
  bool broken() const override { return dev_.broken(); }

 private:
  Expected<void> alloc(DevMem& m, size_t bytes) { return dev_.alloc(m, bytes); }
  Expected<void> alloc_host(HostMem& m, size_t bytes) { return dev_.alloc_host(m, bytes); }
  Expected<gpu::DevMatrix> upload_matrix(DevMem& m, const Matrix& w) { return dev_.upload_matrix(m, w); }
  Expected<void> upload_floats(DevMem& m, const std::vector<float>& v) {
    return dev_.upload(m, v.data(), v.size() * 4);
  }
  Expected<void> reserve_tables(size_t n_entries);
  Expected<void> reserve_logits(size_t n_rows);
  void forward(int n, int n_rows);  // the kernels of one step, on dev_.stream()
  Expected<void> check(cudaError_t e, const char* what) { return dev_.check(e, what); }

  std::shared_ptr<const Model> model_;
  GpuStageSpec spec_;
  gpu::Device dev_;  // name, stream, bytes held, sticky errors
  std::map<std::pair<int, int>, cudaGraphExec_t> graphs_;  // (n_tokens, n_logit_rows) -> captured step

  std::vector<DevLayer> layers_;
  DevMem embd_, out_norm_, out_;
  gpu::DevMatrix embd_m_, out_m_;
  DevMem kv_;                       // (layers, 2, n_blocks * block_size, kv_dim) halves
  // scratch: x (T, n_embd) residual; xn (T, max(n_embd, q_dim)); xq (T, max cols / 32); q (T, q_dim);
  // k, v (T, kv_dim); gate, up (T, n_ff); logits (rows, n_vocab)
  DevMem x_, xn_, xq_, q_, k_, v_, gate_, up_, logits_;
  DevMem out_slots_;  // (output_slots, T, n_embd) outputs kept on the device for the next GPU stage
  // metadata ints at fixed offsets of M = max_tokens: tokens [0, M), pos [M, 2M), seq [2M, 3M), seq_bt [3M, 4M),
  // logit rows [4M, 5M), block tables [5M, 5M + table capacity)
  DevMem meta_;
  HostMem meta_host_, x_host_, logits_host_;
  size_t table_cap_ = 0, logits_cap_ = 0;
};

Expected<void> CudaStage::reserve_tables(size_t n_entries) {
  if (n_entries <= table_cap_) return {};
  const size_t cap = std::max(n_entries, table_cap_ * 2);
  const size_t ints = 5 * static_cast<size_t>(spec_.max_tokens) + cap;
  dev_.release(meta_);
  if (auto r = alloc(meta_, ints * sizeof(int)); !r) return r;
  if (auto r = alloc_host(meta_host_, ints * sizeof(int)); !r) return r;
  table_cap_ = cap;
  for (auto& [key, exec] : graphs_) cudaGraphExecDestroy(exec);  // they hold the old addresses
  graphs_.clear();
  return {};
}

Expected<void> CudaStage::reserve_logits(size_t n_rows) {
  if (n_rows <= logits_cap_) return {};
  const size_t cap = std::min<size_t>(std::max(n_rows, logits_cap_ * 2), spec_.max_tokens);
  const size_t bytes = cap * model_->config().n_vocab * sizeof(float);
  dev_.release(logits_);
  if (auto r = alloc(logits_, bytes); !r) return r;
  if (auto r = alloc_host(logits_host_, bytes); !r) return r;
  logits_cap_ = cap;
  for (auto& [key, exec] : graphs_) cudaGraphExecDestroy(exec);
  graphs_.clear();
  return {};
}

Expected<void> CudaStage::init() {
  const ModelConfig& c = model_->config();
  if (c.head_dim % 32 != 0 || c.head_dim > gpu::kMaxHeadDim) {
    return Error{ErrorKind::invalid_model, "the CUDA attention needs a head size that is a multiple of 32 up to " +
                                               std::to_string(gpu::kMaxHeadDim) + " (this model's: " +
                                               std::to_string(c.head_dim) + ")"};
  }
  if (spec_.layer_begin < 0 || spec_.layer_end > c.n_layer || spec_.layer_begin >= spec_.layer_end ||
      spec_.max_tokens < 1 || spec_.n_blocks < 1 || spec_.block_size < 1) {
    return Error{ErrorKind::invalid_argument, "impossible GPU stage (layers, tokens or KV blocks)"};
  }
  if (auto r = dev_.open(spec_.device); !r) return r;

  // weights, once
  layers_ = std::vector<DevLayer>(spec_.layer_end - spec_.layer_begin);
  for (int il = spec_.layer_begin; il < spec_.layer_end; ++il) {
    const LayerWeights& L = model_->layer(il);
    DevLayer& d = layers_[il - spec_.layer_begin];
    if (auto r = upload_floats(d.attn_norm, L.attn_norm); !r) return r;
    if (auto r = upload_floats(d.ffn_norm, L.ffn_norm); !r) return r;
    const std::pair<DevMem*, const Matrix*> mats[] = {{&d.wq, &L.wq}, {&d.wk, &L.wk}, {&d.wv, &L.wv},
                                                      {&d.wo, &L.wo}, {&d.w_gate, &L.w_gate}, {&d.w_up, &L.w_up},
                                                      {&d.w_down, &L.w_down}};
    gpu::DevMatrix* views[] = {&d.q, &d.k, &d.v, &d.o, &d.gate, &d.up, &d.down};
    for (size_t i = 0; i < 7; ++i) {
      auto m = upload_matrix(*mats[i].first, *mats[i].second);
      if (!m) return m.error();
      *views[i] = *m;
    }
  }
  if (spec_.first) {
    auto m = upload_matrix(embd_, model_->token_embd());
    if (!m) return m.error();
    embd_m_ = *m;
  }
  if (spec_.last) {
    if (auto r = upload_floats(out_norm_, model_->output_norm()); !r) return r;
    if (spec_.first && model_->output().data == model_->token_embd().data) {
      out_m_ = embd_m_;  // tied embeddings: one copy
    } else {
      auto m = upload_matrix(out_, model_->output());
      if (!m) return m.error();
      out_m_ = *m;
    }
  }

  // the KV cache and scratch, at their largest
  const size_t T = spec_.max_tokens;
  const size_t rows = static_cast<size_t>(spec_.n_blocks) * spec_.block_size;
  if (auto r = alloc(kv_, layers_.size() * 2 * rows * c.kv_dim() * sizeof(__half)); !r) return r;
  const size_t max_cols = std::max({c.n_embd, c.n_ff, c.q_dim()});
  const std::pair<DevMem*, size_t> scratch[] = {{&x_, T * c.n_embd * 4},
                                                {&xn_, T * std::max(c.n_embd, c.q_dim()) * 4},
                                                {&xq_, T * (max_cols / kQBlock) * sizeof(BlockQ8)},
                                                {&q_, T * c.q_dim() * 4},
                                                {&k_, T * c.kv_dim() * 4},
                                                {&v_, T * c.kv_dim() * 4},
                                                {&gate_, T * c.n_ff * 4},
                                                {&up_, T * c.n_ff * 4}};
  for (const auto& [mem, bytes] : scratch) {
    if (auto r = alloc(*mem, bytes); !r) return r;
  }
  if (auto r = alloc_host(x_host_, T * c.n_embd * 4); !r) return r;
  if (spec_.output_slots > 0 && !spec_.last) {
    if (auto r = alloc(out_slots_, static_cast<size_t>(spec_.output_slots) * T * c.n_embd * 4); !r) return r;
  }
  if (auto r = reserve_tables(4 * static_cast<size_t>(spec_.n_blocks) + T); !r) return r;
  if (spec_.last) {
    if (auto r = reserve_logits(std::min<size_t>(T, 64)); !r) return r;
  }
  return {};
}

// One step's kernels: the embedding or the residual from x_, each layer, then the logits of the listed rows.
void CudaStage::forward(int n, int n_rows) {
  const ModelConfig& c = model_->config();
  const int M = spec_.max_tokens;
  int* meta = meta_.as<int>();
  gpu::StepMeta m{meta + M, meta + 2 * M, meta + 3 * M, meta + 5 * M, spec_.block_size};
  const float theta_scale = std::pow(c.rope_theta, -2.0f / static_cast<float>(c.rope_dim));
  const float scale = 1.0f / std::sqrt(static_cast<float>(c.head_dim));
  const size_t kv_rows = static_cast<size_t>(spec_.n_blocks) * spec_.block_size * c.kv_dim();
  float* x = x_.as<float>();
  float* xn = xn_.as<float>();
  BlockQ8* xq = xq_.as<BlockQ8>();
  cudaStream_t s = dev_.stream();

  if (spec_.first) gpu::embed(embd_m_, meta, x, n, s);
  for (size_t i = 0; i < layers_.size(); ++i) {
    const DevLayer& L = layers_[i];
    __half* kc = kv_.as<__half>() + (2 * i) * kv_rows;
    __half* vc = kc + kv_rows;
    // attention norm, Q, K, V from one quantised input
    gpu::rmsnorm(x, c.n_embd, nullptr, L.attn_norm.as<float>(), xn, n, c.n_embd, c.rms_eps, s);
    if (L.q.quantized() || L.k.quantized() || L.v.quantized()) gpu::quantize_q8(xn, xq, n, c.n_embd, s);
    gpu::matmul(L.q, xn, xq, q_.as<float>(), n, c.q_dim(), false, s);
    gpu::matmul(L.k, xn, xq, k_.as<float>(), n, c.kv_dim(), false, s);
    gpu::matmul(L.v, xn, xq, v_.as<float>(), n, c.kv_dim(), false, s);
    // RoPE, keys and values into the cache, attention, output projection added to the residual
    gpu::rope(q_.as<float>(), m, n, c.n_head, c.head_dim, c.rope_dim, theta_scale, s);
    gpu::rope(k_.as<float>(), m, n, c.n_head_kv, c.head_dim, c.rope_dim, theta_scale, s);
    gpu::kv_store(k_.as<float>(), v_.as<float>(), kc, vc, m, n, c.kv_dim(), s);
    gpu::attention(q_.as<float>(), kc, vc, xn, m, n, c.n_head, c.n_head_kv, c.head_dim, scale, s);
    if (L.o.quantized()) gpu::quantize_q8(xn, xq, n, c.q_dim(), s);
    gpu::matmul(L.o, xn, xq, x, n, c.n_embd, true, s);
    // FFN norm, gate and up, SwiGLU, down projection added to the residual
    gpu::rmsnorm(x, c.n_embd, nullptr, L.ffn_norm.as<float>(), xn, n, c.n_embd, c.rms_eps, s);
    if (L.gate.quantized() || L.up.quantized()) gpu::quantize_q8(xn, xq, n, c.n_embd, s);
    gpu::matmul(L.gate, xn, xq, gate_.as<float>(), n, c.n_ff, false, s);
    gpu::matmul(L.up, xn, xq, up_.as<float>(), n, c.n_ff, false, s);
    gpu::swiglu(gate_.as<float>(), up_.as<float>(), static_cast<int64_t>(n) * c.n_ff, s);
    if (L.down.quantized()) gpu::quantize_q8(gate_.as<float>(), xq, n, c.n_ff, s);
    gpu::matmul(L.down, gate_.as<float>(), xq, x, n, c.n_embd, true, s);
  }
  if (spec_.last && n_rows > 0) {
    gpu::rmsnorm(x, c.n_embd, meta + 4 * M, out_norm_.as<float>(), xn, n_rows, c.n_embd, c.rms_eps, s);
    if (out_m_.quantized()) gpu::quantize_q8(xn, xq, n_rows, c.n_embd, s);
    gpu::matmul(out_m_, xn, xq, logits_.as<float>(), n_rows, c.n_vocab, false, s);
  }
}

Expected<void> CudaStage::run_device(const StepLayout& step, uint64_t step_id, const TokenId* tokens,
                                     const float* x_in, const DeviceActivations* x_dev, float* x_out, bool to_device,
                                     DeviceActivations* x_dev_out, const std::vector<int>& logit_rows, float* logits) {
  if (dev_.broken())
    return Error{ErrorKind::unavailable, "cuda: " + dev_.name() + " is unusable after an earlier error"};
  const ModelConfig& c = model_->config();
  const int n = step.n_tokens;
  const int M = spec_.max_tokens;
  const int n_rows = spec_.last ? static_cast<int>(logit_rows.size()) : 0;
  to_device = to_device && !spec_.last && out_slots_.p && x_dev_out;
  if ((!spec_.first && !x_in && !x_dev) || (!spec_.last && !to_device && !x_out) || (n_rows > 0 && !logits)) {
    return Error{ErrorKind::invalid_argument, "GPU step: missing activations or logits buffer"};
  }
  if (n < 1 || n > M || step.seqs.size() > static_cast<size_t>(n)) {
    return Error{ErrorKind::invalid_argument, "GPU step of " + std::to_string(n) + " tokens (at most " +
                                                  std::to_string(M) + ")"};
  }
  // the metadata, checked: every position's page exists and every id is in range
  size_t table_len = 0;
  for (const auto& sq : step.seqs) table_len += sq.block_table.size();
  if (auto r = reserve_tables(table_len); !r) return r;
  if (n_rows > 0) {
    if (auto r = reserve_logits(n_rows); !r) return r;
  }
  if (auto r = check(cudaSetDevice(spec_.device), "set device"); !r) return r;
  int* h = meta_host_.as<int>();
  auto tables = gpu::fill_step_meta(step, spec_.n_blocks, spec_.block_size, h + M, h + 2 * M, h + 3 * M, h + 5 * M);
  if (!tables) return tables.error();
  const size_t off = *tables;
  for (int t = 0; t < n; ++t) {
    const int id = spec_.first ? tokens[t] : 0;
    if (id < 0 || id >= c.n_vocab) return Error{ErrorKind::invalid_argument, "token id outside the vocabulary"};
    h[t] = id;
  }
  for (int i = 0; i < n_rows; ++i) {
    if (logit_rows[i] < 0 || logit_rows[i] >= n)
      return Error{ErrorKind::invalid_argument, "logit row outside the step"};
    h[4 * M + i] = logit_rows[i];
  }

  // upload, run (a captured graph for small steps), download
  cudaStream_t s = dev_.stream();
  const size_t x_bytes = static_cast<size_t>(n) * c.n_embd * sizeof(float);
  if (auto r = check(cudaMemcpyAsync(meta_.p, h, (5 * static_cast<size_t>(M) + off) * sizeof(int),
                                     cudaMemcpyHostToDevice, s), "metadata upload");
      !r) {
    return r;
  }
  if (!spec_.first && x_dev) {
    if (x_dev->bytes != x_bytes)
      return Error{ErrorKind::invalid_argument, "GPU step: device activations of the wrong size"};
    if (auto r = check(cudaMemcpyPeerAsync(x_.p, spec_.device, reinterpret_cast<const void*>(x_dev->address),
                                           x_dev->device, x_bytes, s), "peer copy");
        !r) {
      return r;
    }
  } else if (!spec_.first) {
    std::memcpy(x_host_.p, x_in, x_bytes);
    if (auto r = check(cudaMemcpyAsync(x_.p, x_host_.p, x_bytes, cudaMemcpyHostToDevice, s), "upload"); !r) {
      return r;
    }
  }
  if (spec_.use_graphs && n <= 64) {
    auto it = graphs_.find({n, n_rows});
    if (it == graphs_.end()) {
      cudaGraph_t graph = nullptr;
      if (auto r = check(cudaStreamBeginCapture(s, cudaStreamCaptureModeThreadLocal), "capture"); !r) return r;
      forward(n, n_rows);
      if (auto r = check(cudaStreamEndCapture(s, &graph), "capture"); !r) return r;
      cudaGraphExec_t exec = nullptr;
      const cudaError_t e = cudaGraphInstantiate(&exec, graph, 0);
      cudaGraphDestroy(graph);
      if (auto r = check(e, "graph instantiate"); !r) return r;
      it = graphs_.emplace(std::make_pair(n, n_rows), exec).first;
    }
    if (auto r = check(cudaGraphLaunch(it->second, s), "graph launch"); !r) return r;
  } else {
    forward(n, n_rows);
    if (auto r = check(cudaGetLastError(), "kernel launch"); !r) return r;
  }
  if (spec_.last) {
    if (n_rows > 0) {
      const size_t bytes = static_cast<size_t>(n_rows) * c.n_vocab * sizeof(float);
      if (auto r = check(cudaMemcpyAsync(logits_host_.p, logits_.p, bytes, cudaMemcpyDeviceToHost, s), "logits");
          !r) {
        return r;
      }
      if (auto r = check(cudaStreamSynchronize(s), "step"); !r) return r;
      std::memcpy(logits, logits_host_.p, bytes);
    } else if (auto r = check(cudaStreamSynchronize(s), "step"); !r) {
      return r;
    }
  } else if (to_device) {
    char* slot = out_slots_.as<char>() + (step_id % spec_.output_slots) * (static_cast<size_t>(M) * c.n_embd * 4);
    if (auto r = check(cudaMemcpyAsync(slot, x_.p, x_bytes, cudaMemcpyDeviceToDevice, s), "output"); !r) return r;
    if (auto r = check(cudaStreamSynchronize(s), "step"); !r) return r;
    *x_dev_out = DeviceActivations{spec_.device, reinterpret_cast<uint64_t>(slot), x_bytes};
  } else {
    if (auto r = check(cudaMemcpyAsync(x_host_.p, x_.p, x_bytes, cudaMemcpyDeviceToHost, s), "download"); !r) {
      return r;
    }
    if (auto r = check(cudaStreamSynchronize(s), "step"); !r) return r;
    std::memcpy(x_out, x_host_.p, x_bytes);
  }
  return {};
}

}  // namespace

int cuda_device_count(std::string* why) {
  int n = 0;
  const cudaError_t e = cudaGetDeviceCount(&n);
  if (e != cudaSuccess) {
    if (why) *why = std::string("no usable CUDA device or driver (") + cudaGetErrorString(e) + ")";
    return 0;
  }
  if (n == 0 && why) *why = "no CUDA device";
  return n;
}

bool cuda_built() { return true; }

Expected<std::unique_ptr<GpuStage>> GpuStage::create(std::shared_ptr<const Model> model, const GpuStageSpec& spec) {
  auto stage = std::make_unique<CudaStage>(std::move(model), spec);
  if (auto r = stage->init(); !r) return r.error();
  return std::unique_ptr<GpuStage>(std::move(stage));
}

}  // namespace troupe
