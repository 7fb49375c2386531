// shard.cpp: head-group and FFN slices of layers, paged attention, and the stage's own steps.
#include "shard.hpp"

#include <algorithm>
#include <cmath>
#include <string>

namespace troupe {

Expected<std::vector<std::pair<int, int>>> split_range(int n, int parts, int align) {
  if (parts < 1 || align < 1) return Error{ErrorKind::invalid_argument, "split into fewer than one part"};
  const int units = n / align;  // whole aligned units; the remainder joins the last range
  if (units < parts) {
    return Error{ErrorKind::invalid_argument, "cannot split " + std::to_string(n) + " into " + std::to_string(parts) +
                                                  " parts of whole " + std::to_string(align) + "-element blocks"};
  }
  std::vector<std::pair<int, int>> out;
  int begin = 0;
  for (int p = 0; p < parts; ++p) {
    const int u = units / parts + (p < units % parts ? 1 : 0);  // earlier parts take the extra units
    const int end = p + 1 == parts ? n : begin + u * align;
    out.emplace_back(begin, end);
    begin = end;
  }
  return out;
}

Matrix row_slice(const Matrix& m, int64_t r0, int64_t r1) {
  Matrix s = m;
  s.data = m.row(r0);
  s.rows = r1 - r0;
  return s;
}

Expected<Matrix> column_slice(const Matrix& m, int64_t c0, int64_t c1) {
  const GgmlTypeTraits* traits = ggml_type_traits(static_cast<uint32_t>(m.type));
  if (!traits || c0 % traits->block_elems || (c1 % traits->block_elems && c1 != m.cols)) {
    return Error{ErrorKind::invalid_argument, "columns " + std::to_string(c0) + ".." + std::to_string(c1) +
                                                  " do not fall on block boundaries of " + ggml_type_name(static_cast<uint32_t>(m.type))};
  }
  Matrix s = m;
  s.data = m.data + c0 / traits->block_elems * traits->block_bytes;
  s.cols = c1 - c0;
  return s;
}

Expected<std::vector<ShardSpec>> split_stage(const ModelConfig& c, int layer_begin, int layer_end, int t) {
  if (t < 1 || t > c.n_head_kv) {
    return Error{ErrorKind::invalid_argument, "tensor-parallel degree " + std::to_string(t) + " must be 1 .. " +
                                                  std::to_string(c.n_head_kv) + " (the model's KV heads)"};
  }
  auto heads = split_range(c.n_head_kv, t, 1);
  if (!heads) return heads.error();
  auto ff = split_range(c.n_ff, t, 2 * kQBlock);  // 64-column chunks: see kernels.cpp
  if (!ff) return ff.error();
  std::vector<ShardSpec> out;
  for (int g = 0; g < t; ++g) {
    out.push_back({layer_begin, layer_end, (*heads)[g].first, (*heads)[g].second, (*ff)[g].first, (*ff)[g].second});
  }
  return out;
}

Expected<void> check_shard(const Model& model, const ShardSpec& spec) {
  const ModelConfig& c = model.config();
  const int group = c.n_head / c.n_head_kv;
  const int q0 = spec.kv_head_begin * group * c.head_dim, q1 = spec.kv_head_end * group * c.head_dim;
  for (int il = spec.layer_begin; il < spec.layer_end; ++il) {
    auto wo = column_slice(model.layer(il).wo, q0, q1);
    if (!wo) return Error{ErrorKind::invalid_argument, "layer " + std::to_string(il) + " attention output: " + wo.error().message};
    auto wd = column_slice(model.layer(il).w_down, spec.ff_begin, spec.ff_end);
    if (!wd) return Error{ErrorKind::invalid_argument, "layer " + std::to_string(il) + " FFN down: " + wd.error().message};
  }
  return {};
}

// ---- the paged pool ----

// ---- one shard ----

namespace {

const BlockQ8* prepare_input(const Kernels& k, const Matrix& w, const float* x, int n, BlockQ8* xq) {
  if (!w.quantized() || !k.quantize_q8) return nullptr;
  for (int t = 0; t < n; ++t) k.quantize_q8(x + static_cast<size_t>(t) * w.cols, xq + t * (w.cols / kQBlock), w.cols);
  return xq;
}

// Causal attention of one sequence's tokens over the pool, for the shard's query heads [h0, h1); the same
// arithmetic, in the same order, as Forward's attend(), with positions looked up through the block table.
template <class T>
void attend_paged(const ModelConfig& c, const PagedKvPool& pool, int il_local, const StepLayout::Seq& s, int n_head,
                  int n_head_kv, int h0, int h1, const float* q_all, float* out_all) {
  const int group = c.n_head / c.n_head_kv;
  const int q_dim = n_head * c.head_dim;
  const int kv_dim = n_head_kv * c.head_dim;
  const int bs = pool.block_size();
  const float scale = 1.0f / std::sqrt(static_cast<float>(c.head_dim));
  thread_local std::vector<float> scores;  // one head's scores; grows once to the longest context seen
  if (scores.size() < static_cast<size_t>(s.pos0 + s.n)) scores.resize(s.pos0 + s.n);
  for (int t = 0; t < s.n; ++t) {
    const int n_past = s.pos0 + t + 1;
    for (int h = h0; h < h1; ++h) {
      const float* q = q_all + static_cast<size_t>(s.first + t) * q_dim + h * c.head_dim;
      const int kv_off = (h / group) * c.head_dim;
      float* out = out_all + static_cast<size_t>(s.first + t) * q_dim + h * c.head_dim;
      // block by block: each score stands alone, and the values accumulate in order of position either way
      for (int j0 = 0; j0 < n_past; j0 += bs) {
        const T* kb = pool.k<T>(il_local, s.block_table[j0 / bs]) + kv_off;
        attn_scores(q, kb, kv_dim, std::min(bs, n_past - j0), c.head_dim, scale, scores.data() + j0);
      }
      softmax(scores.data(), n_past);
      std::fill(out, out + c.head_dim, 0.0f);
      for (int j0 = 0; j0 < n_past; j0 += bs) {
        const T* vb = pool.v<T>(il_local, s.block_table[j0 / bs]) + kv_off;
        attn_accumulate(scores.data() + j0, vb, kv_dim, std::min(bs, n_past - j0), c.head_dim, out);
      }
    }
  }
}

}  // namespace

ShardWorker::ShardWorker(std::shared_ptr<const Model> model, ShardSpec spec, Precision precision, int max_tokens,
                         int n_blocks, int block_size)
    : model_(std::move(model)),
      spec_(spec),
      kernels_(precision == Precision::exact ? exact_kernels() : kernels()),
      max_tokens_(max_tokens),
      pool_(spec.layer_end - spec.layer_begin, n_blocks, block_size,
            (spec.kv_head_end - spec.kv_head_begin) * model_->config().head_dim,
            precision == Precision::exact ? KvType::f32 : KvType::f16) {
  const ModelConfig& c = model_->config();
  const int group = c.n_head / c.n_head_kv;
  const int hd = c.head_dim;
  n_head_kv_ = spec.kv_head_end - spec.kv_head_begin;
  n_head_ = n_head_kv_ * group;
  const int q0 = spec.kv_head_begin * group * hd, q1 = spec.kv_head_end * group * hd;
  const int k0 = spec.kv_head_begin * hd, k1 = spec.kv_head_end * hd;
  for (int il = spec.layer_begin; il < spec.layer_end; ++il) {
    const LayerWeights& L = model_->layer(il);
    Layer s;
    s.wq = row_slice(L.wq, q0, q1);
    s.wk = row_slice(L.wk, k0, k1);
    s.wv = row_slice(L.wv, k0, k1);
    s.w_gate = row_slice(L.w_gate, spec.ff_begin, spec.ff_end);
    s.w_up = row_slice(L.w_up, spec.ff_begin, spec.ff_end);
    // Column slices need block boundaries; a plan that breaks them is refused by the engine before it gets here
    // (check_plan), so a failure here is a bug.
    auto wo = column_slice(L.wo, q0, q1);
    auto wd = column_slice(L.w_down, spec.ff_begin, spec.ff_end);
    s.wo = wo ? *wo : Matrix{};
    s.w_down = wd ? *wd : Matrix{};
    layers_.push_back(s);
  }
  const size_t T = static_cast<size_t>(max_tokens);
  const int n_ff = spec.ff_end - spec.ff_begin;
  xq_.resize(T * (std::max({c.n_embd, n_ff, n_head_ * hd}) / kQBlock + 1));
  q_.resize(T * n_head_ * hd);
  k_.resize(T * n_head_kv_ * hd);
  v_.resize(T * n_head_kv_ * hd);
  attn_.resize(T * n_head_ * hd);
  gate_.resize(T * n_ff);
  up_.resize(T * n_ff);
}

Expected<void> ShardWorker::attention(int il, const StepLayout& step, const float* xn, double* out) {
  const ModelConfig& c = model_->config();
  const int n = step.n_tokens;
  if (n < 1 || n > max_tokens_ || il < spec_.layer_begin || il >= spec_.layer_end) {
    return Error{ErrorKind::internal, "shard asked for layer " + std::to_string(il) + " with " + std::to_string(n) +
                                          " tokens"};
  }
  const Layer& L = layers_[il - spec_.layer_begin];
  const int il_local = il - spec_.layer_begin;
  const int q_dim = n_head_ * c.head_dim, kv_dim = n_head_kv_ * c.head_dim;
  const int bs = pool_.block_size();
  int max_past = 0;
  for (const auto& s : step.seqs) {
    if (s.first < 0 || s.n < 1 || s.first + s.n > n || s.pos0 < 0 ||
        static_cast<int64_t>(s.block_table.size()) * bs < s.pos0 + s.n) {
      return Error{ErrorKind::internal, "a step's block table does not cover its positions"};
    }
    for (int b : s.block_table) {
      if (b < 0 || b >= pool_.n_blocks()) return Error{ErrorKind::internal, "block id out of the pool"};
    }
    max_past = std::max(max_past, s.pos0 + s.n);
  }

  const BlockQ8* xq = prepare_input(kernels_, L.wq, xn, n, xq_.data());
  team_matmul(team_, L.wq, xn, xq, q_.data(), n, kernels_);
  team_matmul(team_, L.wk, xn, xq, k_.data(), n, kernels_);
  team_matmul(team_, L.wv, xn, xq, v_.data(), n, kernels_);
  for (const auto& s : step.seqs) {
    for (int t = s.first; t < s.first + s.n; ++t) {
      const int pos = s.pos0 + t - s.first;
      rope(&q_[static_cast<size_t>(t) * q_dim], n_head_, c.head_dim, c.rope_dim, pos, c.rope_theta);
      rope(&k_[static_cast<size_t>(t) * kv_dim], n_head_kv_, c.head_dim, c.rope_dim, pos, c.rope_theta);
      pool_.store(il_local, s.block_table[pos / bs], pos % bs, &k_[static_cast<size_t>(t) * kv_dim],
                  &v_[static_cast<size_t>(t) * kv_dim]);
    }
  }
  parallel(team_, n_head_, [&](int64_t h0, int64_t h1) {
    for (const auto& s : step.seqs) {
      if (pool_.type() == KvType::f16) {
        attend_paged<uint16_t>(c, pool_, il_local, s, n_head_, n_head_kv_, h0, h1, q_.data(), attn_.data());
      } else {
        attend_paged<float>(c, pool_, il_local, s, n_head_, n_head_kv_, h0, h1, q_.data(), attn_.data());
      }
    }
  });
  xq = prepare_input(kernels_, L.wo, attn_.data(), n, xq_.data());
  team_matmul_partial(team_, L.wo, attn_.data(), xq, out, n, kernels_);
  return {};
}

Expected<void> ShardWorker::ffn(int il, int n, const float* xn, double* out) {
  if (n < 1 || n > max_tokens_ || il < spec_.layer_begin || il >= spec_.layer_end) {
    return Error{ErrorKind::internal, "shard asked for the FFN of layer " + std::to_string(il)};
  }
  const Layer& L = layers_[il - spec_.layer_begin];
  const int n_ff = spec_.ff_end - spec_.ff_begin;
  const BlockQ8* xq = prepare_input(kernels_, L.w_gate, xn, n, xq_.data());
  team_matmul(team_, L.w_gate, xn, xq, gate_.data(), n, kernels_);
  team_matmul(team_, L.w_up, xn, xq, up_.data(), n, kernels_);
  swiglu(gate_.data(), gate_.data(), up_.data(), static_cast<int64_t>(n) * n_ff);
  xq = prepare_input(kernels_, L.w_down, gate_.data(), n, xq_.data());
  team_matmul_partial(team_, L.w_down, gate_.data(), xq, out, n, kernels_);
  return {};
}

// ---- the stage ----

StageCompute::StageCompute(std::shared_ptr<const Model> model, Precision precision, int max_tokens)
    : model_(std::move(model)), kernels_(precision == Precision::exact ? exact_kernels() : kernels()) {
  const ModelConfig& c = model_->config();
  xn_.resize(static_cast<size_t>(max_tokens) * c.n_embd);
  xq_.resize(static_cast<size_t>(max_tokens) * (c.n_embd / kQBlock + 1));
}

void StageCompute::embed(const TokenId* tokens, int n, float* x) const {
  const int d = model_->config().n_embd;
  for (int t = 0; t < n; ++t) dequantize_row(model_->token_embd(), tokens[t], x + static_cast<size_t>(t) * d);
}

void StageCompute::norm(const std::vector<float>& weight, const float* x, int n, float* out) const {
  const ModelConfig& c = model_->config();
  for (int t = 0; t < n; ++t) {
    rmsnorm(out + static_cast<size_t>(t) * c.n_embd, x + static_cast<size_t>(t) * c.n_embd, weight.data(), c.n_embd,
            c.rms_eps);
  }
}

void StageCompute::add_partials(float* x, int n, const std::vector<const double*>& partials) const {
  const size_t total = static_cast<size_t>(n) * model_->config().n_embd;
  for (size_t j = 0; j < total; ++j) {
    double sum = 0;
    for (const double* p : partials) sum += p[j];
    x[j] += static_cast<float>(sum);
  }
}

void StageCompute::logits(const float* x, const std::vector<int>& rows, float* out) {
  const ModelConfig& c = model_->config();
  const int n = static_cast<int>(rows.size());
  for (int r = 0; r < n; ++r) {
    rmsnorm(&xn_[static_cast<size_t>(r) * c.n_embd], x + static_cast<size_t>(rows[r]) * c.n_embd,
            model_->output_norm().data(), c.n_embd, c.rms_eps);
  }
  const BlockQ8* xq = prepare_input(kernels_, model_->output(), xn_.data(), n, xq_.data());
  team_matmul(team_, model_->output(), xn_.data(), xq, out, n, kernels_);
}

}  // namespace troupe
