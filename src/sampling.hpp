// sampling.hpp: choosing the next token from logits.
//
// The steps, in order (the order of Hugging Face's and vLLM's samplers, where temperature comes before the
// truncations, so top_p and min_p see the distribution actually sampled from):
//   1. logit bias            added to chosen tokens' logits (-inf style values ban a token)
//   2. penalties             over the last penalty_last_n tokens of prompt + output:
//                            repetition (divide positive / multiply negative logits, as in CTRL and llama.cpp),
//                            presence (minus a constant once seen) and frequency (minus count * penalty), as OpenAI
//   3. temperature <= 0      greedy: argmax (ties to the lowest id); steps 4-6 are skipped
//   4. temperature           logits / T
//   5. top_k, top_p, min_p   keep the k most likely; the smallest set reaching mass p; those with p >= min_p * p_max
//   6. draw                  from the renormalised distribution with a seeded generator (same seed, same output)
#pragma once

#include <cstdint>
#include <random>
#include <unordered_map>
#include <utility>
#include <vector>

#include "model.hpp"

namespace troupe {

struct SamplingParams {
  float temperature = 1.0f;         // <= 0: greedy
  int top_k = 0;                    // <= 0: off
  float top_p = 1.0f;               // 1: off
  float min_p = 0.0f;               // 0: off
  float repetition_penalty = 1.0f;  // 1: off
  float presence_penalty = 0.0f;
  float frequency_penalty = 0.0f;
  int penalty_last_n = 64;          // tokens the penalties look back over; -1: all
  std::vector<std::pair<TokenId, float>> logit_bias;
  uint64_t seed = 0;
};

class Sampler {
 public:
  Sampler(SamplingParams params, int n_vocab);

  // Picks the next token. `logits` (n_vocab) is modified; `history` is prompt plus output so far.
  TokenId sample(float* logits, const std::vector<TokenId>& history);

  const SamplingParams& params() const { return params_; }

 private:
  void apply_penalties(float* logits, const std::vector<TokenId>& history);

  SamplingParams params_;
  int n_vocab_;
  std::mt19937_64 rng_;
  std::vector<std::pair<float, TokenId>> candidates_;  // (n_vocab) reused every step
  std::unordered_map<TokenId, int> counts_;            // reused every step
};

}  // namespace troupe
