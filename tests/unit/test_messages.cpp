// The troupe's messages survive CAF serialization (what the middleman will do between processes): a step's data
// and shared activation buffers come back equal, in fresh objects.
#include <doctest/doctest.h>

#include <caf/binary_deserializer.hpp>
#include <caf/binary_serializer.hpp>

#include "messages.hpp"

using namespace troupe;

namespace {

template <class T>
T round_trip(caf::actor_system& sys, T& value) {
  std::vector<char> buf;
  caf::binary_serializer sink{sys, buf};
  REQUIRE_FALSE(sink(value));
  T out;
  caf::binary_deserializer source{sys, buf};
  REQUIRE_FALSE(source(out));
  return out;
}

}  // namespace

TEST_CASE("messages: step data and shared buffers round-trip through CAF's binary serializer") {
  caf::actor_system_config cfg;
  caf::actor_system sys{cfg};
  StepData step;
  step.step_id = 42;
  step.layout.seqs = {{0, 3, 0, {5, 9}}, {3, 1, 17, {1, 2, 7}}};
  step.layout.n_tokens = 4;
  step.tokens = {504, 3575, 282, 9};
  step.logit_rows = {2, 3};
  Shared<StepData> shared = share(step);
  Shared<StepData> back = round_trip(sys, shared);
  REQUIRE(back.ptr);
  CHECK(back.ptr != shared.ptr);  // a fresh object, as on another host
  CHECK(back->step_id == 42);
  REQUIRE(back->layout.seqs.size() == 2);
  CHECK(back->layout.seqs[1].pos0 == 17);
  CHECK(back->layout.seqs[1].block_table == std::vector<int>{1, 2, 7});
  CHECK(back->layout.n_tokens == 4);
  CHECK(back->tokens == step.tokens);
  CHECK(back->logit_rows == step.logit_rows);

  Activations x = share(std::vector<float>{1.5f, -2.25f, 3e-8f});
  CHECK(*round_trip(sys, x) == *x);
  Partials p = share(std::vector<double>{1e-300, -7.0});
  CHECK(*round_trip(sys, p) == *p);
}
