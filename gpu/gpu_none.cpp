// gpu_none.cpp: the GPU stage interface in a build without CUDA (no nvcc, or TROUPE_CUDA=OFF): no devices, and a
// plan that asks for one is refused with that reason.
#include "gpu_shard.hpp"
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

}  // namespace troupe
