// The sampler's steps one by one, and stop-string matching on streamed text.
#include <doctest/doctest.h>

#include <cmath>
#include <map>
#include <vector>

#include "sampling.hpp"

using namespace troupe;

namespace {

// Draws n tokens from the same logits and counts them.
std::map<TokenId, int> draw(const SamplingParams& p, const std::vector<float>& logits, int n) {
  Sampler s(p, static_cast<int>(logits.size()));
  std::map<TokenId, int> counts;
  for (int i = 0; i < n; ++i) {
    auto l = logits;
    ++counts[s.sample(l.data(), {})];
  }
  return counts;
}

SamplingParams plain(float temperature, uint64_t seed = 7) {
  SamplingParams p;
  p.temperature = temperature;
  p.seed = seed;
  return p;
}

// logits whose softmax is exactly the given probabilities
std::vector<float> from_probs(const std::vector<double>& probs) {
  std::vector<float> l;
  for (double p : probs) l.push_back(static_cast<float>(std::log(p)));
  return l;
}

}  // namespace

TEST_CASE("sampling: greedy takes the argmax, ties to the lowest id") {
  std::vector<float> l{0.1f, 3.0f, -2.0f, 3.0f};
  Sampler s(plain(0.0f), 4);
  CHECK(s.sample(l.data(), {}) == 1);
}

TEST_CASE("sampling: the same seed gives the same tokens and another seed other tokens") {
  std::vector<float> l(100);
  for (int i = 0; i < 100; ++i) l[i] = std::sin(i * 1.7f);
  auto run = [&](uint64_t seed) {
    Sampler s(plain(1.0f, seed), 100);
    std::vector<TokenId> out;
    for (int i = 0; i < 50; ++i) {
      auto c = l;
      out.push_back(s.sample(c.data(), {}));
    }
    return out;
  };
  CHECK(run(42) == run(42));
  CHECK(run(42) != run(43));
}

TEST_CASE("sampling: temperature 1 draws in proportion to the softmax") {
  const std::vector<double> probs{0.5, 0.3, 0.15, 0.05};
  auto counts = draw(plain(1.0f), from_probs(probs), 20000);
  for (int t = 0; t < 4; ++t) CHECK(counts[t] / 20000.0 == doctest::Approx(probs[t]).epsilon(0.08));
}

TEST_CASE("sampling: temperature sharpens and flattens") {
  const auto l = from_probs({0.6, 0.4});
  const double cold = draw(plain(0.25f), l, 10000)[0] / 10000.0;  // 0.6^4 / (0.6^4 + 0.4^4) = 0.835
  const double hot = draw(plain(4.0f), l, 10000)[0] / 10000.0;    // 0.6^.25 / (0.6^.25 + 0.4^.25) = 0.525
  CHECK(cold == doctest::Approx(0.835).epsilon(0.03));
  CHECK(hot == doctest::Approx(0.525).epsilon(0.03));
}

TEST_CASE("sampling: top_k, top_p and min_p cut the tail") {
  const auto l = from_probs({0.5, 0.3, 0.15, 0.05});
  SamplingParams k = plain(1.0f);
  k.top_k = 1;
  CHECK(draw(k, l, 500).size() == 1);

  SamplingParams p = plain(1.0f);
  p.top_p = 0.75f;  // 0.5 falls short, 0.5 + 0.3 reaches it: tokens 2 and 3 never come
  auto pc = draw(p, l, 5000);
  CHECK(pc.count(2) == 0);
  CHECK(pc.count(3) == 0);
  CHECK(pc[0] / 5000.0 == doctest::Approx(0.5 / 0.8).epsilon(0.05));

  SamplingParams m = plain(1.0f);
  m.min_p = 0.5f;  // keeps p >= 0.25: tokens 0 and 1
  auto mc = draw(m, l, 5000);
  CHECK(mc.size() == 2);
  CHECK(mc.count(2) == 0);
}

TEST_CASE("sampling: repetition, presence and frequency penalties change the seen tokens' logits") {
  SamplingParams p = plain(0.0f);
  p.repetition_penalty = 2.0f;
  p.presence_penalty = 0.5f;
  p.frequency_penalty = 0.25f;
  Sampler s(p, 4);
  std::vector<float> l{4.0f, -1.0f, 3.9f, 0.0f};
  // token 0 seen twice, token 1 once; token 2 unseen
  const TokenId t = s.sample(l.data(), {0, 1, 0});
  CHECK(l[0] == doctest::Approx(4.0 / 2 - 0.5 - 2 * 0.25));
  CHECK(l[1] == doctest::Approx(-1.0 * 2 - 0.5 - 1 * 0.25));
  CHECK(l[2] == 3.9f);
  CHECK(t == 2);

  SamplingParams last = p;
  last.penalty_last_n = 1;  // only the last token (0) counts
  Sampler s2(last, 4);
  std::vector<float> l2{4.0f, -1.0f, 3.9f, 0.0f};
  s2.sample(l2.data(), {1, 1, 0});
  CHECK(l2[1] == -1.0f);
  CHECK(l2[0] == doctest::Approx(4.0 / 2 - 0.5 - 0.25));
}

TEST_CASE("sampling: logit bias bans and forces tokens") {
  SamplingParams p = plain(1.0f);
  p.logit_bias = {{0, -INFINITY}, {3, 100.0f}};
  auto counts = draw(p, from_probs({0.9, 0.05, 0.04, 0.01}), 200);
  CHECK(counts.size() == 1);
  CHECK(counts[3] == 200);
  SamplingParams out_of_range = plain(0.0f);
  out_of_range.logit_bias = {{-1, 5.0f}, {99, 5.0f}};  // ignored, no crash
  CHECK(draw(out_of_range, from_probs({0.9, 0.1}), 1)[0] == 1);
}
