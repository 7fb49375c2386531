// Shards on the real model: cutting layers into head groups and stages, with a paged KV cache, computes what the
// single-process Forward computes (bit for bit with one shard per stage; to rounding with more).
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <random>

#include "shard.hpp"
#include "real_model.hpp"
#include "test_util.hpp"

using namespace troupe;

namespace {

// Runs a plan of p stages x t shards synchronously, adding partials in shard order as the stage actor does.
class SplitRunner {
 public:
  SplitRunner(std::shared_ptr<const Model> m, int t, int p, int n_blocks, int block_size, int max_tokens,
              Precision precision)
      : model_(m), stage_(m, precision, max_tokens) {
    const ModelConfig& c = m->config();
    auto layers = split_range(c.n_layer, p, 1);
    REQUIRE(layers.has_value());
    for (auto [l0, l1] : *layers) {
      auto specs = split_stage(c, l0, l1, t);
      REQUIRE(specs.has_value());
      std::vector<ShardWorker> shards;
      for (const auto& s : *specs) {
        REQUIRE(check_shard(*m, s).has_value());
        shards.emplace_back(m, s, precision, max_tokens, n_blocks, block_size);
      }
      stages_.push_back(std::move(shards));
    }
  }

  // logits of the last token of each sequence in the step
  std::vector<std::vector<float>> run(const std::vector<TokenId>& tokens, const StepLayout& step) {
    const ModelConfig& c = model_->config();
    const int n = step.n_tokens;
    std::vector<float> x(static_cast<size_t>(n) * c.n_embd), xn(x.size());
    std::vector<std::vector<double>> parts(stages_[0].size(), std::vector<double>(x.size()));
    std::vector<const double*> views;
    for (const auto& p : parts) views.push_back(p.data());
    stage_.embed(tokens.data(), n, x.data());
    for (auto& shards : stages_) {
      for (int il = shards[0].spec().layer_begin; il < shards[0].spec().layer_end; ++il) {
        stage_.norm(model_->layer(il).attn_norm, x.data(), n, xn.data());
        for (size_t g = 0; g < shards.size(); ++g) {
          REQUIRE(shards[g].attention(il, step, xn.data(), parts[g].data()).has_value());
        }
        stage_.add_partials(x.data(), n, views);
        stage_.norm(model_->layer(il).ffn_norm, x.data(), n, xn.data());
        for (size_t g = 0; g < shards.size(); ++g) {
          REQUIRE(shards[g].ffn(il, n, xn.data(), parts[g].data()).has_value());
        }
        stage_.add_partials(x.data(), n, views);
      }
    }
    std::vector<int> rows;
    for (const auto& s : step.seqs) rows.push_back(s.first + s.n - 1);
    std::vector<float> logits(rows.size() * c.n_vocab);
    stage_.logits(x.data(), rows, logits.data());
    std::vector<std::vector<float>> out;
    for (size_t r = 0; r < rows.size(); ++r) out.emplace_back(&logits[r * c.n_vocab], &logits[(r + 1) * c.n_vocab]);
    return out;
  }

 private:
  std::shared_ptr<const Model> model_;
  StageCompute stage_;
  std::vector<std::vector<ShardWorker>> stages_;
};

std::vector<float> reference_logits(std::shared_ptr<const Model> m, const std::vector<TokenId>& tokens,
                                    Precision precision) {
  Forward fw(m, 64, precision);
  KvCache cache = fw.make_cache(64);
  auto r = fw.run(tokens.data(), static_cast<int>(tokens.size()), 0, cache);
  REQUIRE(r.has_value());
  return std::vector<float>(*r, *r + m->config().n_vocab);
}

float max_diff(const std::vector<float>& a, const std::vector<float>& b) {
  float d = 0;
  for (size_t i = 0; i < a.size(); ++i) d = std::max(d, std::abs(a[i] - b[i]));
  return d;
}

}  // namespace

TEST_CASE("shard: ranges split evenly on block boundaries, and impossible splits are refused") {
  auto r = split_range(1536, 3, 32);
  REQUIRE(r.has_value());
  CHECK(*r == std::vector<std::pair<int, int>>{{0, 512}, {512, 1024}, {1024, 1536}});
  auto h = split_range(3, 2, 1);
  REQUIRE(h.has_value());
  CHECK(*h == std::vector<std::pair<int, int>>{{0, 2}, {2, 3}});  // uneven groups: 2 and 1
  CHECK_FALSE(split_range(3, 4, 1).has_value());
  CHECK_FALSE(split_stage(test::real_model()->config(), 0, 1, 4).has_value());  // more groups than KV heads
}

// Shards return unrounded partial sums and the kernels accumulate in double across 64-column chunks, so every split
// gives Forward's floats: logits equal bit for bit, in both precisions, however the model is cut.
TEST_CASE("shard: two sequences through scattered blocks give Forward's logits bit for bit in every split") {
  auto m = test::real_model();
  for (Precision precision : {Precision::fast, Precision::exact}) {
  const bool exact = precision == Precision::exact;
  CAPTURE(exact);
  const std::vector<TokenId> a{504, 3575, 282, 4649, 314, 28, 284, 3575, 282, 3565, 314};
  const std::vector<TokenId> b{1, 9690, 198, 2683, 359, 253, 5356, 5646, 11173};
  const auto ref_a = reference_logits(m, a, precision), ref_b = reference_logits(m, b, precision);
  for (auto [t, p] : std::vector<std::pair<int, int>>{{1, 1}, {1, 3}, {2, 1}, {3, 2}}) {
    CAPTURE(t);
    CAPTURE(p);
    const int bs = 4;
    SplitRunner runner(m, t, p, /*n_blocks=*/16, bs, 64, precision);
    // Blocks handed out in a shuffled order, and the two prompts run as one step in two chunks each.
    std::vector<int> blocks(16);
    std::iota(blocks.begin(), blocks.end(), 0);
    std::shuffle(blocks.begin(), blocks.end(), std::mt19937(t * 10 + p));
    StepLayout::Seq sa{0, 0, 0, {blocks[0], blocks[1], blocks[2]}}, sb{0, 0, 0, {blocks[3], blocks[4], blocks[5]}};
    std::vector<float> la, lb;
    for (int chunk = 0; chunk < 2; ++chunk) {
      const int ca = chunk == 0 ? 6 : static_cast<int>(a.size()) - 6;
      const int cb = chunk == 0 ? 4 : static_cast<int>(b.size()) - 4;
      StepLayout step;
      sa.first = 0, sa.n = ca, sa.pos0 = chunk == 0 ? 0 : 6;
      sb.first = ca, sb.n = cb, sb.pos0 = chunk == 0 ? 0 : 4;
      step.seqs = {sa, sb};
      step.n_tokens = ca + cb;
      std::vector<TokenId> tokens(a.begin() + sa.pos0, a.begin() + sa.pos0 + ca);
      tokens.insert(tokens.end(), b.begin() + sb.pos0, b.begin() + sb.pos0 + cb);
      auto out = runner.run(tokens, step);
      la = out[0], lb = out[1];
    }
    const float da = max_diff(la, ref_a), db = max_diff(lb, ref_b);
    MESSAGE(std::string(exact ? "exact" : "fast") << " t=" << t << " p=" << p << ": largest logit difference to Forward "
                                       << std::max(da, db));
    CHECK(da == 0.0f);
    CHECK(db == 0.0f);
    const auto argmax = [](const std::vector<float>& v) { return std::max_element(v.begin(), v.end()) - v.begin(); };
    CHECK(argmax(la) == argmax(ref_a));
    CHECK(argmax(lb) == argmax(ref_b));
  }
}
}
