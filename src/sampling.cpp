// sampling.cpp: see sampling.hpp for the order of the steps.
#include "sampling.hpp"

#include <algorithm>
#include <cmath>

namespace troupe {

Sampler::Sampler(SamplingParams params, int n_vocab)
    : params_(std::move(params)), n_vocab_(n_vocab), rng_(params_.seed) {
  candidates_.reserve(n_vocab);
}

void Sampler::apply_penalties(float* logits, const std::vector<TokenId>& history) {
  const SamplingParams& p = params_;
  if (p.repetition_penalty == 1.0f && p.presence_penalty == 0.0f && p.frequency_penalty == 0.0f) return;
  counts_.clear();
  size_t begin = 0;
  if (p.penalty_last_n >= 0 && history.size() > static_cast<size_t>(p.penalty_last_n)) {
    begin = history.size() - p.penalty_last_n;
  }
  for (size_t j = begin; j < history.size(); ++j) {
    if (history[j] >= 0 && history[j] < n_vocab_) ++counts_[history[j]];
  }
  for (const auto& [tok, count] : counts_) {
    float& l = logits[tok];
    if (p.repetition_penalty != 1.0f) l = l > 0 ? l / p.repetition_penalty : l * p.repetition_penalty;
    l -= static_cast<float>(count) * p.frequency_penalty + p.presence_penalty;
  }
}

TokenId Sampler::sample(float* logits, const std::vector<TokenId>& history) {
  const SamplingParams& p = params_;
  for (const auto& [tok, bias] : p.logit_bias) {
    if (tok >= 0 && tok < n_vocab_) logits[tok] += bias;
  }
  apply_penalties(logits, history);

  if (p.temperature <= 0.0f) return static_cast<TokenId>(std::max_element(logits, logits + n_vocab_) - logits);

  // Candidates sorted by logit, most likely first; sorting stops at top_k when it is set.
  candidates_.clear();
  for (TokenId t = 0; t < n_vocab_; ++t) {
    if (std::isfinite(logits[t])) candidates_.emplace_back(logits[t] / p.temperature, t);
  }
  if (candidates_.empty()) return static_cast<TokenId>(std::max_element(logits, logits + n_vocab_) - logits);
  auto more_likely = [](const auto& a, const auto& b) { return a.first > b.first || (a.first == b.first && a.second < b.second); };
  size_t n = candidates_.size();
  if (p.top_k > 0 && static_cast<size_t>(p.top_k) < n) {
    n = p.top_k;
    std::partial_sort(candidates_.begin(), candidates_.begin() + n, candidates_.end(), more_likely);
  } else {
    std::sort(candidates_.begin(), candidates_.end(), more_likely);
  }

  // Probabilities of the kept candidates (stored in place of the logits).
  const float max = candidates_[0].first;
  double sum = 0;
  for (size_t j = 0; j < n; ++j) {
    candidates_[j].first = std::exp(candidates_[j].first - max);
    sum += candidates_[j].first;
  }
  for (size_t j = 0; j < n; ++j) candidates_[j].first = static_cast<float>(candidates_[j].first / sum);

  if (p.top_p < 1.0f) {
    double mass = 0;
    size_t keep = n;
    for (size_t j = 0; j < n; ++j) {
      mass += candidates_[j].first;
      if (mass >= p.top_p) { keep = j + 1; break; }
    }
    n = keep;
  }
  if (p.min_p > 0.0f) {
    const float floor = p.min_p * candidates_[0].first;
    size_t keep = 1;
    while (keep < n && candidates_[keep].first >= floor) ++keep;
    n = keep;
  }

  // Draw from what is left (renormalised implicitly by drawing in [0, mass)).
  double mass = 0;
  for (size_t j = 0; j < n; ++j) mass += candidates_[j].first;
  std::uniform_real_distribution<double> uniform(0.0, mass);
  double r = uniform(rng_);
  for (size_t j = 0; j < n; ++j) {
    r -= candidates_[j].first;
    if (r < 0) return candidates_[j].second;
  }
  return candidates_[n - 1].second;
}

}  // namespace troupe
