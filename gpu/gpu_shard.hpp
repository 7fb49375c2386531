// gpu_shard.hpp: one head group of a stage (a ShardSpec: KV heads with their query heads, a slice of the FFN) on a
// CUDA device, answering its stage actor as a CPU shard does (ShardWorker's interface): the stage keeps the residual
// stream on the host and adds the shards' partials (the all-reduce), so head groups of one stage can sit on several
// GPUs, or some on GPUs and some on CPU threads.
//
// Each call uploads the normed input, runs the shard's part of the layer and downloads its partial: two host round
// trips per layer. That is the price of a stage split over devices; a stage on one device (GpuStage) keeps
// everything there and pays none.
#pragma once

#include <memory>
#include <string>

#include "error.hpp"
#include "model.hpp"
#include "shard.hpp"

namespace troupe {

struct GpuShardSpec {
  int device = 0;
  ShardSpec shard;      // layers, KV heads, FFN rows
  int max_tokens = 256; // tokens per step
  int n_blocks = 0;     // KV blocks in the pool
  int block_size = 16;
};

class GpuShard {
 public:
  static Expected<std::unique_ptr<GpuShard>> create(std::shared_ptr<const Model> model, const GpuShardSpec& spec);
  virtual ~GpuShard() = default;

  // As ShardWorker::attention and ::ffn: xn (n_tokens, n_embd) the normed residual; out (n_tokens, n_embd) this
  // shard's partial (computed in float on the device, widened to double for the stage's sum).
  virtual Expected<void> attention(int il, const StepLayout& step, const float* xn, double* out) = 0;
  virtual Expected<void> ffn(int il, int n, const float* xn, double* out) = 0;

  virtual std::string device_name() const = 0;
  virtual bool broken() const = 0;  // a sticky CUDA error: the device is unusable for this process
};

}  // namespace troupe
