// inspect.cpp: `troupe inspect MODEL`.
#include <cstdio>

#include "commands.hpp"
#include "gguf.hpp"

namespace troupe::cli {

int run_inspect(const std::string& model_path) {
  auto file = GgufFile::open(model_path);
  if (!file) {
    std::fprintf(stderr, "error: %s\n", file.error().message.c_str());
    return 1;
  }
  const GgufFile& f = **file;
  std::printf("GGUF v%u, %zu bytes, alignment %llu, data at %llu\n", f.version(), f.file_size(),
              static_cast<unsigned long long>(f.alignment()), static_cast<unsigned long long>(f.data_offset()));
  std::printf("\nmetadata (%zu):\n", f.metadata().size());
  for (const auto& [key, value] : f.metadata()) std::printf("  %-40s %s\n", key.c_str(), value.to_display().c_str());
  std::printf("\ntensors (%zu):\n", f.tensors().size());
  for (const auto& t : f.tensors()) {
    std::string shape;
    for (size_t k = 0; k < t.dims.size(); ++k) shape += (k ? " x " : "") + std::to_string(t.dims[k]);
    std::printf("  %-32s %-6s %-16s %10llu bytes at %llu\n", t.name.c_str(), t.traits->name, shape.c_str(),
                static_cast<unsigned long long>(t.n_bytes), static_cast<unsigned long long>(t.offset));
  }
  return 0;
}

}  // namespace troupe::cli
