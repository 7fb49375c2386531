// generate.hpp: the single-sequence generation loop (prefill in chunks, then decode token by token) used by
// `troupe generate` and as the reference the actor path is checked against.
#pragma once

#include <functional>
#include <string>
#include <string_view>
#include <vector>

#include "model.hpp"
#include "sampling.hpp"
#include "tokenizer.hpp"

namespace troupe {

// Finds stop strings in streamed text. push() returns the text that can be emitted now: everything except a tail
// that might still become a stop string. After a stop string is found, stopped() is true and nothing more is returned.
class StopMatcher {
 public:
  explicit StopMatcher(std::vector<std::string> stops);
  std::string push(std::string_view text);
  std::string flush();  // the held-back tail, at the end of generation
  bool stopped() const { return stopped_; }

 private:
  std::vector<std::string> stops_;
  std::string pending_;
  bool stopped_ = false;
};

enum class FinishReason { stop, length, cancelled };
const char* to_string(FinishReason reason);

struct GenerateParams {
  int max_tokens = 256;            // tokens to generate at most
  std::vector<std::string> stop;   // stop strings (not part of the output)
  bool ignore_eos = false;         // keep going past end-of-generation tokens
  SamplingParams sampling;
};

struct GenerateStats {
  FinishReason finish_reason = FinishReason::length;
  int n_prompt = 0;
  int n_generated = 0;
  double prefill_seconds = 0;
  double decode_seconds = 0;  // from the first generated token to the last
};

// Streams the continuation of `prompt` through on_text; on_text returning false cancels.
Expected<GenerateStats> generate(Forward& forward, KvCache& cache, const Tokenizer& tokenizer,
                                 const std::vector<TokenId>& prompt, const GenerateParams& params,
                                 const std::function<bool(std::string_view)>& on_text);

}  // namespace troupe
