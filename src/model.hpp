// model.hpp: a llama-architecture model read from a GGUF file, and its forward pass on the CPU.
//
// Every shape comes from the file's metadata and is checked against the tensor table at load; nothing about a
// particular model is assumed. Weights stay in the memory-mapped file in their stored encoding.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "error.hpp"
#include "gguf.hpp"
#include "kernels.hpp"
#include "kv_cache.hpp"
#include "thread_team.hpp"

namespace troupe {

using TokenId = int32_t;

struct ModelConfig {
  std::string arch;     // general.architecture ("llama")
  int n_vocab = 0;      // rows of the token embedding
  int n_ctx_train = 0;  // context length the model was trained for
  int n_embd = 0;       // hidden size
  int n_layer = 0;
  int n_head = 0;       // query heads
  int n_head_kv = 0;    // key/value heads (grouped-query attention: n_head % n_head_kv == 0)
  int head_dim = 0;
  int rope_dim = 0;     // leading dimensions of each head that RoPE rotates
  int n_ff = 0;         // FFN hidden size
  float rope_theta = 10000.0f;
  float rms_eps = 1e-5f;

  int q_dim() const { return n_head * head_dim; }
  int kv_dim() const { return n_head_kv * head_dim; }
};

struct LayerWeights {
  std::vector<float> attn_norm;  // (n_embd)
  Matrix wq;                     // (n_head * head_dim, n_embd)
  Matrix wk;                     // (n_head_kv * head_dim, n_embd)
  Matrix wv;                     // (n_head_kv * head_dim, n_embd)
  Matrix wo;                     // (n_embd, n_head * head_dim)
  std::vector<float> ffn_norm;   // (n_embd)
  Matrix w_gate;                 // (n_ff, n_embd)
  Matrix w_up;                   // (n_ff, n_embd)
  Matrix w_down;                 // (n_embd, n_ff)
};

class Model {
 public:
  static Expected<std::shared_ptr<const Model>> load(std::shared_ptr<const GgufFile> file);

  const ModelConfig& config() const { return config_; }
  const GgufFile& file() const { return *file_; }
  const Matrix& token_embd() const { return token_embd_; }  // (n_vocab, n_embd)
  const std::vector<float>& output_norm() const { return output_norm_; }  // (n_embd)
  const Matrix& output() const { return output_; }  // (n_vocab, n_embd), token_embd when tied
  const LayerWeights& layer(int il) const { return layers_[il]; }

 private:
  std::shared_ptr<const GgufFile> file_;
  ModelConfig config_;
  Matrix token_embd_;
  std::vector<float> output_norm_;
  Matrix output_;
  std::vector<LayerWeights> layers_;
};

// How the forward pass computes:
//   fast   8-bit activations in quantised dot products, fp16 KV cache (as llama.cpp's default CPU path)
//   exact  weights dequantised block by block in registers and multiplied in fp32, fp32 KV cache: the reference
//          mode, checked against llama.cpp on the F32 dequantisation of the same weights
enum class Precision { fast, exact };

// The scratch space of forward passes over up to max_tokens tokens at a time, allocated once.
class Forward {
 public:
  Forward(std::shared_ptr<const Model> model, int max_tokens, Precision precision = Precision::fast);

  // Runs tokens (n) at positions pos0 .. pos0 + n - 1 of the sequence whose cache is `cache`, appending their keys
  // and values to it. Returns the logits (n_vocab) of the last token, or of every token (n, n_vocab) when all_logits.
  Expected<const float*> run(const TokenId* tokens, int n, int pos0, KvCache& cache, bool all_logits = false);

  const Model& model() const { return *model_; }
  int max_tokens() const { return max_tokens_; }
  Precision precision() const { return precision_; }
  KvCache make_cache(int n_ctx) const;  // a cache of the type this precision uses
  // Splits matmuls and attention over a thread team from now on (null: the calling thread alone). The results do not
  // depend on it. The team must outlive its use here.
  void set_team(ThreadTeam* team) { team_ = team; }

 private:
  void layer_forward(int il, int n, int pos0, KvCache& cache);
  void attention(int il, int n, int pos0, const KvCache& cache);

  std::shared_ptr<const Model> model_;
  Precision precision_;
  const Kernels& kernels_;
  ThreadTeam* team_ = nullptr;
  int max_tokens_;
  std::vector<float> x_;       // (max_tokens, n_embd) residual stream
  std::vector<float> xb_;      // (max_tokens, max(n_embd, q_dim)) normed input / attention output
  std::vector<BlockQ8> xq_;    // (max_tokens, max(n_embd, n_ff) / 32) quantised matmul input
  std::vector<float> q_;       // (max_tokens, q_dim)
  std::vector<float> k_;       // (max_tokens, kv_dim)
  std::vector<float> v_;       // (max_tokens, kv_dim)
  std::vector<float> gate_;    // (max_tokens, n_ff)
  std::vector<float> up_;      // (max_tokens, n_ff)
  std::vector<float> logits_;  // (max_tokens, n_vocab)
};

}  // namespace troupe
