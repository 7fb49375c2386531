// The thread team: every index once, pieces aligned, and a forward pass whose logits do not depend on the team.
#include <doctest/doctest.h>

#include <atomic>
#include <cstring>
#include <vector>

#include "model.hpp"
#include "real_model.hpp"
#include "thread_team.hpp"

using namespace troupe;

TEST_CASE("thread team: run covers every index exactly once, in aligned pieces, for any size") {
  for (int size : {1, 2, 3, 4}) {
    ThreadTeam team(size);
    CHECK(team.size() == size);
    for (int64_t n : {1, 2, 5, 16, 17, 1000}) {
      for (int64_t align : {1, 16}) {
        CAPTURE(size);
        CAPTURE(n);
        CAPTURE(align);
        std::vector<std::atomic<int>> hits(n);
        std::atomic<int> bad_start{0};
        for (int rep = 0; rep < 50; ++rep) {  // back to back, as a step's matmuls are
          team.run(n, [&](int64_t b, int64_t e) {
            if (b % align != 0) ++bad_start;
            for (int64_t i = b; i < e; ++i) ++hits[i];
          }, align);
        }
        for (int64_t i = 0; i < n; ++i) REQUIRE(hits[i].load() == 50);
        CHECK(bad_start.load() == 0);
      }
    }
  }
}

TEST_CASE("thread team: a forward pass split over a team gives the same logits bit for bit") {
  auto model = test::real_model();
  const std::vector<TokenId> prompt = {1, 504, 3458, 282, 4649, 314, 253, 1345, 30, 2, 198, 9690, 198};
  Forward alone(model, 64), split(model, 64);
  ThreadTeam team(3);
  split.set_team(&team);
  KvCache ca = alone.make_cache(128), cb = split.make_cache(128);
  auto a = alone.run(prompt.data(), static_cast<int>(prompt.size()), 0, ca, true);
  auto b = split.run(prompt.data(), static_cast<int>(prompt.size()), 0, cb, true);
  REQUIRE(a.has_value());
  REQUIRE(b.has_value());
  const size_t n = prompt.size() * model->config().n_vocab;
  CHECK(std::memcmp(*a, *b, n * sizeof(float)) == 0);
  // and a decode step after it
  const TokenId next = 28;
  a = alone.run(&next, 1, static_cast<int>(prompt.size()), ca);
  b = split.run(&next, 1, static_cast<int>(prompt.size()), cb);
  REQUIRE(a.has_value());
  REQUIRE(b.has_value());
  CHECK(std::memcmp(*a, *b, model->config().n_vocab * sizeof(float)) == 0);
}

// Tasks of changing sizes back to back: a worker still finishing one task must not claim a piece of the next (an
// earlier version could, and then miscounted the next task's pieces and waited forever).
TEST_CASE("thread team: thousands of back-to-back tasks of changing sizes each run every index once") {
  ThreadTeam team(3);
  std::vector<int> hits(64);
  for (int rep = 0; rep < 20000; ++rep) {
    const int64_t n = 1 + (rep * 7) % 61;
    std::fill(hits.begin(), hits.end(), 0);
    team.run(n, [&](int64_t b, int64_t e) {
      for (int64_t i = b; i < e; ++i) ++hits[i];
    });
    for (int64_t i = 0; i < n; ++i) REQUIRE(hits[i] == 1);
  }
}
