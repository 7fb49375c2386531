// model.cpp: loading a llama model from GGUF metadata and tensors, and the forward pass.
#include "model.hpp"

#include <algorithm>
#include <cmath>

#include "fp16.hpp"

namespace troupe {

namespace {

Error bad_model(const GgufFile& f, const std::string& message) {
  return Error{ErrorKind::invalid_model, f.path() + ": " + message};
}

// Reads an integer hyperparameter and checks its range.
bool read_dim(const GgufFile& f, const std::string& key, int lo, int hi, int& out, Error& err) {
  auto v = f.get_int(key);
  if (!v) { err = v.error(); return false; }
  if (*v < lo || *v > hi) {
    err = bad_model(f, "metadata '" + key + "' = " + std::to_string(*v) + " is out of range [" + std::to_string(lo) +
                           ", " + std::to_string(hi) + "]");
    return false;
  }
  out = static_cast<int>(*v);
  return true;
}

// A tensor that must exist with exactly the given shape (ggml order: dims[0] contiguous).
Expected<const GgufTensor*> need_tensor(const GgufFile& f, const std::string& name, std::vector<int64_t> dims) {
  const GgufTensor* t = f.tensor(name);
  if (!t) return bad_model(f, "missing tensor '" + name + "'");
  std::vector<int64_t> have = t->dims;
  while (have.size() > dims.size() && have.back() == 1) have.pop_back();
  if (have != dims) {
    auto show = [](const std::vector<int64_t>& d) {
      std::string s;
      for (size_t k = 0; k < d.size(); ++k) s += (k ? " x " : "") + std::to_string(d[k]);
      return s;
    };
    return bad_model(f, "tensor '" + name + "' has shape " + show(t->dims) + ", expected " + show(dims));
  }
  return t;
}

Expected<std::vector<float>> norm_weights(const GgufFile& f, const std::string& name, int n) {
  auto t = need_tensor(f, name, {n});
  if (!t) return t.error();
  std::vector<float> out(n);
  dequantize_row(Matrix::from(**t), 0, out.data());
  return out;
}

Expected<Matrix> matrix(const GgufFile& f, const std::string& name, int64_t cols, int64_t rows) {
  auto t = need_tensor(f, name, {cols, rows});
  if (!t) return t.error();
  return Matrix::from(**t);
}

}  // namespace

Expected<std::shared_ptr<const Model>> Model::load(std::shared_ptr<const GgufFile> file) {
  const GgufFile& f = *file;
  auto model = std::make_shared<Model>();
  model->file_ = file;
  ModelConfig& c = model->config_;

  auto arch = f.get_string("general.architecture");
  if (!arch) return arch.error();
  if (*arch != "llama") return bad_model(f, "architecture '" + *arch + "' is not supported (only llama)");
  c.arch = *arch;
  const std::string p = c.arch + ".";

  constexpr int kMaxDim = 1 << 20;
  Error err;
  if (!read_dim(f, p + "block_count", 1, 4096, c.n_layer, err) ||
      !read_dim(f, p + "embedding_length", 1, kMaxDim, c.n_embd, err) ||
      !read_dim(f, p + "feed_forward_length", 1, kMaxDim, c.n_ff, err) ||
      !read_dim(f, p + "attention.head_count", 1, 4096, c.n_head, err) ||
      !read_dim(f, p + "context_length", 1, 1 << 24, c.n_ctx_train, err)) {
    return err;
  }
  c.n_head_kv = c.n_head;
  if (f.find(p + "attention.head_count_kv") && !read_dim(f, p + "attention.head_count_kv", 1, c.n_head, c.n_head_kv, err)) {
    return err;
  }
  if (c.n_head % c.n_head_kv != 0) {
    return bad_model(f, "head_count " + std::to_string(c.n_head) + " is not a multiple of head_count_kv " +
                            std::to_string(c.n_head_kv));
  }
  if (c.n_embd % c.n_head != 0) return bad_model(f, "embedding_length is not a multiple of head_count");
  c.head_dim = c.n_embd / c.n_head;
  if (f.find(p + "attention.key_length") && !read_dim(f, p + "attention.key_length", 2, 4096, c.head_dim, err)) return err;
  c.rope_dim = c.head_dim;
  if (f.find(p + "rope.dimension_count") && !read_dim(f, p + "rope.dimension_count", 2, c.head_dim, c.rope_dim, err)) {
    return err;
  }
  if (c.rope_dim % 2 != 0 || c.head_dim % 2 != 0) return bad_model(f, "rope dimension and head size must be even");
  if (f.find(p + "rope.freq_base")) {
    auto v = f.get_float(p + "rope.freq_base");
    if (!v) return v.error();
    if (!(*v > 1.0 && *v < 1e12)) return bad_model(f, "rope.freq_base is out of range");
    c.rope_theta = static_cast<float>(*v);
  }
  if (f.find(p + "attention.layer_norm_rms_epsilon")) {
    auto v = f.get_float(p + "attention.layer_norm_rms_epsilon");
    if (!v) return v.error();
    if (!(*v > 0 && *v < 1)) return bad_model(f, "layer_norm_rms_epsilon is out of range");
    c.rms_eps = static_cast<float>(*v);
  }

  // The vocabulary size is the embedding's row count; the tokenizer checks itself against it.
  const GgufTensor* embd = f.tensor("token_embd.weight");
  if (!embd) return bad_model(f, "missing tensor 'token_embd.weight'");
  if (embd->dims.size() != 2 || embd->dims[1] > (1 << 24)) return bad_model(f, "token_embd.weight must be 2-D");
  c.n_vocab = static_cast<int>(embd->dims[1]);
  auto te = matrix(f, "token_embd.weight", c.n_embd, c.n_vocab);
  if (!te) return te.error();
  model->token_embd_ = *te;

  auto on = norm_weights(f, "output_norm.weight", c.n_embd);
  if (!on) return on.error();
  model->output_norm_ = std::move(*on);
  if (f.tensor("output.weight")) {
    auto out = matrix(f, "output.weight", c.n_embd, c.n_vocab);
    if (!out) return out.error();
    model->output_ = *out;
  } else {
    model->output_ = model->token_embd_;  // tied embeddings
  }

  for (int il = 0; il < c.n_layer; ++il) {
    const std::string b = "blk." + std::to_string(il) + ".";
    LayerWeights L;
    auto an = norm_weights(f, b + "attn_norm.weight", c.n_embd);
    auto fn = norm_weights(f, b + "ffn_norm.weight", c.n_embd);
    auto wq = matrix(f, b + "attn_q.weight", c.n_embd, c.q_dim());
    auto wk = matrix(f, b + "attn_k.weight", c.n_embd, c.kv_dim());
    auto wv = matrix(f, b + "attn_v.weight", c.n_embd, c.kv_dim());
    auto wo = matrix(f, b + "attn_output.weight", c.q_dim(), c.n_embd);
    auto wg = matrix(f, b + "ffn_gate.weight", c.n_embd, c.n_ff);
    auto wu = matrix(f, b + "ffn_up.weight", c.n_embd, c.n_ff);
    auto wd = matrix(f, b + "ffn_down.weight", c.n_ff, c.n_embd);
    for (const Error* e : {an ? nullptr : &an.error(), fn ? nullptr : &fn.error(), wq ? nullptr : &wq.error(),
                           wk ? nullptr : &wk.error(), wv ? nullptr : &wv.error(), wo ? nullptr : &wo.error(),
                           wg ? nullptr : &wg.error(), wu ? nullptr : &wu.error(), wd ? nullptr : &wd.error()}) {
      if (e) return *e;
    }
    L.attn_norm = std::move(*an);
    L.ffn_norm = std::move(*fn);
    L.wq = *wq; L.wk = *wk; L.wv = *wv; L.wo = *wo;
    L.w_gate = *wg; L.w_up = *wu; L.w_down = *wd;
    model->layers_.push_back(std::move(L));
  }
  // Quantised matrices need whole blocks along their input dimension (checked by the GGUF reader per row).
  return std::shared_ptr<const Model>(std::move(model));
}

// ---- the forward pass ----

Forward::Forward(std::shared_ptr<const Model> model, int max_tokens, Precision precision)
    : model_(std::move(model)),
      precision_(precision),
      kernels_(precision == Precision::exact ? exact_kernels() : kernels()),
      max_tokens_(std::max(1, max_tokens)) {
  const ModelConfig& c = model_->config();
  const size_t T = static_cast<size_t>(max_tokens_);
  x_.resize(T * c.n_embd);
  xb_.resize(T * std::max(c.n_embd, c.q_dim()));
  xq_.resize(T * (std::max({c.n_embd, c.n_ff, c.q_dim()}) / kQBlock + 1));
  q_.resize(T * c.q_dim());
  k_.resize(T * c.kv_dim());
  v_.resize(T * c.kv_dim());
  gate_.resize(T * c.n_ff);
  up_.resize(T * c.n_ff);
  logits_.resize(T * c.n_vocab);
}

KvCache Forward::make_cache(int n_ctx) const {
  const ModelConfig& c = model_->config();
  return KvCache(c.n_layer, n_ctx, c.kv_dim(), precision_ == Precision::exact ? KvType::f32 : KvType::f16);
}

// Quantises n rows of `cols` floats for a quantised matrix (no-op for float weights).
static const BlockQ8* prepare_input(const Kernels& k, const Matrix& w, const float* x, int n, BlockQ8* xq) {
  if (!w.quantized() || !k.quantize_q8) return nullptr;  // float weights, or the exact kernels
  for (int t = 0; t < n; ++t) k.quantize_q8(x + static_cast<size_t>(t) * w.cols, xq + t * (w.cols / kQBlock), w.cols);
  return xq;
}

namespace {

// Causal grouped-query attention of n new tokens at positions pos0.. over one layer's cache rows (T: stored type),
// for query heads [h0, h1).
//   q (n, n_head * head_dim) -> out (n, n_head * head_dim)
template <class T>
void attend(const ModelConfig& c, const float* q_all, const T* k_rows, const T* v_rows, int n, int pos0, int h0,
            int h1, float* out_all) {
  const int group = c.n_head / c.n_head_kv;
  const int kv_dim = c.kv_dim();
  const float scale = 1.0f / std::sqrt(static_cast<float>(c.head_dim));
  thread_local std::vector<float> scores;  // one head's scores; grows once to the longest context seen
  if (scores.size() < static_cast<size_t>(pos0 + n)) scores.resize(pos0 + n);
  for (int t = 0; t < n; ++t) {
    const int n_past = pos0 + t + 1;  // this token sees positions 0 .. pos0 + t
    for (int h = h0; h < h1; ++h) {
      const float* q = q_all + static_cast<size_t>(t) * c.q_dim() + h * c.head_dim;
      const int kv_off = (h / group) * c.head_dim;
      float* out = out_all + static_cast<size_t>(t) * c.q_dim() + h * c.head_dim;
      attn_scores(q, k_rows + kv_off, kv_dim, n_past, c.head_dim, scale, scores.data());
      softmax(scores.data(), n_past);
      std::fill(out, out + c.head_dim, 0.0f);
      attn_accumulate(scores.data(), v_rows + kv_off, kv_dim, n_past, c.head_dim, out);
    }
  }
}

}  // namespace

void Forward::attention(int il, int n, int pos0, const KvCache& cache) {
  const ModelConfig& c = model_->config();
  parallel(team_, c.n_head, [&](int64_t h0, int64_t h1) {
    if (cache.type() == KvType::f16) {
      attend(c, q_.data(), cache.k<uint16_t>(il), cache.v<uint16_t>(il), n, pos0, h0, h1, xb_.data());
    } else {
      attend(c, q_.data(), cache.k<float>(il), cache.v<float>(il), n, pos0, h0, h1, xb_.data());
    }
  });
}

void Forward::layer_forward(int il, int n, int pos0, KvCache& cache) {
  const ModelConfig& c = model_->config();
  const LayerWeights& L = model_->layer(il);
  const Kernels& k = kernels_;

  // attention norm, then Q, K, V from one quantised input
  for (int t = 0; t < n; ++t) rmsnorm(&xb_[t * c.n_embd], &x_[t * c.n_embd], L.attn_norm.data(), c.n_embd, c.rms_eps);
  const BlockQ8* xq = prepare_input(k, L.wq, xb_.data(), n, xq_.data());
  team_matmul(team_, L.wq, xb_.data(), xq, q_.data(), n, k);
  team_matmul(team_, L.wk, xb_.data(), xq, k_.data(), n, k);
  team_matmul(team_, L.wv, xb_.data(), xq, v_.data(), n, k);

  // RoPE on Q and K, then K and V into the cache
  for (int t = 0; t < n; ++t) {
    rope(&q_[t * c.q_dim()], c.n_head, c.head_dim, c.rope_dim, pos0 + t, c.rope_theta);
    rope(&k_[t * c.kv_dim()], c.n_head_kv, c.head_dim, c.rope_dim, pos0 + t, c.rope_theta);
    cache.store(il, pos0 + t, &k_[t * c.kv_dim()], &v_[t * c.kv_dim()]);
  }

  // grouped-query attention over the cache, output projection, residual
  attention(il, n, pos0, cache);
  xq = prepare_input(k, L.wo, xb_.data(), n, xq_.data());
  team_matmul(team_, L.wo, xb_.data(), xq, gate_.data(), n, k);
  for (size_t j = 0; j < static_cast<size_t>(n) * c.n_embd; ++j) x_[j] += gate_[j];

  // FFN norm, SwiGLU, down projection, residual
  for (int t = 0; t < n; ++t) rmsnorm(&xb_[t * c.n_embd], &x_[t * c.n_embd], L.ffn_norm.data(), c.n_embd, c.rms_eps);
  xq = prepare_input(k, L.w_gate, xb_.data(), n, xq_.data());
  team_matmul(team_, L.w_gate, xb_.data(), xq, gate_.data(), n, k);
  team_matmul(team_, L.w_up, xb_.data(), xq, up_.data(), n, k);
  swiglu(gate_.data(), gate_.data(), up_.data(), static_cast<int64_t>(n) * c.n_ff);
  xq = prepare_input(k, L.w_down, gate_.data(), n, xq_.data());
  team_matmul(team_, L.w_down, gate_.data(), xq, up_.data(), n, k);
  for (size_t j = 0; j < static_cast<size_t>(n) * c.n_embd; ++j) x_[j] += up_[j];
}

Expected<const float*> Forward::run(const TokenId* tokens, int n, int pos0, KvCache& cache, bool all_logits) {
  const ModelConfig& c = model_->config();
  if (n < 1 || n > max_tokens_) return Error{ErrorKind::invalid_argument, "batch of " + std::to_string(n) + " tokens"};
  if (cache.kv_dim() != c.kv_dim() || cache.type() != (precision_ == Precision::exact ? KvType::f32 : KvType::f16)) {
    return Error{ErrorKind::invalid_argument, "the KV cache was not made for this forward pass"};
  }
  if (pos0 < 0 || pos0 + n > cache.n_ctx()) {
    return Error{ErrorKind::out_of_memory, "context full: " + std::to_string(pos0 + n) + " tokens > " +
                                               std::to_string(cache.n_ctx())};
  }
  for (int t = 0; t < n; ++t) {
    if (tokens[t] < 0 || tokens[t] >= c.n_vocab) {
      return Error{ErrorKind::invalid_argument, "token id " + std::to_string(tokens[t]) + " is outside the vocabulary"};
    }
  }

  // token embeddings
  for (int t = 0; t < n; ++t) dequantize_row(model_->token_embd(), tokens[t], &x_[t * c.n_embd]);
  for (int il = 0; il < c.n_layer; ++il) layer_forward(il, n, pos0, cache);

  // final norm and the logits of the last token (or all)
  const int first = all_logits ? 0 : n - 1;
  const int n_out = n - first;
  for (int t = 0; t < n_out; ++t) {
    rmsnorm(&xb_[t * c.n_embd], &x_[(first + t) * c.n_embd], model_->output_norm().data(), c.n_embd, c.rms_eps);
  }
  const BlockQ8* xq = prepare_input(kernels_, model_->output(), xb_.data(), n_out, xq_.data());
  team_matmul(team_, model_->output(), xb_.data(), xq, logits_.data(), n_out, kernels_);
  return static_cast<const float*>(logits_.data());
}

}  // namespace troupe
