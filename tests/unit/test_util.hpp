// Helpers shared by the unit tests: where the source tree and the default model are.
#pragma once

#include <cstdlib>
#include <fstream>
#include <sstream>
#include <string>

namespace troupe::test {

inline std::string source_path(const std::string& rel) { return std::string(TROUPE_SOURCE_DIR) + "/" + rel; }

// The default model, fetched by scripts/fetch-model.sh before the tests run; TROUPE_MODEL overrides it.
inline std::string model_path() {
  if (const char* p = std::getenv("TROUPE_MODEL")) return p;
  return source_path("models/SmolLM2-135M-Instruct.Q4_1.gguf");
}

inline std::string read_text(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream os;
  os << in.rdbuf();
  return os.str();
}

}  // namespace troupe::test
