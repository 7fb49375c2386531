// Fidelity against llama.cpp (tests/golden/, made by scripts/make_goldens.py), on the real default model, from the
// reference's own token ids. Two references, because the quantised arithmetic is chaotic:
//
// 1. Exact path (Precision::exact: fp32 activations, weights dequantised in registers, fp32 KV cache) against
//    llama.cpp on the F32 dequantisation of the same weights with an F32 KV cache. Both compute in fp32 and differ only
//    in the order of float additions, so logits agree to a few 1e-3: the first token must agree on every prompt and
//    whole 32-token greedy continuations on at least 90% (the rest: near-ties, where the two best logits are within
//    that rounding of each other).
// 2. Fast path (Precision::fast: 8-bit activations into Q4_1/Q8_0 dot products, fp16 KV) against llama.cpp on the
//    Q4_1 file. Our activation quantiser rounds exactly as llama.cpp's x86 path does (a one-token prompt gives
//    bit-identical logits), but any difference in a float sum can flip an 8-bit rounding, which then spreads through
//    30 layers: llama.cpp's own logits move by up to 0.9 between its batched and token-by-token evaluation of the
//    same prompt (max_abs_diff_token_by_token in the golden file). So this comparison demands what the reference
//    demands of itself: logits within that spread, the top token equal wherever the reference's own top-2 margin
//    exceeds its spread, and greedy divergences only where the reference was not confident.
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <nlohmann/json.hpp>

#include "model.hpp"
#include "real_model.hpp"
#include "test_util.hpp"

using namespace troupe;
using json = nlohmann::json;

namespace {

json golden(const std::string& name) {
  return json::parse(test::read_text(test::source_path("tests/golden/" + name)));
}

// Runs the prompt in chunks and returns the last token's logits.
const float* prefill(Forward& fw, KvCache& cache, const std::vector<TokenId>& tokens) {
  const float* logits = nullptr;
  for (size_t done = 0; done < tokens.size();) {
    const int n = static_cast<int>(std::min<size_t>(fw.max_tokens(), tokens.size() - done));
    auto r = fw.run(tokens.data() + done, n, static_cast<int>(done), cache);
    REQUIRE(r.has_value());
    logits = *r;
    done += n;
  }
  return logits;
}

TokenId argmax(const float* l, int n) { return static_cast<TokenId>(std::max_element(l, l + n) - l); }

struct LogitsReport {
  size_t cases = 0, top1_equal = 0;
  double worst = 0;
  std::string worst_case;
};

// First-step logits of every golden case. `top1_slack(c)`: how far the reference's top-2 margin may be from a tie
// and still excuse a different top token (0: never).
template <class Slack>
LogitsReport check_logits(Precision precision, const std::string& file, Slack top1_slack) {
  auto model = test::real_model();
  Forward fw(model, 64, precision);
  const int n_vocab = model->config().n_vocab;
  const json g = golden(file);
  REQUIRE(g["cases"].size() >= 20);
  LogitsReport rep;
  for (const auto& c : g["cases"]) {
    CAPTURE(c["name"].get<std::string>());
    const auto tokens = c["tokens"].get<std::vector<TokenId>>();
    KvCache cache = fw.make_cache(static_cast<int>(tokens.size()) + 1);
    const float* logits = prefill(fw, cache, tokens);
    const auto& top = c["top"];
    ++rep.cases;
    if (argmax(logits, n_vocab) == top[0][0].get<TokenId>()) {
      ++rep.top1_equal;
    } else {
      const double ref_margin = top[0][1].get<double>() - top[1][1].get<double>();
      CHECK_MESSAGE(ref_margin < top1_slack(c), "top token differs though the reference's margin is ", ref_margin);
    }
    for (const auto& entry : top) {
      const double diff = std::fabs(logits[entry[0].get<TokenId>()] - entry[1].get<double>());
      if (diff > rep.worst) {
        rep.worst = diff;
        rep.worst_case = c["name"];
      }
    }
  }
  std::printf("fidelity (%s): top-1 equal on %zu of %zu prompts; largest top-20 logit difference %.4f (%s)\n",
              file.c_str(), rep.top1_equal, rep.cases, rep.worst, rep.worst_case.c_str());
  return rep;
}

struct GreedyReport {
  size_t cases = 0, equal = 0;
};

// 32-token greedy continuations. A divergence must come where the reference's own margin was below `max_ref_margin`.
GreedyReport check_greedy(Precision precision, const std::string& file, double max_ref_margin) {
  auto model = test::real_model();
  Forward fw(model, 64, precision);
  const int n_vocab = model->config().n_vocab;
  const json g = golden(file);
  REQUIRE(g["cases"].size() >= 20);
  GreedyReport rep;
  for (const auto& c : g["cases"]) {
    const std::string name = c["name"];
    const auto tokens = c["tokens"].get<std::vector<TokenId>>();
    const auto want = c["continuation"].get<std::vector<TokenId>>();
    const auto margins = c["margins"].get<std::vector<double>>();
    KvCache cache = fw.make_cache(static_cast<int>(tokens.size() + want.size()) + 1);
    const float* logits = prefill(fw, cache, tokens);
    int pos = static_cast<int>(tokens.size());
    size_t k = 0;
    for (; k < want.size(); ++k) {
      const TokenId got = argmax(logits, n_vocab);
      if (got != want[k]) break;
      auto r = fw.run(&got, 1, pos++, cache);
      REQUIRE(r.has_value());
      logits = *r;
    }
    ++rep.cases;
    if (k == want.size()) {
      ++rep.equal;
    } else {
      std::printf("fidelity (%s): '%s' diverges at token %zu; the reference's margin there was %.4f\n", file.c_str(),
                  name.c_str(), k, margins[k]);
      CHECK_MESSAGE(margins[k] < max_ref_margin, name, " diverges where the reference was sure");
    }
  }
  std::printf("fidelity (%s): %zu of %zu greedy continuations equal token for token\n", file.c_str(), rep.equal,
              rep.cases);
  return rep;
}

}  // namespace

TEST_CASE("fidelity: exact path, first-step logits against llama.cpp in F32: top-1 on every prompt") {
  auto rep = check_logits(Precision::exact, "logits_f32.json", [](const json&) { return 0.0; });
  CHECK(rep.top1_equal == rep.cases);
  CHECK(rep.worst < 0.02);
}

TEST_CASE("fidelity: exact path, greedy continuations equal llama.cpp's in F32 on at least 90% of prompts") {
  auto rep = check_greedy(Precision::exact, "greedy_f32.json", 0.02);
  CHECK(rep.equal * 10 >= rep.cases * 9);
}

TEST_CASE("fidelity: fast path, first-step logits against llama.cpp on the Q4_1 file, within its own spread") {
  // The top token may differ only where the reference's top-2 margin is inside its own batched vs token-by-token spread.
  auto rep = check_logits(Precision::fast, "logits.json",
                          [](const json& c) { return c["max_abs_diff_token_by_token"].get<double>(); });
  CHECK(rep.worst < 1.0);             // the reference's own spread reaches 0.9
  CHECK(rep.top1_equal * 10 >= rep.cases * 9);
}

TEST_CASE("fidelity: fast path, greedy continuations against llama.cpp on the Q4_1 file diverge only at near-ties") {
  check_greedy(Precision::fast, "greedy.json", 0.5);
}
