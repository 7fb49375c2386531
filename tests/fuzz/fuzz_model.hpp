// fuzz_model.hpp: what the tokenizer and HTTP fuzzers share: the default model's GGUF file, of which they use only
// the metadata (vocabulary, merges, chat template); its tensors stay unread in the mapping. TROUPE_MODEL overrides
// the path. Without the model the fuzzer stops at start-up with a message (scripts/fuzz.sh fetches it first).
#pragma once

#include <cstdio>
#include <cstdlib>
#include <memory>
#include <string>

#include "gguf.hpp"
#include "tokenizer.hpp"

namespace troupe::fuzz {

inline std::shared_ptr<const GgufFile> model_file() {
  static const std::shared_ptr<const GgufFile> file = [] {
    const char* env = std::getenv("TROUPE_MODEL");
    const std::string path =
        env && *env ? std::string(env) : std::string(TROUPE_SOURCE_DIR) + "/models/SmolLM2-135M-Instruct.Q4_1.gguf";
    auto f = GgufFile::open(path);
    if (!f) {
      std::fprintf(stderr, "fuzz: this fuzzer needs the default model: %s (scripts/fetch-model.sh)\n",
                   f.error().message.c_str());
      std::exit(2);
    }
    return *f;
  }();
  return file;
}

inline const Tokenizer& model_tokenizer() {
  static const Tokenizer tokenizer = [] {
    auto t = Tokenizer::from_gguf(*model_file());
    if (!t) {
      std::fprintf(stderr, "fuzz: the model's vocabulary is refused: %s\n", t.error().message.c_str());
      std::exit(2);
    }
    return *t;
  }();
  return tokenizer;
}

// Well-formed UTF-8 (RFC 3629: no overlong forms, surrogates or code points above U+10FFFF), checked here
// independently of src/unicode.cpp.
inline bool valid_utf8(const std::string& s) {
  size_t i = 0;
  while (i < s.size()) {
    const auto c = static_cast<unsigned char>(s[i]);
    int n = 0;
    unsigned lo = 0x80, hi = 0xBF;
    if (c < 0x80) { ++i; continue; }
    if (c >= 0xC2 && c <= 0xDF) n = 1;
    else if (c == 0xE0) { n = 2; lo = 0xA0; }
    else if (c >= 0xE1 && c <= 0xEC) n = 2;
    else if (c == 0xED) { n = 2; hi = 0x9F; }
    else if (c >= 0xEE && c <= 0xEF) n = 2;
    else if (c == 0xF0) { n = 3; lo = 0x90; }
    else if (c >= 0xF1 && c <= 0xF3) n = 3;
    else if (c == 0xF4) { n = 3; hi = 0x8F; }
    else return false;
    if (i + static_cast<size_t>(n) >= s.size()) return false;  // cut short
    for (int k = 1; k <= n; ++k) {
      const auto d = static_cast<unsigned char>(s[i + k]);
      if (k == 1 ? (d < lo || d > hi) : (d < 0x80 || d > 0xBF)) return false;
    }
    i += static_cast<size_t>(n) + 1;
  }
  return true;
}

}  // namespace troupe::fuzz
