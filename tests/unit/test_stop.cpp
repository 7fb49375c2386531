// Stop strings on streamed text: nothing past a stop string is emitted, and a possible start of one is held back.
#include <doctest/doctest.h>

#include "generate.hpp"

using troupe::StopMatcher;

TEST_CASE("stop: a stop string split across pieces ends the output before it") {
  StopMatcher m({"wor", "xyz"});
  CHECK(m.push("Hel") == "Hel");
  CHECK(m.push("lo w") == "lo ");  // "w" might start "wor"
  CHECK_FALSE(m.stopped());
  CHECK(m.push("orld") == "");
  CHECK(m.stopped());
  CHECK(m.push("more") == "");
  CHECK(m.flush() == "");
}

TEST_CASE("stop: a held-back tail that does not become a stop string is released") {
  StopMatcher m({"</s>"});
  CHECK(m.push("a <") == "a ");
  CHECK(m.push("/b>") == "</b>");
  CHECK(m.push("end </") == "end ");
  CHECK(m.flush() == "</");
}

TEST_CASE("stop: the earliest of several stop strings wins, empty ones are ignored") {
  StopMatcher m({"", "cd", "bcdef"});
  CHECK(m.push("abcdefg") == "ab");
  CHECK(m.stopped());
  StopMatcher none({});
  CHECK(none.push("anything") == "anything");
}
