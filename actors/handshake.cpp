// handshake.cpp: a link's side of the attach (remote.hpp): connect, hello, check the worker's MAC and model, attach.
// Shared by the links of stage ranges (link_actor.cpp) and of head groups (group_link.cpp).
#include <caf/io/middleman.hpp>

#include "remote.hpp"

namespace troupe {

namespace {

struct Handshake {
  caf::event_based_actor* self;
  std::string secret;
  FileDigest digest;
  AttachSpec spec;
  std::string nonce_c = random_bytes(32);
  std::function<void(caf::actor, uint64_t)> done;
  std::function<void(const std::string&)> fail;
};

void attach(const std::shared_ptr<Handshake>& h, const caf::actor& gate, const std::string& nonce_w,
            const std::string& mac_w, uint64_t model_size, const std::string& model_sha256) {
  // The worker proves it knows the secret before the coordinator proves it does.
  if (!same_bytes(mac_w, hmac_sha256(h->secret, "troupe-worker", h->nonce_c, nonce_w))) {
    h->fail("the worker failed authentication (its secret differs from TROUPE_SECRET)");
    return;
  }
  if (model_size != h->digest.size || model_sha256 != h->digest.sha256) {
    h->fail("model mismatch: the worker's file has " + std::to_string(model_size) + " bytes, sha256 " + model_sha256 +
            "; ours has " + std::to_string(h->digest.size) + " bytes, sha256 " + h->digest.sha256);
    return;
  }
  const Blob mac_c{hmac_sha256(h->secret, "troupe-coordinator", nonce_w, h->nonce_c)};
  h->self->request(gate, std::chrono::seconds(60), attach_atom::value, Blob{nonce_w}, mac_c, h->spec,
                   caf::actor_cast<caf::actor>(h->self))
      .then(
          [h](std::string& error, caf::actor& shell, uint64_t session) {
            if (!error.empty() || !shell) {
              h->fail("refused the attach: " + (error.empty() ? std::string("no shell") : error));
              return;
            }
            h->done(shell, session);
          },
          [h](caf::error& e) { h->fail("attach: " + h->self->system().render(e)); });
}

}  // namespace

void attach_to_worker(caf::event_based_actor* self, const std::string& host, int port, const std::string& secret,
                      const FileDigest& digest, const AttachSpec& spec,
                      std::function<void(caf::actor shell, uint64_t session)> done,
                      std::function<void(const std::string& why)> fail) {
  auto h = std::make_shared<Handshake>(Handshake{self, secret, digest, spec});
  h->done = std::move(done);
  h->fail = std::move(fail);
  // Connect (the middleman's actor answers asynchronously), then hello, then attach.
  auto mm = self->system().middleman().actor_handle();
  self->request(mm, std::chrono::seconds(5), caf::connect_atom::value, host, static_cast<uint16_t>(port))
      .then(
          [h](caf::node_id&, caf::strong_actor_ptr& gate_ptr, std::set<std::string>&) {
            if (!gate_ptr) {
              h->fail("nothing is published there");
              return;
            }
            auto gate = caf::actor_cast<caf::actor>(gate_ptr);
            h->self->request(gate, std::chrono::seconds(5), hello_atom::value, Blob{h->nonce_c})
                .then(
                    [h, gate](Blob& nonce_w, Blob& mac_w, uint64_t size, std::string& sha256) {
                      attach(h, gate, nonce_w.bytes, mac_w.bytes, size, sha256);
                    },
                    [h](caf::error& e) { h->fail("hello: " + h->self->system().render(e)); });
          },
          [h](caf::error& e) { h->fail("cannot connect: " + h->self->system().render(e)); });
}

}  // namespace troupe
