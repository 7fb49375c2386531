// worker.hpp: what the worker process's actors share (worker_actor.cpp: the gate and the shell of a stage range;
// group_shell.cpp: the shell of a head group). Nothing outside the worker's side includes this.
#pragma once

#include <caf/all.hpp>
#include <spdlog/spdlog.h>

#include <atomic>
#include <memory>

#include "remote.hpp"

namespace troupe {

// An event-based actor that drops messages from other processes unless admit() accepts them: before the mailbox,
// so no system message (exit, error, link, down) from a peer ever reaches the actor.
class Guarded : public caf::event_based_actor {
 public:
  explicit Guarded(caf::actor_config& cfg) : caf::event_based_actor(cfg) {}

  void enqueue(caf::mailbox_element_ptr ptr, caf::execution_unit* eu) override {
    if (!ptr) return;
    const caf::strong_actor_ptr& sender = ptr->sender;
    if (sender && sender->node() == home_system().node()) {  // from this process
      caf::event_based_actor::enqueue(std::move(ptr), eu);
      return;
    }
    // From another process, or anonymous (which a peer can send too): only the protocol's messages.
    const caf::type_erased_tuple& content = ptr->content();
    bool ok = false;
    if (sender) {
      if (content.size() >= 1 && content.match_element<caf::atom_value>(0)) {
        ok = admit_atom(content.get_as<caf::atom_value>(0), sender->node());
      } else if (content.size() == 1 && content.match_element<caf::down_msg>(0)) {
        ok = admit_down(sender->node());
      }
    }
    if (ok) {
      caf::event_based_actor::enqueue(std::move(ptr), eu);
      return;
    }
    const uint64_t n = ++dropped_;
    if (n <= 10 || n % 1000 == 0) {
      spdlog::warn("{}: dropped a message from {} ({} so far): not part of the protocol or not from the coordinator",
                   name(), sender ? caf::to_string(sender->node()) : std::string("an anonymous sender"), n);
    }
  }

 protected:
  virtual bool admit_atom(caf::atom_value atom, const caf::node_id& from) const = 0;
  virtual bool admit_down(const caf::node_id& from) const = 0;

 private:
  std::atomic<uint64_t> dropped_{0};
};

// Drops a message no handler takes (the default would print it and answer an error), logging the first few.
inline caf::result<caf::message> drop_unexpected(caf::scheduled_actor* self, caf::message_view&) {
  static std::atomic<int> logged{0};
  if (logged++ < 10) spdlog::warn("{}: dropped a message of unexpected shape", self->name());
  return caf::sec::unexpected_message;
}

struct ShellInit {
  std::shared_ptr<const Model> model;
  AttachSpec spec;
  caf::actor link;      // the coordinator's link actor (a proxy)
  caf::node_id owner;   // the coordinator's node: the only one whose messages are admitted
  uint64_t session = 0;
};

// The shell of one head group (group_shell.cpp): its shard, answering the coordinator's stage (remote.hpp).
caf::actor spawn_group_shell(caf::local_actor* gate, ShellInit init);

}  // namespace troupe
