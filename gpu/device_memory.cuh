// device_memory.cuh: what GpuStage and GpuShard share: CUDA errors as values, owned device and pinned host buffers,
// and a Device that allocates and uploads on one device, counting its bytes and noticing sticky errors.
#pragma once

#include <cuda_runtime.h>

#include <string>

#include "error.hpp"
#include "kernels.cuh"
#include "shard.hpp"

namespace troupe::gpu {

inline Error cuda_error(cudaError_t e, const char* what) {
  return Error{ErrorKind::unavailable, std::string("cuda: ") + what + ": " + cudaGetErrorString(e)};
}

// Errors that leave the context unusable: every later call fails too.
inline bool sticky(cudaError_t e) {
  switch (e) {
    case cudaErrorIllegalAddress: case cudaErrorLaunchFailure: case cudaErrorHardwareStackError:
    case cudaErrorIllegalInstruction: case cudaErrorMisalignedAddress: case cudaErrorInvalidAddressSpace:
    case cudaErrorInvalidPc: case cudaErrorECCUncorrectable: case cudaErrorLaunchTimeout: case cudaErrorUnknown:
      return true;
    default:
      return false;
  }
}

// Device memory, freed with its owner.
struct DevMem {
  void* p = nullptr;
  size_t bytes = 0;
  DevMem() = default;
  DevMem(const DevMem&) = delete;
  DevMem& operator=(const DevMem&) = delete;
  ~DevMem() { if (p) cudaFree(p); }
  template <class T> T* as() const { return static_cast<T*>(p); }
};

// Pinned host memory for a step's uploads and downloads.
struct HostMem {
  void* p = nullptr;
  size_t bytes = 0;
  HostMem() = default;
  HostMem(const HostMem&) = delete;
  HostMem& operator=(const HostMem&) = delete;
  ~HostMem() { if (p) cudaFreeHost(p); }
  template <class T> T* as() const { return static_cast<T*>(p); }
};

// One device as its owner (a stage or a shard) uses it: its name, a stream, the bytes it holds, whether a sticky
// error made it unusable.
class Device {
 public:
  ~Device() {
    if (stream_) {
      cudaSetDevice(ordinal_);
      cudaStreamDestroy(stream_);
    }
  }
  Expected<void> open(int ordinal);  // checks the ordinal, names the device, makes the stream
  Expected<void> check(cudaError_t e, const char* what) {
    if (e == cudaSuccess) return {};
    if (sticky(e)) broken_ = true;
    return cuda_error(e, what);
  }
  Expected<void> alloc(DevMem& m, size_t bytes);
  Expected<void> alloc_host(HostMem& m, size_t bytes);
  Expected<void> upload(DevMem& m, const void* src, size_t bytes);
  // The matrix's rows, packed (a column slice's rows become contiguous), as a DevMatrix over m.
  Expected<DevMatrix> upload_matrix(DevMem& m, const Matrix& w);
  void release(const DevMem& m) { bytes_ -= m.bytes; }  // before m is reallocated

  int ordinal() const { return ordinal_; }
  cudaStream_t stream() const { return stream_; }
  const std::string& name() const { return name_; }
  size_t bytes() const { return bytes_; }
  bool broken() const { return broken_; }

 private:
  int ordinal_ = 0;
  cudaStream_t stream_ = nullptr;
  std::string name_;
  size_t bytes_ = 0;
  bool broken_ = false;
};

// A step's positions and pages as the kernels read them (StepMeta), checked: every sequence's tokens follow the
// last's, its block table covers its positions and names blocks of the pool. pos (n_tokens), seq (n_tokens): each
// token's position and sequence; seq_bt (n_seqs): where each sequence's table starts in bt. Returns bt's length.
Expected<size_t> fill_step_meta(const StepLayout& step, int n_blocks, int block_size, int* pos, int* seq, int* seq_bt,
                                int* bt);

}  // namespace troupe::gpu
