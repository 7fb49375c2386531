// hostile_peer.cpp: a CAF peer that connects to a `troupe worker` without knowing its secret and tries what the
// middleman lets any peer try (tests/cli/dist_security.sh runs it):
//   1. system messages to the published gate: an exit with reason kill (untrappable in CAF), an error, a down
//      message, an anonymous exit, a message of no known shape, a link to it followed by this process's death
//   2. the handshake done wrong: a short nonce, an attach with an unknown nonce, an attach with a MAC made with the
//      wrong secret, an attach whose spec is nonsense
// then checks that the gate still answers a hello. Prints one line per probe; exit 0 when the gate survived all of
// them and refused every attach, 1 otherwise.
// Usage: troupe-hostile-peer HOST PORT [WRONG_SECRET]
#include <caf/all.hpp>
#include <caf/io/all.hpp>

#include <chrono>
#include <cstdio>
#include <iostream>
#include <string>

#include "remote.hpp"

using namespace troupe;
using namespace std::chrono_literals;

namespace {

int failures = 0;

void report(bool ok, const std::string& what) {
  std::printf("%s: %s\n", ok ? "ok" : "FAIL", what.c_str());
  if (!ok) ++failures;
}

// A hello: true when the gate answers with a 32-byte nonce and a 32-byte MAC.
bool hello(caf::scoped_actor& self, const caf::actor& gate, std::string* nonce_w = nullptr) {
  bool ok = false;
  self->request(gate, 5s, hello_atom::value, Blob{random_bytes(32)})
      .receive(
          [&](Blob& n, Blob& mac, uint64_t, std::string&) {
            ok = n.bytes.size() == 32 && mac.bytes.size() == 32;
            if (nonce_w) *nonce_w = n.bytes;
          },
          [&](caf::error&) {});
  return ok;
}

// An attach: the error text the gate answered with ("" when it spawned something, "no answer" on a timeout).
std::string attach(caf::scoped_actor& self, const caf::actor& gate, const std::string& nonce_w, const std::string& mac,
                   const AttachSpec& spec) {
  std::string out = "no answer";
  self->request(gate, 5s, attach_atom::value, Blob{nonce_w}, Blob{mac}, spec, caf::actor_cast<caf::actor>(self))
      .receive([&](std::string& error, caf::actor&, uint64_t) { out = error; }, [&](caf::error&) {});
  return out;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 3) {
    std::cerr << "usage: troupe-hostile-peer HOST PORT [WRONG_SECRET]\n";
    return 2;
  }
  const std::string host = argv[1];
  const auto port = static_cast<uint16_t>(std::stoi(argv[2]));
  const std::string secret = argc > 3 ? argv[3] : "not the secret";
  caf::actor_system_config cfg;
  configure_remote(cfg);
  caf::actor_system sys{cfg};
  caf::scoped_actor self{sys};

  auto gate = sys.middleman().remote_actor(host, port);
  if (!gate) {
    std::printf("FAIL: cannot connect: %s\n", sys.render(gate.error()).c_str());
    return 1;
  }
  report(hello(self, *gate), "the gate answers a hello");

  // 1. System messages a peer can send to any actor whose id it knows.
  self->send_exit(*gate, caf::exit_reason::kill);
  self->send_exit(*gate, caf::exit_reason::user_shutdown);
  caf::anon_send_exit(*gate, caf::exit_reason::kill);
  self->send(*gate, caf::make_error(caf::sec::runtime_error, "hostile"));
  self->send(*gate, caf::down_msg{self->address(), caf::exit_reason::kill});
  self->send(*gate, 42, std::string("no such message"));
  self->send(*gate, stop_atom::value);  // the gate's own stop, from another process
  caf::anon_send(*gate, hello_atom::value, Blob{random_bytes(32)});
  report(hello(self, *gate), "the gate survives exit (kill), error, down, stop and unknown messages");

  // A linked actor in this process that dies: its exit would propagate to a linked gate.
  {
    auto doomed = sys.spawn([](caf::event_based_actor*) -> caf::behavior { return {[](int) {}}; });
    caf::anon_send(*gate, caf::link_atom::value, caf::actor_cast<caf::strong_actor_ptr>(doomed));
    caf::anon_send_exit(doomed, caf::exit_reason::kill);
  }
  std::this_thread::sleep_for(200ms);
  report(hello(self, *gate), "the gate survives a link request from a peer whose actor then dies");

  // 2. The handshake done wrong.
  bool short_nonce_refused = true;
  self->request(*gate, 5s, hello_atom::value, Blob{"short"})
      .receive([&](Blob&, Blob&, uint64_t, std::string&) { short_nonce_refused = false; }, [&](caf::error&) {});
  report(short_nonce_refused, "a hello with a 5-byte nonce is refused");

  AttachSpec spec;
  spec.n_stages = 2;
  spec.stage_begin = 1;
  spec.stage_end = 2;
  spec.max_tokens = 256;
  spec.n_blocks = 16;
  spec.max_context = 512;
  std::string nonce_w;
  std::string e = attach(self, *gate, random_bytes(32), random_bytes(32), spec);
  report(!e.empty() && e != "no answer", "an attach with an unknown nonce is refused (" + e + ")");
  hello(self, *gate, &nonce_w);
  e = attach(self, *gate, nonce_w, hmac_sha256(secret, "troupe-coordinator", nonce_w, random_bytes(32)), spec);
  report(e.find("authentication failed") != std::string::npos, "an attach with a wrong MAC is refused (" + e + ")");
  e = attach(self, *gate, nonce_w, random_bytes(32), spec);
  report(!e.empty() && e != "no answer", "a nonce is good for one attach only (" + e + ")");
  spec.n_blocks = -5;
  spec.stage_end = 1000;
  hello(self, *gate, &nonce_w);
  e = attach(self, *gate, nonce_w, random_bytes(32), spec);
  report(!e.empty() && e != "no answer", "an attach with a nonsense spec and no MAC is refused (" + e + ")");

  report(hello(self, *gate), "the gate still answers a hello at the end");
  return failures == 0 ? 0 : 1;
}
