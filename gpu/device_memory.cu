// device_memory.cu: Device (see device_memory.cuh).
#include "device_memory.cuh"

#include <vector>

#include "gpu_stage.hpp"

namespace troupe::gpu {

Expected<void> Device::open(int ordinal) {
  std::string why;
  const int n_dev = cuda_device_count(&why);
  if (n_dev == 0) return Error{ErrorKind::unavailable, "cuda: " + why};
  if (ordinal < 0 || ordinal >= n_dev) {
    return Error{ErrorKind::invalid_argument, "cuda:" + std::to_string(ordinal) + " does not exist (" +
                                                  std::to_string(n_dev) + " device(s))"};
  }
  ordinal_ = ordinal;
  if (auto e = cudaSetDevice(ordinal); e != cudaSuccess) return cuda_error(e, "set device");
  cudaDeviceProp prop{};
  if (auto e = cudaGetDeviceProperties(&prop, ordinal); e != cudaSuccess) return cuda_error(e, "properties");
  name_ = "cuda:" + std::to_string(ordinal) + " (" + prop.name + ")";
  if (auto e = cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking); e != cudaSuccess) {
    stream_ = nullptr;
    return cuda_error(e, "stream");
  }
  return {};
}

Expected<void> Device::alloc(DevMem& m, size_t bytes) {
  if (m.p) cudaFree(m.p);
  m.p = nullptr;
  m.bytes = 0;
  if (bytes == 0) return {};
  if (auto e = cudaMalloc(&m.p, bytes); e != cudaSuccess) {
    m.p = nullptr;
    if (sticky(e)) broken_ = true;
    return Error{ErrorKind::out_of_memory, "cuda: cannot allocate " + std::to_string(bytes >> 20) + " MiB on " + name_ +
                                               ": " + cudaGetErrorString(e)};
  }
  m.bytes = bytes;
  bytes_ += bytes;
  return {};
}

Expected<void> Device::alloc_host(HostMem& m, size_t bytes) {
  if (m.p) cudaFreeHost(m.p);
  m.p = nullptr;
  if (auto e = cudaMallocHost(&m.p, bytes < 64 ? 64 : bytes); e != cudaSuccess) {
    m.p = nullptr;
    return check(e, "pinned host buffer");
  }
  m.bytes = bytes;
  return {};
}

Expected<void> Device::upload(DevMem& m, const void* src, size_t bytes) {
  if (auto r = alloc(m, bytes); !r) return r;
  return check(cudaMemcpy(m.p, src, bytes, cudaMemcpyHostToDevice), "weight upload");
}

Expected<DevMatrix> Device::upload_matrix(DevMem& m, const Matrix& w) {
  const auto* traits = ggml_type_traits(static_cast<uint32_t>(w.type));
  const int64_t packed = w.cols / traits->block_elems * traits->block_bytes;  // bytes of one row's columns
  const size_t bytes = static_cast<size_t>(w.rows * packed);
  if (packed == w.row_bytes) {
    if (auto r = upload(m, w.data, bytes); !r) return r.error();
  } else {  // a column slice: its rows are not contiguous in the file
    std::vector<uint8_t> rows(bytes);
    for (int64_t r = 0; r < w.rows; ++r) std::memcpy(rows.data() + r * packed, w.row(r), packed);
    if (auto r = upload(m, rows.data(), bytes); !r) return r.error();
  }
  return DevMatrix{w.type, m.as<uint8_t>(), w.rows, w.cols, packed};
}

Expected<size_t> fill_step_meta(const StepLayout& step, int n_blocks, int block_size, int* pos, int* seq, int* seq_bt,
                                int* bt) {
  size_t off = 0;
  int covered = 0;
  for (size_t si = 0; si < step.seqs.size(); ++si) {
    const auto& sq = step.seqs[si];
    if (sq.first != covered || sq.n < 1 || sq.pos0 < 0 ||
        static_cast<int64_t>(sq.block_table.size()) * block_size < static_cast<int64_t>(sq.pos0) + sq.n) {
      return Error{ErrorKind::invalid_argument, "GPU step: a sequence's tokens or block table do not add up"};
    }
    seq_bt[si] = static_cast<int>(off);
    for (int b : sq.block_table) {
      if (b < 0 || b >= n_blocks) return Error{ErrorKind::invalid_argument, "GPU step: KV block out of range"};
      bt[off++] = b;
    }
    for (int t = sq.first; t < sq.first + sq.n; ++t) {
      pos[t] = sq.pos0 + (t - sq.first);
      seq[t] = static_cast<int>(si);
    }
    covered += sq.n;
  }
  if (covered != step.n_tokens) {
    return Error{ErrorKind::invalid_argument, "GPU step: sequences do not cover the step's tokens"};
  }
  return off;
}

}  // namespace troupe::gpu
