// The llama model on the real default model file: hyperparameters from metadata, and the forward pass giving the
// same logits however a prompt is cut into batches (the KV cache and batched matmuls agree with one-at-a-time).
#include <doctest/doctest.h>

#include <cmath>
#include <vector>

#include "model.hpp"
#include "real_model.hpp"
#include "test_util.hpp"

using namespace troupe;

TEST_CASE("model: hyperparameters are the file's metadata") {
  auto m = test::real_model();
  const GgufFile& f = m->file();
  const ModelConfig& c = m->config();
  CHECK(c.n_layer == *f.get_int("llama.block_count"));
  CHECK(c.n_embd == *f.get_int("llama.embedding_length"));
  CHECK(c.n_head == *f.get_int("llama.attention.head_count"));
  CHECK(c.n_head_kv == *f.get_int("llama.attention.head_count_kv"));
  CHECK(c.n_ff == *f.get_int("llama.feed_forward_length"));
  CHECK(c.rope_theta == static_cast<float>(*f.get_float("llama.rope.freq_base")));
  CHECK(c.n_vocab == f.tensor("token_embd.weight")->dims[1]);
  CHECK(c.head_dim * c.n_head == c.n_embd);
}

TEST_CASE("model: batch size does not change the logits") {
  auto m = test::real_model();
  const int n_vocab = m->config().n_vocab;
  const std::vector<TokenId> prompt{504, 3575, 282, 4649, 314, 28, 284, 3575, 282, 3565, 314};
  auto run_in_chunks = [&](int chunk) {
    Forward fw(m, chunk);
    KvCache cache = fw.make_cache(32);
    std::vector<float> last;
    for (size_t done = 0; done < prompt.size();) {
      const int n = std::min<int>(chunk, static_cast<int>(prompt.size() - done));
      auto r = fw.run(prompt.data() + done, n, static_cast<int>(done), cache);
      REQUIRE(r.has_value());
      last.assign(*r, *r + n_vocab);
      done += n;
    }
    return last;
  };
  const auto whole = run_in_chunks(64);
  for (int chunk : {1, 3, 5}) {
    const auto cut = run_in_chunks(chunk);
    float worst = 0;
    for (int i = 0; i < n_vocab; ++i) worst = std::max(worst, std::fabs(whole[i] - cut[i]));
    CAPTURE(chunk);
    CHECK(worst < 1e-3f);
  }
}

TEST_CASE("model: all_logits gives every position's logits, the last equal to the default") {
  auto m = test::real_model();
  const int n_vocab = m->config().n_vocab;
  const std::vector<TokenId> prompt{504, 3575, 282, 4649};
  Forward fw(m, 8);
  KvCache a = fw.make_cache(8), b = fw.make_cache(8);
  auto all = fw.run(prompt.data(), 4, 0, a, /*all_logits=*/true);
  REQUIRE(all.has_value());
  std::vector<float> copy(*all, *all + 4 * n_vocab);
  auto last = fw.run(prompt.data(), 4, 0, b);
  REQUIRE(last.has_value());
  for (int i = 0; i < n_vocab; ++i) REQUIRE(copy[3 * n_vocab + i] == (*last)[i]);
  // position 0's logits equal a run of the first token alone
  KvCache c = fw.make_cache(8);
  auto first = fw.run(prompt.data(), 1, 0, c);
  for (int i = 0; i < n_vocab; i += 97) REQUIRE(copy[i] == doctest::Approx((*first)[i]).epsilon(1e-4));
}

TEST_CASE("model: out-of-range tokens, positions and batches are errors, not crashes") {
  auto m = test::real_model();
  Forward fw(m, 4);
  KvCache cache = fw.make_cache(4);
  const TokenId bad = m->config().n_vocab;
  CHECK(fw.run(&bad, 1, 0, cache).error().kind == ErrorKind::invalid_argument);
  const TokenId neg = -1;
  CHECK(fw.run(&neg, 1, 0, cache).error().kind == ErrorKind::invalid_argument);
  const TokenId ok[5] = {1, 2, 3, 4, 5};
  CHECK(fw.run(ok, 5, 0, cache).error().kind == ErrorKind::invalid_argument);  // batch over max_tokens
  CHECK(fw.run(ok, 2, 3, cache).error().kind == ErrorKind::out_of_memory);     // past the context
  CHECK(fw.run(ok, 4, 0, cache).has_value());
}
