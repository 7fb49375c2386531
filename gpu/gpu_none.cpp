// gpu_none.cpp: the GPU interfaces in a build without CUDA (no nvcc, or TROUPE_CUDA=OFF): no devices, and a plan
// that asks for one is refused with that reason.
#include "gpu_shard.hpp"
#include "kernel_check.hpp"
#include "gpu_stage.hpp"

namespace troupe {

int cuda_device_count(std::string* why) {
  if (why) *why = "this troupe was built without CUDA";
  return 0;
}

bool cuda_built() { return false; }

Expected<std::unique_ptr<GpuStage>> GpuStage::create(std::shared_ptr<const Model>, const GpuStageSpec&) {
  return Error{ErrorKind::unavailable, "cuda: this troupe was built without CUDA (no nvcc at build time)"};
}

Expected<std::unique_ptr<GpuShard>> GpuShard::create(std::shared_ptr<const Model>, const GpuShardSpec&) {
  return Error{ErrorKind::unavailable, "cuda: this troupe was built without CUDA (no nvcc at build time)"};
}

// troupe-gpu-check reports itself skipped before it calls these (cuda_built() is false); they exist so that it links.
namespace gpu_check {

static Error no_cuda() { return Error{ErrorKind::unavailable, "cuda: this troupe was built without CUDA"}; }
Expected<void> quantize_q8(const float*, int, int64_t, BlockQ8*) { return no_cuda(); }
Expected<void> matmul(const Matrix&, const float*, int, float*) { return no_cuda(); }
Expected<void> rmsnorm(const float*, const float*, int, int, float, float*) { return no_cuda(); }
Expected<void> rope(float*, const int*, int, int, int, int, float) { return no_cuda(); }
Expected<void> swiglu(float*, const float*, int64_t) { return no_cuda(); }
Expected<void> embed(const Matrix&, const int*, int, float*) { return no_cuda(); }
Expected<void> attention(const StepLayout&, const float*, const float*, const float*, std::vector<uint16_t>&,
                         std::vector<uint16_t>&, int, int, int, int, float*) {
  return no_cuda();
}

}  // namespace gpu_check

}  // namespace troupe
