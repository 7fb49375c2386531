// fuzz_gguf.cpp: libFuzzer target for the GGUF loader. Any byte string must parse into a file whose every tensor
// lies inside the bytes (first and last byte read here, under ASan) and whose metadata renders, or give a one-line
// Error. Crashes, leaks, hangs and huge allocations are bugs (scripts/fuzz.sh runs this with an RSS limit).
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string>
#include <vector>

#include "gguf.hpp"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  auto file = troupe::GgufFile::parse(std::vector<uint8_t>(data, data + size));
  if (!file) {
    const std::string& m = file.error().message;
    if (m.empty() || m.find('\n') != std::string::npos) std::abort();  // errors are one non-empty line
    return 0;
  }
  const troupe::GgufFile& f = **file;
  volatile uint8_t sink = 0;
  for (const auto& t : f.tensors()) {
    if (!t.traits || t.dims.empty() || t.n_bytes == 0 || t.data == nullptr) std::abort();
    if (t.n_elements() <= 0 || t.rows() <= 0 || t.row_bytes() <= 0) std::abort();
    sink = sink + t.data[0] + t.data[t.n_bytes - 1];
    if (f.tensor(t.name) != &t) std::abort();
  }
  size_t shown = 0;
  for (const auto& [key, value] : f.metadata()) {
    std::string s = value.to_display();
    if (s.find('\n') != std::string::npos) std::abort();
    shown += s.size() + key.size();
    if (f.find(key) != &value) std::abort();
    int64_t i;
    (void)value.as_int(i);
  }
  (void)f.get_int("general.alignment");
  (void)f.get_string("general.architecture");
  (void)f.get_float("llama.rope.freq_base");
  sink = sink + static_cast<uint8_t>(shown);
  return 0;
}
