// worker_actor.cpp: the worker process's actors (remote.hpp): the published gate and one shell per attach.
//
//   gate   (hello, nonce_c) -> (nonce_w, mac_w, model size, model sha256)
//          (attach, nonce_w, mac_c, AttachSpec, link) -> (error text, shell, session)   "" and a shell on success: a
//                                                      stage range's (below) or, for spec.group >= 0, a head group's
//                                                      (group_shell.cpp)
//          (stop)                                      from a local actor: stop every shell, then itself
//   shell  (step, Shared<StepData>, Blob)              from its coordinator: checked, decoded, into its first stage
//          (step, Shared<StepData>, Activations)       from its last stage: encoded, (output, id, Blob) to the link
//          (result, id, Logits)                        from the last stage of the pipeline: (result, id, Blob)
//          (failed, id, why) | (restarted, why)        from its stages: forwarded to the link
//          (fault, stage, group)                       from its coordinator: fault injection
//          -> (stats, Blob)                            its shards' counters to the link, after a step (/metrics)
//
// Both are reachable from the network (the gate by its published port, a shell by the actor id the coordinator
// learns), so both filter what other processes may put in their mailboxes (Guarded::enqueue): only their protocol's
// messages, and for a shell only from the node that attached it. CAF would otherwise let any peer of the middleman
// kill an actor whose id it knows (an exit message with reason kill cannot be trapped) or end it with an error
// message. A message that passes the filter is still untrusted: every size and id is checked before use.
#include <caf/io/middleman.hpp>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <chrono>
#include <deque>
#include <map>

#include "remote.hpp"
#include "troupe.hpp"
#include "worker.hpp"

namespace troupe {

namespace {

using Clock = std::chrono::steady_clock;

// ---- the shell: a range of stages for one coordinator ----

class Shell final : public Guarded {
 public:
  Shell(caf::actor_config& cfg, ShellInit init) : Guarded(cfg), init_(std::move(init)) {
    const ModelConfig& c = init_.model->config();
    limits_ = StepLimits{c.n_vocab, init_.spec.max_tokens, init_.spec.n_blocks, init_.spec.block_size,
                         init_.spec.max_context};
  }

  const char* name() const override { return "troupe_shell"; }

  caf::behavior make_behavior() override {
    const ModelConfig& c = init_.model->config();
    const AttachSpec& sp = init_.spec;
    set_default_handler(drop_unexpected);
    set_exit_handler([this](caf::exit_msg& m) { quit(m.reason); });  // only local senders get here
    metrics_ = std::make_shared<Metrics>(1, sp.n_stages, sp.tp);
    // The chain, last stage first: each needs the next one's handle; the last hands its output to the shell.
    auto layers = split_range(c.n_layer, sp.n_stages, 1);
    stages_.assign(sp.stage_end - sp.stage_begin, caf::actor{});
    caf::actor downstream = caf::actor_cast<caf::actor>(this);
    for (int s = sp.stage_end - 1; s >= sp.stage_begin; --s) {
      auto shards = split_stage(c, (*layers)[s].first, (*layers)[s].second, sp.tp);  // checked by the gate
      StageInit si{init_.model, *shards, s, s == 0, s == sp.n_stages - 1, static_cast<Precision>(sp.precision),
                   sp.max_tokens, sp.n_blocks, sp.block_size, downstream, caf::actor_cast<caf::actor>(this),
                   metrics_, 0, sp.team};
      caf::actor a = spawn_stage(this, std::move(si));
      monitor(a);
      stages_[s - sp.stage_begin] = a;
      downstream = a;
    }
    monitor(init_.link);
    attach_functor([stages = stages_]() {
      for (const auto& s : stages) caf::anon_send_exit(s, caf::exit_reason::user_shutdown);
    });
    set_down_handler([this](caf::down_msg& dm) {
      if (dm.source == init_.link.address()) {
        spdlog::info("shell for stages {}..{}: the coordinator is gone ({}); releasing", init_.spec.stage_begin,
                     init_.spec.stage_end - 1, caf::to_string(dm.reason));
      } else {
        spdlog::error("shell for stages {}..{}: a stage died ({})", init_.spec.stage_begin, init_.spec.stage_end - 1,
                      caf::to_string(dm.reason));
      }
      quit(caf::exit_reason::user_shutdown);
    });
    return {
        // From the coordinator: a step into the first stage of the range.
        [this](step_atom, Shared<StepData>& step, Blob& in) { on_step(step, in); },
        // From the last stage of the range.
        [this](step_atom, Shared<StepData>& step, Activations& x) {
          if (current_sender() != caf::actor_cast<caf::strong_actor_ptr>(stages_.back())) return;
          const ModelConfig& c = init_.model->config();
          WireHeader h{static_cast<WireDtype>(init_.spec.dtype), WireKind::activations, init_.session, step->step_id,
                       static_cast<uint32_t>(step->layout.n_tokens), static_cast<uint32_t>(c.n_embd)};
          send(init_.link, output_atom::value, step->step_id, Blob{encode_rows(h, x->data())});
          send_stats();
        },
        [this](result_atom, uint64_t step_id, Logits& logits) {
          if (current_sender() != caf::actor_cast<caf::strong_actor_ptr>(stages_.back())) return;
          const uint32_t n_vocab = static_cast<uint32_t>(init_.model->config().n_vocab);
          WireHeader h{WireDtype::f32, WireKind::logits, init_.session, step_id,
                       static_cast<uint32_t>(logits->size() / n_vocab), n_vocab};
          send(init_.link, result_atom::value, step_id, Blob{encode_rows(h, logits->data())});
          send_stats();
        },
        [this](failed_atom, uint64_t step_id, std::string& why) {
          if (!from_my_stage()) return;
          send(init_.link, failed_atom::value, step_id, std::move(why));
        },
        [this](restarted_atom, std::string& why) {
          if (!from_my_stage()) return;
          send(init_.link, restarted_atom::value, std::move(why));
        },
        [this](fault_atom, int stage, int group) {
          const int i = stage - init_.spec.stage_begin;
          if (i >= 0 && i < static_cast<int>(stages_.size())) send(stages_[i], fault_atom::value, group);
        },
    };
  }

 protected:
  bool admit_atom(caf::atom_value atom, const caf::node_id& from) const override {
    return from == init_.owner && (atom == step_atom::value || atom == fault_atom::value);
  }
  bool admit_down(const caf::node_id& from) const override { return from == init_.owner; }

 private:
  bool from_my_stage() {
    const auto& sender = current_sender();
    return std::any_of(stages_.begin(), stages_.end(),
                       [&](const caf::actor& a) { return caf::actor_cast<caf::strong_actor_ptr>(a) == sender; });
  }

  // A step from the coordinator: nothing of it is used before it has been checked.
  void on_step(const Shared<StepData>& step, const Blob& in) {
    if (!step.ptr) return;
    const StepData& d = *step;
    if (auto ok = check_step(d.layout, d.tokens, d.logit_rows, limits_); !ok) {
      refuse(d.step_id, ok.error().message);
      return;
    }
    Activations x;
    if (init_.spec.stage_begin == 0) {
      if (!in.bytes.empty()) {
        refuse(d.step_id, "the first stage takes no activations");
        return;
      }
    } else {
      WireHeader want{static_cast<WireDtype>(init_.spec.dtype), WireKind::activations, init_.session, d.step_id,
                      static_cast<uint32_t>(d.layout.n_tokens),
                      static_cast<uint32_t>(init_.model->config().n_embd)};
      auto rows = std::make_shared<std::vector<float>>();
      if (auto ok = decode_rows(in.bytes, want, false, *rows); !ok) {
        refuse(d.step_id, ok.error().message);
        return;
      }
      x.ptr = std::move(rows);
    }
    send(stages_.front(), step_atom::value, step, std::move(x));
  }

  // The counters of the range's shards, for the coordinator's /metrics: after a step, at most every 0.25 s.
  void send_stats() {
    const auto now = Clock::now();
    if (now - last_stats_ < std::chrono::milliseconds(250)) return;
    last_stats_ = now;
    std::vector<uint64_t> words;
    words.reserve((init_.spec.stage_end - init_.spec.stage_begin) * init_.spec.tp * kShardCounterWords);
    for (int s = init_.spec.stage_begin; s < init_.spec.stage_end; ++s) {
      for (int g = 0; g < init_.spec.tp; ++g) {
        const ShardCounters& c = metrics_->shard(0, s, g);
        words.push_back(c.sent.load(std::memory_order_relaxed));
        words.push_back(c.taken.load(std::memory_order_relaxed));
        words.push_back(c.step_ns.load(std::memory_order_relaxed));
        for (const auto& b : c.step_buckets) words.push_back(b.load(std::memory_order_relaxed));
      }
    }
    send(init_.link, stats_atom::value, Blob{encode_u64s(words)});
  }

  // A step that cannot run: the coordinator hears at once (rather than at its timeout), and the log says why.
  void refuse(uint64_t step_id, const std::string& why) {
    const uint64_t n = ++refused_;
    if (n <= 10 || n % 1000 == 0) spdlog::warn("shell: refused step {}: {} ({} refused so far)", step_id, why, n);
    send(init_.link, failed_atom::value, step_id, "worker refused the step: " + why);
  }

  ShellInit init_;
  StepLimits limits_;
  std::shared_ptr<Metrics> metrics_;
  std::vector<caf::actor> stages_;  // (stage_end - stage_begin) the range's stages, first to last
  uint64_t refused_ = 0;
  Clock::time_point last_stats_{};  // when the shards' counters were last sent
};

// ---- the gate: handshake and attach ----

struct Pending {
  std::string nonce_w, nonce_c;
  Clock::time_point expires;
};

class Gate final : public Guarded {
 public:
  Gate(caf::actor_config& cfg, WorkerInit init) : Guarded(cfg), init_(std::move(init)) {}

  const char* name() const override { return "troupe_gate"; }

  caf::behavior make_behavior() override {
    set_default_handler(drop_unexpected);
    set_exit_handler([](caf::exit_msg&) {});  // only local senders get here; the gate stops on (stop)
    set_error_handler([](caf::error&) {});
    set_down_handler([this](caf::down_msg& dm) {
      shells_.erase(std::remove_if(shells_.begin(), shells_.end(),
                                   [&](const caf::actor& a) { return a.address() == dm.source; }),
                    shells_.end());
      spdlog::info("worker: an attach ended ({}); {} active", caf::to_string(dm.reason), shells_.size());
    });
    return {
        [this](hello_atom, const Blob& nonce_c) -> caf::result<Blob, Blob, uint64_t, std::string> {
          if (nonce_c.bytes.size() != 32) {
            spdlog::warn("worker: a hello from {} with a {}-byte nonce: ignored", peer(), nonce_c.bytes.size());
            return caf::sec::invalid_argument;
          }
          const auto now = Clock::now();
          while (!pending_.empty() && (pending_.front().expires < now || pending_.size() >= 256)) pending_.pop_front();
          Pending p{random_bytes(32), nonce_c.bytes, now + std::chrono::seconds(30)};
          Blob mac{hmac_sha256(init_.secret, "troupe-worker", p.nonce_c, p.nonce_w)};
          Blob nonce_w{p.nonce_w};
          pending_.push_back(std::move(p));
          return {nonce_w, mac, init_.digest.size, init_.digest.sha256};
        },
        [this](attach_atom, const Blob& nonce_w, const Blob& mac_c, const AttachSpec& spec,
               const caf::actor& link) -> caf::result<std::string, caf::actor, uint64_t> {
          return attach(nonce_w.bytes, mac_c.bytes, spec, link);
        },
        [this](stop_atom) {
          for (const auto& s : shells_) send_exit(s, caf::exit_reason::user_shutdown);
          quit();
        },
    };
  }

 protected:
  bool admit_atom(caf::atom_value atom, const caf::node_id&) const override {
    return atom == hello_atom::value || atom == attach_atom::value;
  }
  bool admit_down(const caf::node_id&) const override { return false; }

 private:
  std::string peer() {
    const auto& s = current_sender();
    return s ? caf::to_string(s->node()) : std::string("an anonymous sender");
  }

  caf::result<std::string, caf::actor, uint64_t> refuse(const std::string& why) {
    spdlog::warn("worker: refused an attach from {}: {}", peer(), why);
    return {why, caf::actor{}, uint64_t{0}};
  }

  caf::result<std::string, caf::actor, uint64_t> attach(const std::string& nonce_w, const std::string& mac_c, const AttachSpec& spec,
                                                       const caf::actor& link) {
    // The secret first: an unauthenticated peer learns nothing else and gets nothing spawned.
    auto it = std::find_if(pending_.begin(), pending_.end(), [&](const Pending& p) { return same_bytes(p.nonce_w, nonce_w); });
    if (it == pending_.end() || it->expires < Clock::now()) return refuse("unknown or expired handshake");
    const Pending p = *it;
    pending_.erase(it);  // one use
    if (!same_bytes(hmac_sha256(init_.secret, "troupe-coordinator", p.nonce_w, p.nonce_c), mac_c)) {
      return refuse("authentication failed (the shared secret differs)");
    }
    if (!current_sender() || !link) return refuse("no link actor to answer to");
    if (spec.model_size != init_.digest.size || spec.model_sha256 != init_.digest.sha256) {
      return refuse("model mismatch: the coordinator's model has " + std::to_string(spec.model_size) +
                    " bytes, sha256 " + spec.model_sha256 + "; this worker's has " +
                    std::to_string(init_.digest.size) + " bytes, sha256 " + init_.digest.sha256);
    }
    if (auto ok = check_spec(spec); !ok) return refuse(ok.error().message);
    if (static_cast<int>(shells_.size()) >= init_.max_attach) {
      return refuse("already serving " + std::to_string(shells_.size()) + " attaches (the most it takes)");
    }
    ShellInit si{init_.model, spec, link, current_sender()->node(), random_u64()};
    const uint64_t session = si.session;
    caf::actor shell = spec.group >= 0 ? spawn_group_shell(this, std::move(si)) : spawn<Shell>(std::move(si));
    monitor(shell);
    shells_.push_back(shell);
    const std::string what = spec.group >= 0 ? "head group " + std::to_string(spec.group) + " of stage " +
                                                   std::to_string(spec.stage_begin)
                                             : "stages " + std::to_string(spec.stage_begin) + ".." +
                                                   std::to_string(spec.stage_end - 1);
    spdlog::info("worker: attached by {}: replica {}, {} of {}, tp {}, {} KV blocks of {}, activations {}", peer(),
                 spec.replica, what, spec.n_stages, spec.tp, spec.n_blocks, spec.block_size,
                 to_string(static_cast<WireDtype>(spec.dtype)));
    return {std::string(), shell, session};
  }

  // The attach's numbers against the model and sane bounds: a bad one is refused, never allocated or indexed.
  Expected<void> check_spec(const AttachSpec& s) const {
    const Model& m = *init_.model;
    const ModelConfig& c = m.config();
    auto bad = [](const std::string& what) { return Error{ErrorKind::invalid_argument, "attach: " + what}; };
    if (s.n_stages < 1 || s.n_stages > c.n_layer) return bad("pipeline stages outside 1.." + std::to_string(c.n_layer));
    if (s.stage_begin < 0 || s.stage_begin >= s.stage_end || s.stage_end > s.n_stages) return bad("bad stage range");
    if (s.tp < 1 || s.tp > c.n_head_kv) return bad("head groups outside 1.." + std::to_string(c.n_head_kv));
    if (s.precision != 0 && s.precision != 1) return bad("unknown precision");
    if (s.dtype != 0 && s.dtype != 1) return bad("unknown activation dtype");
    if (s.max_tokens < 1 || s.max_tokens > (1 << 16)) return bad("tokens per step outside 1..65536");
    if (s.block_size < 1 || s.block_size > 4096) return bad("block size outside 1..4096");
    if (s.max_context < 1 || s.max_context > c.n_ctx_train) return bad("context outside the model's");
    if (s.n_blocks < 1 || static_cast<int64_t>(s.n_blocks) * s.block_size > (int64_t{1} << 22)) {
      return bad("KV pool outside 1..4194304 positions");
    }
    if (s.team < 1 || s.team > 256) return bad("team outside 1..256");
    if (s.replica < 0 || s.replica >= 64) return bad("replica outside 0..63");
    if (s.group < -1 || s.group >= s.tp) return bad("head group outside 0.." + std::to_string(s.tp - 1));
    if (s.group >= 0 && s.stage_end != s.stage_begin + 1) return bad("a head group is of one stage");
    auto layers = split_range(c.n_layer, s.n_stages, 1);
    if (!layers) return layers.error();
    for (int st = s.stage_begin; st < s.stage_end; ++st) {
      auto specs = split_stage(c, (*layers)[st].first, (*layers)[st].second, s.tp);
      if (!specs) return specs.error();
      for (const auto& sh : *specs) {
        if (auto ok = check_shard(m, sh); !ok) return ok.error();
      }
    }
    return {};
  }

  WorkerInit init_;
  std::deque<Pending> pending_;  // handshakes between hello and attach (at most 256, 30 s each)
  std::vector<caf::actor> shells_;
};

}  // namespace

caf::actor spawn_gate(caf::actor_system& system, WorkerInit init) { return system.spawn<Gate>(std::move(init)); }

namespace {

class Host final : public WorkerHost {
 public:
  explicit Host(int threads) : system_(configure(config_, threads)) {}

  ~Host() override {
    if (gate_) {
      caf::scoped_actor self{system_};  // a local sender: the gate takes (stop) only from this process
      self->send(gate_, stop_atom::value);
      gate_ = nullptr;
    }
    system_.await_all_actors_done();
  }

  Expected<void> publish(WorkerInit init, const std::string& host, int port) {
    gate_ = spawn_gate(system_, std::move(init));
    auto bound = system_.middleman().publish(gate_, static_cast<uint16_t>(port), host.c_str(), true);
    if (!bound) {
      return Error{ErrorKind::io, "cannot listen on " + host + ":" + std::to_string(port) + ": " + system_.render(bound.error())};
    }
    port_ = *bound;
    return {};
  }

  int port() const override { return port_; }

 private:
  static caf::actor_system_config& configure(caf::actor_system_config& cfg, int threads) {
    if (threads > 0) cfg.set("scheduler.max-threads", threads);
    cfg.set("work-stealing.moderate-poll-attempts", 0);  // as the engine (see STACK.md)
    configure_remote(cfg);
    return cfg;
  }

  caf::actor_system_config config_;
  caf::actor_system system_;
  caf::actor gate_;
  int port_ = 0;
};

}  // namespace

Expected<std::unique_ptr<WorkerHost>> start_worker(WorkerInit init, const std::string& host, int port, int threads) {
  auto h = std::make_unique<Host>(threads);
  if (auto ok = h->publish(std::move(init), host, port); !ok) return ok.error();
  return std::unique_ptr<WorkerHost>(std::move(h));
}

}  // namespace troupe
