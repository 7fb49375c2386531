// generate.cpp: stop strings and the single-sequence generation loop.
#include "generate.hpp"

#include <algorithm>
#include <chrono>

namespace troupe {

StopMatcher::StopMatcher(std::vector<std::string> stops) {
  for (auto& s : stops) {
    if (!s.empty()) stops_.push_back(std::move(s));
  }
}

std::string StopMatcher::push(std::string_view text) {
  if (stopped_) return {};
  pending_.append(text);
  // The stop string completed first in the stream wins: the one whose match ends earliest (token by token, that is
  // the one seen first), then the one that starts earliest.
  size_t best_end = std::string::npos, best_start = std::string::npos;
  for (const auto& s : stops_) {
    const size_t at = pending_.find(s);
    if (at == std::string::npos) continue;
    const size_t end = at + s.size();
    if (end < best_end || (end == best_end && at < best_start)) best_end = end, best_start = at;
  }
  if (best_start != std::string::npos) {
    stopped_ = true;
    std::string out = pending_.substr(0, best_start);
    pending_.clear();
    return out;
  }
  // Hold back the longest tail of pending_ that is a proper prefix of some stop string.
  size_t hold = 0;
  for (const auto& s : stops_) {
    const size_t max_len = std::min(s.size() - 1, pending_.size());
    for (size_t len = max_len; len > hold; --len) {
      if (std::string_view(pending_).substr(pending_.size() - len) == std::string_view(s).substr(0, len)) {
        hold = len;
        break;
      }
    }
  }
  std::string out = pending_.substr(0, pending_.size() - hold);
  pending_.erase(0, pending_.size() - hold);
  return out;
}

std::string StopMatcher::flush() {
  if (stopped_) return {};
  return std::exchange(pending_, {});
}

const char* to_string(FinishReason reason) {
  switch (reason) {
    case FinishReason::stop: return "stop";
    case FinishReason::length: return "length";
    case FinishReason::cancelled: return "cancelled";
  }
  return "unknown";
}

Expected<GenerateStats> generate(Forward& forward, KvCache& cache, const Tokenizer& tokenizer,
                                 const std::vector<TokenId>& prompt, const GenerateParams& params,
                                 const std::function<bool(std::string_view)>& on_text) {
  using clock = std::chrono::steady_clock;
  const auto seconds = [](clock::duration d) { return std::chrono::duration<double>(d).count(); };
  GenerateStats stats;
  stats.n_prompt = static_cast<int>(prompt.size());
  if (prompt.empty()) return Error{ErrorKind::invalid_argument, "the prompt is empty"};
  if (stats.n_prompt >= cache.n_ctx()) {
    return Error{ErrorKind::invalid_argument, "the prompt has " + std::to_string(stats.n_prompt) +
                                                  " tokens; the context holds " + std::to_string(cache.n_ctx())};
  }
  const int n_vocab = forward.model().config().n_vocab;
  Sampler sampler(params.sampling, n_vocab);
  std::vector<TokenId> history = prompt;
  std::vector<float> logits(n_vocab);

  // Prefill in chunks of the forward pass's batch size.
  const auto t0 = clock::now();
  const float* out = nullptr;
  for (int pos = 0; pos < stats.n_prompt; pos += forward.max_tokens()) {
    const int n = std::min(forward.max_tokens(), stats.n_prompt - pos);
    auto r = forward.run(prompt.data() + pos, n, pos, cache);
    if (!r) return r.error();
    out = *r;
  }
  const auto t1 = clock::now();
  stats.prefill_seconds = seconds(t1 - t0);

  StopMatcher stops(params.stop);
  IncrementalDecoder decoder(tokenizer);
  const auto emit = [&](std::string_view text) { return text.empty() || on_text(text); };
  stats.finish_reason = FinishReason::length;
  for (int pos = stats.n_prompt; stats.n_generated < params.max_tokens; ++pos) {
    std::copy(out, out + n_vocab, logits.begin());
    const TokenId next = sampler.sample(logits.data(), history);
    ++stats.n_generated;
    history.push_back(next);
    if (!params.ignore_eos && tokenizer.is_eog(next)) {
      stats.finish_reason = FinishReason::stop;
      break;
    }
    if (!emit(stops.push(decoder.push(next)))) {
      stats.finish_reason = FinishReason::cancelled;
      break;
    }
    if (stops.stopped()) {
      stats.finish_reason = FinishReason::stop;
      break;
    }
    if (stats.n_generated == params.max_tokens) break;
    if (pos + 1 >= cache.n_ctx()) break;  // the context is full: length
    auto r = forward.run(&next, 1, pos, cache);
    if (!r) return r.error();
    out = *r;
  }
  if (stats.finish_reason != FinishReason::cancelled && !stops.stopped()) {
    if (!emit(stops.push(decoder.flush())) || !emit(stops.flush())) stats.finish_reason = FinishReason::cancelled;
    else if (stops.stopped()) stats.finish_reason = FinishReason::stop;
  }
  stats.decode_seconds = seconds(clock::now() - t1);
  return stats;
}

}  // namespace troupe
