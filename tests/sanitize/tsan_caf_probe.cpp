// Does ThreadSanitizer see CAF 0.17's message passing as synchronisation when CAF is Debian's uninstrumented
// libcaf_core? One actor fills a vector and sends it (moved) to another, which reads it: a correct program. Built with
// -DPLANTED, both handlers also bump a plain global int: a real race, which a usable suppression must still report.
// docs/hardening.md ("ThreadSanitizer") has the results and the commands:
//   g++ -std=c++20 -fsanitize=thread -g -O1 tests/sanitize/tsan_caf_probe.cpp -o probe -lcaf_core
//   TSAN_OPTIONS=suppressions=FILE ./probe
#include <caf/all.hpp>

#include <cstdio>
#include <vector>

struct Box {
  std::vector<int> values;  // (1000)
};
CAF_ALLOW_UNSAFE_MESSAGE_TYPE(Box)

int planted = 0;  // touched without synchronisation by both actors when PLANTED is defined

caf::behavior reader(caf::event_based_actor* self) {
  return {[=](const Box& box) {
#ifdef PLANTED
    planted += 1;
#endif
    long sum = 0;
    for (int x : box.values) sum += x;
    std::printf("sum %ld\n", sum);
    self->quit();
  }};
}

void writer(caf::event_based_actor* self, caf::actor dest) {
  for (int i = 0; i < 3; ++i) {
#ifdef PLANTED
    planted += 1;
#endif
    Box box;
    box.values.assign(1000, i + 1);
    self->send(dest, std::move(box));
  }
}

int main() {
  caf::actor_system_config cfg;
  caf::actor_system system{cfg};
  auto r = system.spawn(reader);
  system.spawn(writer, r);
}
