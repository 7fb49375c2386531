// gpu_stage.hpp: a pipeline stage (a range of layers, all its attention heads) on one CUDA device.
//
// The interface is plain C++ (no CUDA types), so the actors and the tests include it without nvcc. Everything
// lives on the device from start-up: the stage's weights in their GGUF encoding (uploaded once), its paged KV
// cache (fp16, the layout of the CPU's PagedKvPool), scratch buffers for max_tokens tokens and the step's metadata.
// A step costs one upload of metadata and activations, the kernels, and one download of activations or logits; a
// decode step (up to kGraphTokens tokens) replays a CUDA graph captured the first time its shape was seen.
//
// The arithmetic mirrors the CPU's fast path (src/kernels.hpp): activations quantised to 8 bits per block of 32
// exactly as the CPU does (the same bytes), integer block dot products, fp16 keys and values. What differs is the
// order of float additions (a warp's tree instead of the CPU's double lanes), so logits agree to ~1e-4, not bit
// for bit: docs/gpu.md gives the tolerance and why.
//
// Errors are values: a CUDA error fails the step with ErrorKind::unavailable. A sticky error (the context is
// lost) marks the stage broken(): every later step fails at once and the owner reports the device as down.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "error.hpp"
#include "model.hpp"
#include "shard.hpp"

namespace troupe {

// The devices this process can use; 0 when built without CUDA or when there is no device or driver. `why` says
// which, for logs and skipped tests.
int cuda_device_count(std::string* why = nullptr);
bool cuda_built();  // whether this binary has the CUDA backend

struct GpuStageSpec {
  int device = 0;                    // CUDA device ordinal
  int layer_begin = 0, layer_end = 0;
  bool first = false;                // embeds the step's tokens (else takes the residual stream)
  bool last = false;                 // computes logits (else gives the residual stream)
  int max_tokens = 512;              // tokens per step
  int output_slots = 0;              // > 0: device buffers for outputs kept for a GPU stage after it (run_device);
                                     // more than the steps the pipeline has in flight
  int n_blocks = 0;                  // KV blocks in the pool
  int block_size = 16;               // positions per block
  bool use_graphs = true;            // capture decode steps as CUDA graphs
};

// The residual stream of a step left on a device by the stage before (in this process), for the next GPU stage to
// copy device to device (a peer copy across devices). It stays valid until that stage has run output_slots more steps:
// the pipeline never has that many in flight (at most one per stage).
struct DeviceActivations {
  int device = 0;
  uint64_t address = 0;  // the device pointer
  size_t bytes = 0;
};

class GpuStage {
 public:

  static Expected<std::unique_ptr<GpuStage>> create(std::shared_ptr<const Model> model, const GpuStageSpec& spec);
  virtual ~GpuStage() = default;

  // One step through the stage's layers. tokens (n_tokens): the step's tokens (used by the first stage);
  // x_in (n_tokens, n_embd): the residual stream from the stage before (ignored by the first stage);
  // x_out (n_tokens, n_embd): the residual stream after this stage (not written by the last stage);
  // logits (logit_rows.size(), n_vocab): the last stage's logits of the listed token indices.
  // Host pointers, any memory. Positions and block tables come from `step`, as on the CPU.
  virtual Expected<void> run(const StepLayout& step, const TokenId* tokens, const float* x_in, float* x_out,
                             const std::vector<int>& logit_rows, float* logits) = 0;

  // As run, but the input may be on a device (x_dev, when not null, replaces x_in) and, when to_device, the output
  // stays on this device in slot step_id % output_slots: `*x_dev_out` says where. The last stage ignores to_device.
  virtual Expected<void> run_device(const StepLayout& step, uint64_t step_id, const TokenId* tokens,
                                    const float* x_in, const DeviceActivations* x_dev, float* x_out, bool to_device,
                                    DeviceActivations* x_dev_out, const std::vector<int>& logit_rows,
                                    float* logits) = 0;

  virtual const GpuStageSpec& spec() const = 0;
  virtual std::string device_name() const = 0;
  virtual size_t device_bytes() const = 0;  // weights + KV cache + scratch held on the device
  virtual bool broken() const = 0;          // a sticky CUDA error: the device is unusable for this process
};

}  // namespace troupe
