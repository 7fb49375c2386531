// shard.hpp: the arithmetic of one shard of a split model, free of any messaging.
//
// A plan cuts the model two ways. Pipeline stages take contiguous ranges of layers. Within a stage, tensor
// parallelism splits every layer by attention-head groups: a shard owns a contiguous group of KV heads with the
// query heads that read them (rows of Q, K and V, the matching columns of the output projection), a contiguous slice
// of the FFN (rows of gate and up, the matching columns of down), and the keys and values of its KV heads.
// Each shard's attention and FFN produce a partial (n_tokens, n_embd) sum; the stage adds the partials of its shards
// (the all-reduce) to its residual stream. Partials are double and rounded once after the sum, and the kernels
// accumulate in double across 64-column chunks, so any split on 64-column boundaries gives Forward's floats: the
// tokens do not depend on the plan.
//
// The KV cache is paged: a pool of fixed-size blocks shared by every sequence of a replica, addressed through
// per-sequence block tables that the scheduler owns.
#pragma once

#include <memory>
#include <utility>
#include <vector>

#include "error.hpp"
#include "kv_cache.hpp"
#include "model.hpp"

namespace troupe {

// Splits [0, n) into `parts` contiguous ranges as evenly as possible, each boundary a multiple of `align` (the last
// range takes the remainder). Fails when a range would be empty.
Expected<std::vector<std::pair<int, int>>> split_range(int n, int parts, int align);

// Columns [c0, c1) of a weight matrix, without copying; c0 and c1 must fall on block boundaries of its type.
Expected<Matrix> column_slice(const Matrix& m, int64_t c0, int64_t c1);
// Rows [r0, r1) of a weight matrix, without copying.
Matrix row_slice(const Matrix& m, int64_t r0, int64_t r1);

struct ShardSpec {
  int layer_begin = 0, layer_end = 0;      // the stage's layers
  int kv_head_begin = 0, kv_head_end = 0;  // this shard's KV heads (and their query heads)
  int ff_begin = 0, ff_end = 0;            // this shard's FFN rows
};

// The shards of a stage split t ways: KV heads and FFN rows in contiguous, nearly equal groups.
Expected<std::vector<ShardSpec>> split_stage(const ModelConfig& c, int layer_begin, int layer_end, int t);

// Whether the model's weights can be cut as `spec` says (column slices must fall on quantisation blocks).
Expected<void> check_shard(const Model& model, const ShardSpec& spec);

// Keys and values of the shard's layers and KV heads for every block: (layer, block, slot, kv_dim).
class PagedKvPool {
 public:
  PagedKvPool(int n_layers, int n_blocks, int block_size, int kv_dim, KvType type)
      : n_blocks_(n_blocks), block_size_(block_size),
        rows_(static_cast<size_t>(n_layers) * n_blocks * block_size, kv_dim, type) {}
  int n_blocks() const { return n_blocks_; }
  int block_size() const { return block_size_; }
  KvType type() const { return rows_.type(); }
  size_t bytes() const { return rows_.bytes(); }

  void store(int il, int block, int slot, const float* k, const float* v) { rows_.store(row(il, block) + slot, k, v); }
  template <class T> const T* k(int il, int block) const { return rows_.k<T>(row(il, block)); }
  template <class T> const T* v(int il, int block) const { return rows_.v<T>(row(il, block)); }

 private:
  size_t row(int il, int block) const { return (static_cast<size_t>(il) * n_blocks_ + block) * block_size_; }

  int n_blocks_, block_size_;
  KvRows rows_;  // (layer, block, slot)
};

// Which tokens of a step belong to which sequence. Tokens of one sequence are contiguous and consecutive in position.
struct StepLayout {
  struct Seq {
    int first = 0;  // index of its first token in the step
    int n = 0;
    int pos0 = 0;
    std::vector<int> block_table;  // covers positions 0 .. pos0 + n - 1
  };
  std::vector<Seq> seqs;
  int n_tokens = 0;
};

// One shard's weights (views into the mapped file), its KV pool and scratch space.
class ShardWorker {
 public:
  ShardWorker(std::shared_ptr<const Model> model, ShardSpec spec, Precision precision, int max_tokens, int n_blocks,
              int block_size);

  const ShardSpec& spec() const { return spec_; }
  const PagedKvPool& pool() const { return pool_; }
  // Splits this shard's matmuls and attention heads over a thread team (null: the calling thread alone); the
  // results do not depend on it. The team must outlive its use here.
  void set_team(ThreadTeam* team) { team_ = team; }

  // Attention of layer il (a global layer index in the stage) for a step: xn (n_tokens, n_embd) is the normed
  // residual; out (n_tokens, n_embd) receives this shard's part of the output projection, unrounded (see
  // matmul_partial). Writes the step's keys and values into the pool first, so a chunk attends to itself causally.
  Expected<void> attention(int il, const StepLayout& step, const float* xn, double* out);
  // FFN of layer il: out (n, n_embd) = this shard's part of down(silu(gate xn) * up xn), unrounded.
  Expected<void> ffn(int il, int n, const float* xn, double* out);

 private:
  struct Layer { Matrix wq, wk, wv, wo, w_gate, w_up, w_down; };
  std::shared_ptr<const Model> model_;
  ShardSpec spec_;
  const Kernels& kernels_;
  int max_tokens_;
  int n_head_ = 0, n_head_kv_ = 0;  // this shard's query and KV heads
  std::vector<Layer> layers_;
  PagedKvPool pool_;
  std::vector<BlockQ8> xq_;
  std::vector<float> q_, k_, v_, attn_, gate_, up_;
  ThreadTeam* team_ = nullptr;
};

// The stage's own part: token embeddings (first stage), norms, adding partials to the residual stream, and the
// logits (last stage).
class StageCompute {
 public:
  StageCompute(std::shared_ptr<const Model> model, Precision precision, int max_tokens);

  void embed(const TokenId* tokens, int n, float* x) const;
  void norm(const std::vector<float>& weight, const float* x, int n, float* out) const;
  // x (n, n_embd) += the sum of the shards' partials, added in the order given and rounded once: the float the
  // whole matrix would give (the all-reduce's arithmetic).
  void add_partials(float* x, int n, const std::vector<const double*>& partials) const;
  // logits (rows.size(), n_vocab) of the residual rows listed
  void logits(const float* x, const std::vector<int>& rows, float* out);
  void set_team(ThreadTeam* team) { team_ = team; }  // for the logits, as ShardWorker::set_team

 private:
  std::shared_ptr<const Model> model_;
  const Kernels& kernels_;
  std::vector<float> xn_;
  std::vector<BlockQ8> xq_;
  ThreadTeam* team_ = nullptr;
};

}  // namespace troupe
