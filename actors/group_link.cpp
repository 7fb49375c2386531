// group_link.cpp: the coordinator's stand-in for one head group (shard) on a worker (remote.hpp). To its stage it is
// a shard; to the worker it is the peer of one group shell.
//
//   (attn | ffn, step id, layer, Shared<StepData>, Activations)  from the stage: the step described to the shell once
//                                          (step, Shared<StepData>), the normed input sent as (attn | ffn, .., Blob)
//   (partial, id, layer, Blob, ns)         from the shell: checked against the request sent, (partial, id, layer,
//                                          group, Partials) to the stage; ns is the worker's compute time (/metrics)
//   (failed, id, why)                      from the shell: instead of a partial; to the stage, which fails the step
//   (restarted, why)                       from the shell: to the scheduler (the group's KV cache is lost)
//   (fault)                                from the stage: forwarded to the shell (tests)
//   (timeout, step id)                     to itself: the step still has requests unanswered after timeout_s: it ends
//
// It ends (the stage, which monitors it, ends with the same reason, and the scheduler fails the replica's requests
// and re-attaches later) when the attach fails, the shell or the connection goes down, a step times out, or the
// worker answers out of order or with a buffer that fails its checks.
#include <spdlog/spdlog.h>

#include <algorithm>
#include <chrono>
#include <deque>
#include <utility>

#include "remote.hpp"
#include "troupe.hpp"

namespace troupe {

namespace {

// What went over a link, logged when it ends (the state is gone by then: its own object).
struct GroupTraffic {
  std::string where;
  uint64_t steps = 0, requests = 0, bytes_out = 0, bytes_in = 0;
};

// A request sent to the shell and not yet answered.
struct GroupRequest {
  uint64_t step_id = 0;
  int layer = 0;
  bool ffn = false;
  int n_tokens = 0;
};

struct GroupLinkState {
  GroupLinkInit init;
  std::string where;  // "127.0.0.1:9101 (stage 0, head group 1)" for the log
  caf::actor shell;
  uint64_t session = 0;
  bool described = false;  // the shell has been sent a step ...
  uint64_t described_id = 0;  // ... this one
  std::deque<GroupRequest> outstanding;  // answered in this order
  int last_layer = 0;                    // its FFN ends the group's part of a step
  uint64_t step_ns = 0;                  // the worker's compute time for the running step so far
  std::shared_ptr<GroupTraffic> traffic = std::make_shared<GroupTraffic>();
};

using GroupLink = caf::stateful_actor<GroupLinkState>;

void end_link(GroupLink* self, const std::string& why) {
  self->quit(caf::make_error(caf::sec::runtime_error, "worker " + self->state.where + ": " + why));
}

// A request from the stage: described (once per step), encoded, sent; the step's deadline set on its first request.
void forward(GroupLink* self, bool ffn, uint64_t step_id, int layer, const Shared<StepData>& step,
             const Activations& xn) {
  auto& s = self->state;
  ShardCounters::add(s.init.counters->taken, 1);
  const int n_embd = s.init.model->config().n_embd;
  const int n = step->layout.n_tokens;
  if (!s.shell) {  // the scheduler sends nothing before every link attached; a race with our own end
    self->send(s.init.stage, failed_atom::value, step_id, "worker " + s.where + " is not attached");
    return;
  }
  if (!xn.ptr || xn->size() != static_cast<size_t>(n) * n_embd) {
    self->send(s.init.stage, failed_atom::value, step_id, "group link: activations of the wrong size");
    return;
  }
  if (!s.described || s.described_id != step_id) {
    s.described = true;
    s.described_id = step_id;
    s.traffic->steps += 1;
    self->send(s.shell, step_atom::value, step);
    const auto timeout = std::chrono::duration_cast<caf::timespan>(std::chrono::duration<double>(s.init.timeout_s));
    self->delayed_send(self, timeout, timeout_atom::value, step_id);
  }
  WireHeader h{static_cast<WireDtype>(s.init.spec.dtype), WireKind::activations, s.session, step_id,
               static_cast<uint32_t>(n), static_cast<uint32_t>(n_embd)};
  Blob out{encode_rows(h, xn->data())};
  s.traffic->requests += 1;
  s.traffic->bytes_out += out.bytes.size();
  if (ffn) {
    self->send(s.shell, ffn_atom::value, step_id, layer, std::move(out));
  } else {
    self->send(s.shell, attn_atom::value, step_id, layer, std::move(out));
  }
  s.outstanding.push_back({step_id, layer, ffn, n});
}

caf::behavior group_link(GroupLink* self, GroupLinkInit init) {
  auto& st = self->state;
  st.init = std::move(init);
  const AttachSpec& sp = st.init.spec;
  st.where = st.init.host + ":" + std::to_string(st.init.port) + " (stage " + std::to_string(sp.stage_begin) +
             ", head group " + std::to_string(sp.group) + ")";
  const ModelConfig& c = st.init.model->config();
  st.last_layer = (*split_range(c.n_layer, sp.n_stages, 1))[sp.stage_begin].second - 1;  // checked by check_plan
  self->set_down_handler([self](caf::down_msg& dm) {
    if (dm.source != self->state.shell.address()) return;
    end_link(self, "went down (" + self->system().render(dm.reason) + ")");
  });
  st.traffic->where = st.where;
  self->attach_functor([t = st.traffic]() {
    if (t->steps > 0) {
      spdlog::info("link to {}: {} steps, {} requests, {:.2f} MB sent, {:.2f} MB received", t->where, t->steps,
                   t->requests, t->bytes_out * 1e-6, t->bytes_in * 1e-6);
    }
  });
  attach_to_worker(
      self, st.init.host, st.init.port, st.init.secret, st.init.digest, sp,
      [self](caf::actor shell, uint64_t session) {
        auto& s = self->state;
        s.shell = std::move(shell);
        s.session = session;
        self->monitor(s.shell);
        self->send(s.init.stage, attached_atom::value, s.init.spec.stage_begin);
      },
      [self](const std::string& why) { end_link(self, why); });

  return {
      [=](attn_atom, uint64_t step_id, int layer, const Shared<StepData>& step, const Activations& xn) {
        forward(self, false, step_id, layer, step, xn);
      },
      [=](ffn_atom, uint64_t step_id, int layer, const Shared<StepData>& step, const Activations& xn) {
        forward(self, true, step_id, layer, step, xn);
      },
      [=](partial_atom, uint64_t step_id, int layer, Blob& in, uint64_t ns) {
        auto& s = self->state;
        if (self->current_sender() != caf::actor_cast<caf::strong_actor_ptr>(s.shell)) return;
        if (s.outstanding.empty() || s.outstanding.front().step_id != step_id ||
            s.outstanding.front().layer != layer) {
          end_link(self, "answered a request it was not sent (step " + std::to_string(step_id) + ", layer " +
                             std::to_string(layer) + ")");
          return;
        }
        const GroupRequest r = s.outstanding.front();
        s.outstanding.pop_front();
        s.traffic->bytes_in += in.bytes.size();
        const int n_embd = s.init.model->config().n_embd;
        WireHeader want{WireDtype::f64, WireKind::partials, s.session, step_id, static_cast<uint32_t>(r.n_tokens),
                        static_cast<uint32_t>(n_embd)};
        auto part = std::make_shared<std::vector<double>>();
        if (auto ok = decode_partials(in.bytes, want, *part); !ok) {
          end_link(self, "sent bad partial sums: " + ok.error().message);
          return;
        }
        // The worker's word on its compute time only feeds /metrics; bounded to an hour all the same.
        ns = std::min<uint64_t>(ns, uint64_t{3600} * 1000000000);
        s.init.metrics->compute_ns += ns;
        s.step_ns += ns;
        if (r.ffn && r.layer == s.last_layer) s.init.counters->observe_step(std::exchange(s.step_ns, 0));
        self->send(s.init.stage, partial_atom::value, step_id, layer, s.init.spec.group, Partials{std::move(part)});
      },
      [=](failed_atom, uint64_t step_id, std::string& why) {
        auto& s = self->state;
        if (self->current_sender() != caf::actor_cast<caf::strong_actor_ptr>(s.shell)) return;
        if (s.outstanding.empty() || s.outstanding.front().step_id != step_id) {
          end_link(self, "answered a request it was not sent (step " + std::to_string(step_id) + ")");
          return;
        }
        s.outstanding.pop_front();
        s.step_ns = 0;
        self->send(s.init.stage, failed_atom::value, step_id, "worker " + s.where + ": " + why);
      },
      [=](restarted_atom, std::string& why) {
        auto& s = self->state;
        if (self->current_sender() != caf::actor_cast<caf::strong_actor_ptr>(s.shell)) return;
        self->send(s.init.scheduler, restarted_atom::value, "worker " + s.where + ": " + why);
      },
      [=](fault_atom) {
        auto& s = self->state;
        ShardCounters::add(s.init.counters->taken, 1);
        if (s.shell) self->send(s.shell, fault_atom::value);
      },
      [=](timeout_atom, uint64_t step_id) {
        auto& s = self->state;
        for (const auto& r : s.outstanding) {
          if (r.step_id != step_id) continue;
          end_link(self, "no answer to step " + std::to_string(step_id) + " within " +
                             std::to_string(static_cast<int>(s.init.timeout_s)) + " s");
          return;
        }
      },
  };
}

}  // namespace

caf::actor spawn_group_link(caf::local_actor* parent, GroupLinkInit init) {
  return parent->spawn(group_link, std::move(init));
}

}  // namespace troupe
