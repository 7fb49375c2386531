// link_actor.cpp: the coordinator's stand-in for a range of stages on a worker (remote.hpp). To the scheduler and
// to the neighbouring stages it looks like a local stage; to the worker it is the peer of one shell.
//
//   (step, Shared<StepData>, Activations)  from upstream: encoded, sent to the shell as (step, step, Blob)
//   (output, id, Blob)                     from the shell: checked against the step sent, (step, ...) downstream
//   (result, id, Blob)                     from the shell: checked, (result, id, Logits) to the scheduler
//   (failed, id, why) | (restarted, why)   from the shell: forwarded to the scheduler
//   (stats, Blob)                          from the shell: its shards' counters, copied into this replica's (/metrics)
//   (fault, stage, group)                  from the scheduler: forwarded to the shell
//   (timeout, id)                          to itself: the step is still unanswered after timeout_s: the link ends
//
// It ends (and the scheduler, which monitors it, fails the replica's requests and re-attaches later) when the attach
// fails, the shell or the connection goes down, a step times out, or the worker sends a buffer that fails its checks.
#include <caf/io/middleman.hpp>
#include <spdlog/spdlog.h>

#include <chrono>
#include <map>

#include "remote.hpp"
#include "troupe.hpp"

namespace troupe {

namespace {

// What went over a link, logged when it ends (the state is gone by then: its own object).
struct Traffic {
  std::string where;  // "127.0.0.1:9101 (stages 1..2)"
  uint64_t steps = 0, bytes_out = 0, bytes_in = 0;
};

struct LinkState {
  LinkInit init;
  std::string where;  // "127.0.0.1:9101 (stages 1..2)" for the log
  caf::actor shell;
  uint64_t session = 0;
  std::map<uint64_t, Shared<StepData>> in_flight;  // steps the shell has not answered yet
  std::shared_ptr<Traffic> traffic = std::make_shared<Traffic>();
};

using LinkActor = caf::stateful_actor<LinkState>;

void end_link(LinkActor* self, const std::string& why) {
  self->quit(caf::make_error(caf::sec::runtime_error, "worker " + self->state.where + ": " + why));
}

std::string render(LinkActor* self, const caf::error& e) { return self->system().render(e); }

// Bytes a step's description takes on the wire besides the activations (an estimate of CAF's encoding, for the log).
uint64_t step_bytes(const StepData& d) {
  uint64_t n = 8 + 4 + 4 * d.tokens.size() + 4 * d.logit_rows.size();
  for (const auto& s : d.layout.seqs) n += 16 + 4 * s.block_table.size();
  return n;
}

caf::behavior link_actor(LinkActor* self, LinkInit init) {
  auto& st = self->state;
  st.init = std::move(init);
  const RemoteStages& w = st.init.where;
  st.where = w.host + ":" + std::to_string(w.port) + " (stages " + std::to_string(w.stage_begin) + ".." +
             std::to_string(w.stage_end - 1) + ")";
  self->set_down_handler([self](caf::down_msg& dm) {
    if (dm.source == self->state.shell.address()) end_link(self, "went down (" + render(self, dm.reason) + ")");
  });
  st.traffic->where = st.where;
  self->attach_functor([t = st.traffic]() {
    if (t->steps > 0) {
      spdlog::info("link to {}: {} steps, {:.2f} MB sent, {:.2f} MB received", t->where, t->steps, t->bytes_out * 1e-6,
                   t->bytes_in * 1e-6);
    }
  });

  attach_to_worker(
      self, w.host, w.port, st.init.secret, st.init.digest, st.init.spec,
      [self](caf::actor shell, uint64_t session) {
        auto& s = self->state;
        s.shell = std::move(shell);
        s.session = session;
        self->monitor(s.shell);
        self->send(s.init.scheduler, attached_atom::value, s.init.where.stage_begin);
      },
      [self](const std::string& why) { end_link(self, why); });

  const int n_embd = st.init.model->config().n_embd;
  const int n_vocab = st.init.model->config().n_vocab;
  const auto dtype = static_cast<WireDtype>(st.init.spec.dtype);
  return {
      [=](step_atom, Shared<StepData>& step, Activations& x) {
        auto& s = self->state;
        if (!s.shell) {  // the scheduler sends nothing before "attached"; a race with our own end
          self->send(s.init.scheduler, failed_atom::value, step->step_id, "worker " + s.where + " is not attached");
          return;
        }
        Blob out;
        if (s.init.spec.stage_begin > 0) {
          if (!x.ptr || x->size() != static_cast<size_t>(step->layout.n_tokens) * n_embd) {
            self->send(s.init.scheduler, failed_atom::value, step->step_id, "link: activations of the wrong size");
            return;
          }
          WireHeader h{dtype, WireKind::activations, s.session, step->step_id,
                       static_cast<uint32_t>(step->layout.n_tokens), static_cast<uint32_t>(n_embd)};
          out.bytes = encode_rows(h, x->data());
        }
        s.traffic->steps += 1;
        s.traffic->bytes_out += out.bytes.size() + step_bytes(*step);
        s.in_flight[step->step_id] = step;
        self->send(s.shell, step_atom::value, step, std::move(out));
        const auto timeout = std::chrono::duration_cast<caf::timespan>(std::chrono::duration<double>(s.init.timeout_s));
        self->delayed_send(self, timeout, timeout_atom::value, step->step_id);
      },
      [=](output_atom, uint64_t step_id, Blob& in) {
        auto& s = self->state;
        auto it = s.in_flight.find(step_id);
        if (self->current_sender() != caf::actor_cast<caf::strong_actor_ptr>(s.shell) || it == s.in_flight.end()) return;
        Shared<StepData> step = std::move(it->second);
        s.in_flight.erase(it);
        s.traffic->bytes_in += in.bytes.size();
        WireHeader want{dtype, WireKind::activations, s.session, step_id, static_cast<uint32_t>(step->layout.n_tokens),
                        static_cast<uint32_t>(n_embd)};
        auto rows = std::make_shared<std::vector<float>>();
        if (auto ok = decode_rows(in.bytes, want, false, *rows); !ok) {
          end_link(self, "sent a bad output: " + ok.error().message);
          return;
        }
        self->send(s.init.next, step_atom::value, std::move(step), Activations{std::move(rows)});
      },
      [=](result_atom, uint64_t step_id, Blob& in) {
        auto& s = self->state;
        auto it = s.in_flight.find(step_id);
        if (self->current_sender() != caf::actor_cast<caf::strong_actor_ptr>(s.shell) || it == s.in_flight.end()) return;
        Shared<StepData> step = std::move(it->second);
        s.in_flight.erase(it);
        s.traffic->bytes_in += in.bytes.size();
        WireHeader want{WireDtype::f32, WireKind::logits, s.session, step_id,
                        static_cast<uint32_t>(step->logit_rows.size()), static_cast<uint32_t>(n_vocab)};
        auto logits = std::make_shared<std::vector<float>>();
        if (auto ok = decode_rows(in.bytes, want, false, *logits); !ok) {
          end_link(self, "sent bad logits: " + ok.error().message);
          return;
        }
        self->send(s.init.next, result_atom::value, step_id, Logits{std::move(logits)});
      },
      [=](failed_atom, uint64_t step_id, std::string& why) {
        auto& s = self->state;
        if (self->current_sender() != caf::actor_cast<caf::strong_actor_ptr>(s.shell)) return;
        s.in_flight.erase(step_id);
        self->send(s.init.scheduler, failed_atom::value, step_id, "worker " + s.where + ": " + why);
      },
      [=](restarted_atom, std::string& why) {
        auto& s = self->state;
        if (self->current_sender() != caf::actor_cast<caf::strong_actor_ptr>(s.shell)) return;
        self->send(s.init.scheduler, restarted_atom::value, "worker " + s.where + ": " + why);
      },
      [=](stats_atom, Blob& in) {
        // The worker's counters of the range's shards, copied into this replica's slots (the link is their only
        // writer: the shards run on the worker). They only feed /metrics; a bad buffer is dropped.
        auto& s = self->state;
        if (self->current_sender() != caf::actor_cast<caf::strong_actor_ptr>(s.shell) || !s.init.metrics) return;
        const AttachSpec& sp = s.init.spec;
        const size_t n_shards = static_cast<size_t>(sp.stage_end - sp.stage_begin) * sp.tp;
        std::vector<uint64_t> words;
        if (!decode_u64s(in.bytes, n_shards * kShardCounterWords, words)) return;
        const uint64_t* w = words.data();
        for (int st = sp.stage_begin; st < sp.stage_end; ++st) {
          for (int g = 0; g < sp.tp; ++g, w += kShardCounterWords) {
            ShardCounters& c = s.init.metrics->shard(sp.replica, st, g);
            c.sent.store(w[0], std::memory_order_relaxed);
            c.taken.store(w[1], std::memory_order_relaxed);
            c.step_ns.store(w[2], std::memory_order_relaxed);
            for (size_t b = 0; b < c.step_buckets.size(); ++b) c.step_buckets[b].store(w[3 + b], std::memory_order_relaxed);
          }
        }
      },
      [=](fault_atom, int stage, int group) {
        if (self->state.shell) self->send(self->state.shell, fault_atom::value, stage, group);
      },
      [=](timeout_atom, uint64_t step_id) {
        auto& s = self->state;
        if (s.in_flight.count(step_id) == 0) return;
        end_link(self, "no answer to step " + std::to_string(step_id) + " within " +
                           std::to_string(static_cast<int>(s.init.timeout_s)) + " s");
      },
  };
}

}  // namespace

caf::actor spawn_link(caf::local_actor* parent, LinkInit init) { return parent->spawn(link_actor, std::move(init)); }

void configure_remote(caf::actor_system_config& cfg) {
  cfg.load<caf::io::middleman>();
  cfg.add_message_type<Blob>("troupe_blob");
  cfg.add_message_type<AttachSpec>("troupe_attach");
  cfg.add_message_type<Shared<StepData>>("troupe_step");
  // Heartbeats every second; a peer silent for 10 s (stopped, or cut off without a FIN) is declared down.
  cfg.set("middleman.heartbeat-interval", caf::timespan{std::chrono::seconds(1)});
  cfg.set("middleman.connection-timeout", caf::timespan{std::chrono::seconds(10)});
}

}  // namespace troupe
