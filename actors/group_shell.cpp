// group_shell.cpp: the worker's side of one head group (remote.hpp): a shell that owns one shard actor (its slice of
// the stage's weights and its KV cache) and answers the coordinator's group link for it.
//
//   (step, Shared<StepData>)            from the coordinator: checked (check_step), kept for the step's requests
//   (attn | ffn, step id, layer, Blob)  from the coordinator: checked and decoded, to the shard with the step
//   (partial, id, layer, group, Partials) from the shard: (partial, id, layer, Blob of f64, compute ns) to the link
//   (failed, id, why)                   from the shard: forwarded; a request that cannot run is answered so too
//   (fault)                             from the coordinator: to the shard (tests)
//   down of the shard                   respawned (its KV pool is empty): each request it held answered (failed),
//                                       or (restarted) when it held none
//   down of the link                    the coordinator is gone: the shell ends, releasing the shard and its pool
//
// Every request gets exactly one answer, in the order it came, so the link can match answers to requests.
#include <spdlog/spdlog.h>

#include <deque>

#include "troupe.hpp"
#include "worker.hpp"

namespace troupe {

namespace {

class GroupShell final : public Guarded {
 public:
  GroupShell(caf::actor_config& cfg, ShellInit init) : Guarded(cfg), init_(std::move(init)) {
    const ModelConfig& c = init_.model->config();
    const AttachSpec& sp = init_.spec;
    limits_ = StepLimits{c.n_vocab, sp.max_tokens, sp.n_blocks, sp.block_size, sp.max_context};
    auto layers = split_range(c.n_layer, sp.n_stages, 1);  // checked by the gate
    spec_ = (*split_stage(c, (*layers)[sp.stage_begin].first, (*layers)[sp.stage_begin].second, sp.tp))[sp.group];
  }

  const char* name() const override { return "troupe_group_shell"; }

  caf::behavior make_behavior() override {
    set_default_handler(drop_unexpected);
    set_exit_handler([this](caf::exit_msg& m) { quit(m.reason); });  // only local senders get here
    metrics_ = std::make_shared<Metrics>(1, 1, 1);
    spawn_my_shard();
    monitor(init_.link);
    set_down_handler([this](caf::down_msg& dm) { on_down(dm); });
    return {
        [this](step_atom, Shared<StepData>& step) { on_step(std::move(step)); },
        [this](attn_atom, uint64_t step_id, int layer, Blob& in) { on_request(false, step_id, layer, in); },
        [this](ffn_atom, uint64_t step_id, int layer, Blob& in) { on_request(true, step_id, layer, in); },
        [this](partial_atom, uint64_t step_id, int layer, int, Partials& part) {
          if (!from_shard() || pending_.empty()) return;
          pending_.pop_front();
          if (!part.ptr) return;
          const uint32_t n_embd = static_cast<uint32_t>(init_.model->config().n_embd);
          WireHeader h{WireDtype::f64, WireKind::partials, init_.session, step_id,
                       static_cast<uint32_t>(part->size() / n_embd), n_embd};
          const uint64_t total = metrics_->compute_ns.load(std::memory_order_relaxed);
          send(init_.link, partial_atom::value, step_id, layer, Blob{encode_partials(h, part->data())},
               total - reported_ns_);
          reported_ns_ = total;
          answer_refused();
        },
        [this](failed_atom, uint64_t step_id, std::string& why) {
          if (!from_shard() || pending_.empty()) return;
          pending_.pop_front();
          send(init_.link, failed_atom::value, step_id, std::move(why));
          answer_refused();
        },
        [this](fault_atom) { send(shard_, fault_atom::value); },
    };
  }

 protected:
  bool admit_atom(caf::atom_value atom, const caf::node_id& from) const override {
    return from == init_.owner && (atom == step_atom::value || atom == attn_atom::value || atom == ffn_atom::value ||
                                   atom == fault_atom::value);
  }
  bool admit_down(const caf::node_id& from) const override { return from == init_.owner; }

 private:
  void spawn_my_shard() {
    const AttachSpec& sp = init_.spec;
    ShardInit si{init_.model, spec_, sp.group, static_cast<Precision>(sp.precision), sp.max_tokens, sp.n_blocks,
                 sp.block_size, metrics_, false, &metrics_->shard(0, 0, 0), sp.team};
    shard_ = spawn_shard(this, std::move(si), caf::actor_cast<caf::actor>(this));
    monitor(shard_);
  }

  // The shard ends with its shell.
  void on_exit() override {
    if (shard_) caf::anon_send_exit(shard_, caf::exit_reason::user_shutdown);
  }

  bool from_shard() { return current_sender() == caf::actor_cast<caf::strong_actor_ptr>(shard_); }

  void on_down(const caf::down_msg& dm) {
    if (dm.source == init_.link.address()) {
      spdlog::info("shell for head group {} of stage {}: the coordinator is gone ({}); releasing", init_.spec.group,
                   init_.spec.stage_begin, caf::to_string(dm.reason));
      quit(caf::exit_reason::user_shutdown);
      return;
    }
    if (dm.source != shard_.address()) return;
    // Respawned from the mapped weights with an empty KV pool: the coordinator fails what it had asked for, and
    // recomputes or fails the replica's other sequences (their cache here is gone).
    const std::string why = "shard " + std::to_string(init_.spec.group) + " of stage " +
                            std::to_string(init_.spec.stage_begin) + " died (" + caf::to_string(dm.reason) + ")";
    spdlog::warn("shell: {}; respawning it", why);
    spawn_my_shard();
    reported_ns_ = metrics_->compute_ns.load(std::memory_order_relaxed);
    if (pending_.empty()) {
      send(init_.link, restarted_atom::value, why);
      return;
    }
    for (const Request& r : pending_) {
      send(init_.link, failed_atom::value, r.step_id, r.refused.empty() ? why : r.refused);
    }
    pending_.clear();
  }

  // A step from the coordinator: kept only once it has been checked; its requests are refused otherwise.
  void on_step(Shared<StepData> step) {
    if (!step.ptr) return;
    step_id_ = step->step_id;
    if (auto ok = check_step(step->layout, step->tokens, step->logit_rows, limits_); !ok) {
      step_ = {};
      step_error_ = ok.error().message;
      log_refusal(step_id_, step_error_);
      return;
    }
    step_ = std::move(step);
  }

  void on_request(bool ffn, uint64_t step_id, int layer, const Blob& in) {
    if (!step_.ptr || step_id != step_id_) {
      answer_failed(step_id, step_id == step_id_ ? step_error_ : "a request for a step it was not sent");
      return;
    }
    if (layer < spec_.layer_begin || layer >= spec_.layer_end) {
      answer_failed(step_id, "layer " + std::to_string(layer) + " outside the stage's " +
                                 std::to_string(spec_.layer_begin) + ".." + std::to_string(spec_.layer_end - 1));
      return;
    }
    WireHeader want{static_cast<WireDtype>(init_.spec.dtype), WireKind::activations, init_.session, step_id,
                    static_cast<uint32_t>(step_->layout.n_tokens),
                    static_cast<uint32_t>(init_.model->config().n_embd)};
    auto rows = std::make_shared<std::vector<float>>();
    if (auto ok = decode_rows(in.bytes, want, false, *rows); !ok) {
      answer_failed(step_id, ok.error().message);
      return;
    }
    pending_.push_back({step_id, {}});
    if (ffn) {
      send(shard_, ffn_atom::value, step_id, layer, step_, Activations{std::move(rows)});
    } else {
      send(shard_, attn_atom::value, step_id, layer, step_, Activations{std::move(rows)});
    }
  }

  // A request that cannot run is answered in its turn: after those the shard holds (the link matches answers to
  // requests by order).
  void answer_failed(uint64_t step_id, const std::string& why) {
    log_refusal(step_id, why);
    pending_.push_back({step_id, "worker refused the request: " + why});
    answer_refused();
  }

  // Answers the refused requests now at the front of the queue.
  void answer_refused() {
    while (!pending_.empty() && !pending_.front().refused.empty()) {
      send(init_.link, failed_atom::value, pending_.front().step_id, pending_.front().refused);
      pending_.pop_front();
    }
  }

  void log_refusal(uint64_t step_id, const std::string& why) {
    const uint64_t n = ++refused_;
    if (n <= 10 || n % 1000 == 0) spdlog::warn("group shell: refused step {}: {} ({} refused so far)", step_id, why, n);
  }

  ShellInit init_;
  StepLimits limits_;
  ShardSpec spec_;  // this group's heads and FFN rows of the stage's layers
  std::shared_ptr<Metrics> metrics_;
  caf::actor shard_;
  Shared<StepData> step_;  // the step being computed, once checked
  uint64_t step_id_ = 0;   // the step last described (checked or not)
  std::string step_error_;
  // Requests not yet answered, in the order they came: held by the shard, or refused (waiting for their turn).
  struct Request {
    uint64_t step_id = 0;
    std::string refused;  // why it was refused; "" when the shard holds it
  };
  std::deque<Request> pending_;
  uint64_t reported_ns_ = 0;  // the shard's compute time already reported
  uint64_t refused_ = 0;
};

}  // namespace

caf::actor spawn_group_shell(caf::local_actor* gate, ShellInit init) {
  return gate->spawn<GroupShell>(std::move(init));
}

}  // namespace troupe
