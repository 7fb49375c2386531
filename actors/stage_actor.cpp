// stage_actor.cpp: a pipeline stage. It holds the residual stream of the step it is running and, for each of its
// layers, does the two all-reduces of tensor parallelism with its shards.
//
// The all-reduce is a star: the stage sends the normed activations to its t shards (one shared buffer, not t
// copies), each shard answers with its partial sum, and the stage adds them into the residual stream. That costs 2t
// messages and two hops per reduction; a ring would take 2(t-1) hops and, inside one process where buffers are
// shared rather than sent, saves nothing, and t is small (at most the model's KV heads). The stage adds partials in
// shard order whatever order they arrive in, so results do not depend on timing.
//
// Steps arrive while one is running (pipelining keeps several in flight): they wait in a queue, in order.
//
// Head groups placed on workers (StageInit::remote_group) are group links (group_link.cpp) that take and answer
// the same messages as a shard. The stage reports (attached, stage) to the scheduler once all of them have attached
// to their workers, and ends with a link's reason when one ends (the scheduler then fails the replica's requests:
// their KV cache was partly on that worker), instead of respawning it.
#include <deque>

#include "remote.hpp"
#include "troupe.hpp"

namespace troupe {

namespace {

struct Pending {
  Shared<StepData> step;
  Activations x;
};

struct StageState {
  StageInit init;
  std::unique_ptr<ThreadTeam> team;  // for the logits; before compute, which uses it
  std::unique_ptr<StageCompute> compute;
  std::shared_ptr<std::vector<caf::actor>> shard_list = std::make_shared<std::vector<caf::actor>>();
  std::vector<caf::actor>& shards = *shard_list;
  std::vector<ShardCounters*> counters;  // by group: each shard's slot in init.metrics
  std::vector<bool> remote;              // by group: a group link stands for the shard
  int n_remote = 0, n_attached = 0;      // group links, and those attached
  std::deque<Pending> queue;
  // the running step
  bool busy = false;
  Shared<StepData> step;
  std::vector<float> x;
  int layer = 0;
  bool in_ffn = false;
  std::vector<Partials> partials;
  int n_partials = 0;
};

using StageActor = caf::stateful_actor<StageState>;

void start_next(StageActor* self);

// Every message to a shard goes through here: it counts towards the shard's mailbox depth until the shard takes it.
template <class... Ts>
void send_to_shard(StageActor* self, size_t group, Ts&&... xs) {
  auto& st = self->state;
  ShardCounters::add(st.counters[group]->sent, 1);
  self->send(st.shards[group], std::forward<Ts>(xs)...);
}

void send_to_shards(StageActor* self) {
  auto& st = self->state;
  const LayerWeights& L = st.init.model->layer(st.layer);
  const int n = st.step->layout.n_tokens;
  auto xn = std::make_shared<std::vector<float>>(st.x.size());
  st.compute->norm(st.in_ffn ? L.ffn_norm : L.attn_norm, st.x.data(), n, xn->data());
  const Activations shared{std::move(xn)};
  st.partials.assign(st.shards.size(), Partials{});
  st.n_partials = 0;
  for (size_t g = 0; g < st.shards.size(); ++g) {
    if (st.in_ffn) {
      send_to_shard(self, g, ffn_atom::value, st.step->step_id, st.layer, st.step, shared);
    } else {
      send_to_shard(self, g, attn_atom::value, st.step->step_id, st.layer, st.step, shared);
    }
  }
  st.init.metrics->messages += st.shards.size();
}

void finish_step(StageActor* self) {
  auto& st = self->state;
  if (st.init.last) {
    const auto& rows = st.step->logit_rows;
    auto logits = std::make_shared<std::vector<float>>(rows.size() * st.init.model->config().n_vocab);
    if (!rows.empty()) st.compute->logits(st.x.data(), rows, logits->data());
    self->send(st.init.downstream, result_atom::value, st.step->step_id, Logits{std::move(logits)});
  } else {
    self->send(st.init.downstream, step_atom::value, st.step, share(std::move(st.x)));
  }
  st.init.metrics->messages += 1;
  st.busy = false;
  st.step = {};
  start_next(self);
}

void start_next(StageActor* self) {
  auto& st = self->state;
  if (st.busy || st.queue.empty()) return;
  Pending p = std::move(st.queue.front());
  st.queue.pop_front();
  st.busy = true;
  st.step = std::move(p.step);
  const int n = st.step->layout.n_tokens;
  const int n_embd = st.init.model->config().n_embd;
  if (st.init.first) {
    st.x.resize(static_cast<size_t>(n) * n_embd);
    st.compute->embed(st.step->tokens.data(), n, st.x.data());
  } else {
    st.x = *p.x;  // the previous stage's output: one copy, since this stage adds to it
  }
  st.layer = st.init.shards.front().layer_begin;
  st.in_ffn = false;
  send_to_shards(self);
}

// A shard failed the running step (an error value, or it died): the scheduler fails the step's sequences.
void fail_step(StageActor* self, const std::string& why) {
  auto& st = self->state;
  if (!st.busy) return;
  self->send(st.init.scheduler, failed_atom::value, st.step->step_id, why);
  st.busy = false;
  st.step = {};
  start_next(self);
}

caf::behavior stage_actor(StageActor* self, StageInit init) {
  auto& st = self->state;
  st.init = std::move(init);
  st.compute = std::make_unique<StageCompute>(st.init.model, st.init.precision, st.init.max_tokens);
  if (st.init.team > 1 && st.init.last) {
    st.team = std::make_unique<ThreadTeam>(st.init.team);
    st.compute->set_team(st.team.get());
  }
  auto spawn_group = [self](int g) {
    auto& s = self->state;
    if (s.init.remote_group) {
      if (caf::actor link = s.init.remote_group(self, g)) {
        self->monitor(link);
        s.remote[g] = true;
        s.n_remote += 1;
        return link;
      }
    }
    ShardInit si{s.init.model, s.init.shards[g], g, s.init.precision, s.init.max_tokens, s.init.n_blocks,
                 s.init.block_size, s.init.metrics, s.init.shards.size() > 1, s.counters[g], s.init.team,
                 s.init.group_devices.empty() ? -1 : s.init.group_devices[g]};
    caf::actor a = spawn_shard(self, std::move(si), caf::actor_cast<caf::actor>(self));
    self->monitor(a);
    return a;
  };
  for (size_t g = 0; g < st.init.shards.size(); ++g) {
    st.counters.push_back(&st.init.metrics->shard(st.init.replica, st.init.stage, static_cast<int>(g)));
  }
  st.remote.assign(st.init.shards.size(), false);
  for (size_t g = 0; g < st.init.shards.size(); ++g) st.shards.push_back(spawn_group(static_cast<int>(g)));
  // The shards die with their stage.
  self->attach_functor([list = st.shard_list]() {
    for (const auto& s : *list) caf::anon_send_exit(s, caf::exit_reason::user_shutdown);
  });
  self->set_down_handler([self, spawn_group](caf::down_msg& dm) {
    auto& s = self->state;
    for (size_t g = 0; g < s.shards.size(); ++g) {
      if (s.shards[g].address() != dm.source) continue;
      // A group on a worker, or a GPU shard, ends only when its link or device failed (or a device cannot hold it):
      // respawning would fail the same way, so the stage ends with its reason and the scheduler reports the replica
      // down (and retries).
      if (s.remote[g] || (!s.init.group_devices.empty() && s.init.group_devices[g] >= 0)) {
        self->quit(dm.reason);
        return;
      }
      // Respawn from the mapped weights; the new shard's KV pool is empty, so every sequence of this replica has
      // lost part of its cache: the step running here fails, and the scheduler recomputes or fails the rest.
      // What the dead shard never took is gone with its mailbox (it took nothing after it died: its down message
      // follows its last handler).
      s.counters[g]->sent.store(s.counters[g]->taken.load(std::memory_order_relaxed), std::memory_order_relaxed);
      s.shards[g] = spawn_group(static_cast<int>(g));
      s.init.metrics->shard_restarts += 1;
      const std::string why = "shard " + std::to_string(g) + " of stage " + std::to_string(s.init.stage) +
                              " died (" + caf::to_string(dm.reason) + ")";
      if (s.busy) {
        fail_step(self, why);
      } else {
        self->send(s.init.scheduler, restarted_atom::value, why);
      }
      return;
    }
  });
  return {
      [=](step_atom, Shared<StepData>& step, Activations& x) {
        self->state.queue.push_back({std::move(step), std::move(x)});
        start_next(self);
      },
      [=](partial_atom, uint64_t step_id, int layer, int group, Partials& part) {
        auto& s = self->state;
        if (!s.busy || s.step->step_id != step_id || s.layer != layer || group < 0 ||
            group >= static_cast<int>(s.shards.size())) {
          return;  // a late answer for a step that already failed
        }
        s.partials[group] = std::move(part);
        if (++s.n_partials < static_cast<int>(s.shards.size())) return;
        std::vector<const double*> views;
        for (const auto& p : s.partials) views.push_back(p->data());
        s.compute->add_partials(s.x.data(), s.step->layout.n_tokens, views);
        s.partials.assign(s.shards.size(), Partials{});
        if (s.in_ffn) {
          s.in_ffn = false;
          if (++s.layer == s.init.shards.front().layer_end) {
            finish_step(self);
            return;
          }
        } else {
          s.in_ffn = true;
        }
        send_to_shards(self);
      },
      [=](failed_atom, uint64_t step_id, const std::string& why) {
        if (self->state.busy && self->state.step->step_id == step_id) fail_step(self, why);
      },
      [=](attached_atom, int) {
        auto& s = self->state;
        if (++s.n_attached == s.n_remote) self->send(s.init.scheduler, attached_atom::value, s.init.stage);
      },
      [=](fault_atom, int group) {
        auto& s = self->state;
        if (group >= 0 && group < static_cast<int>(s.shards.size())) send_to_shard(self, group, fault_atom::value);
      },
  };
}

}  // namespace

caf::actor spawn_stage(caf::local_actor* parent, StageInit init) {
  return parent->spawn(stage_actor, std::move(init));
}

}  // namespace troupe
