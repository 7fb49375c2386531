// shard_actor.cpp: a shard actor owns one ShardWorker (its weights' slice and KV pool) and answers its stage's
// attention and FFN requests for a layer with its partial sums. It counts the messages it takes (its stage counts
// those it sends: the difference is its mailbox depth) and its compute time per step, for /metrics.
//
// Where it runs (measured with bench/actors_bench.cpp on 2 cores, tg32, alternating runs):
//   - alone in its stage (tp = 1): on CAF's worker pool. A message from the stage is then run by the same worker
//     right after the stage's handler, with no thread wake-up: decode through the actors matched the direct Forward
//     path (52.6 vs 52.1 tok/s), where a detached shard lost 30-45% to two cross-thread wake-ups per hop.
//   - one of several (tp > 1): detached, a thread of its own, so the head groups of a step really run in parallel;
//     on the pool the workers' sleep/steal cycle serialised them (4 concurrent streams: 63-66 tok/s detached vs
//     46 on the pool).
#include <chrono>
#include <stdexcept>
#include <utility>

#include "troupe.hpp"

namespace troupe {

namespace {

struct ShardState {
  std::unique_ptr<ThreadTeam> team;  // before the worker, which uses it: destroyed after it
  std::unique_ptr<ShardWorker> worker;  // a CPU shard's arithmetic, or
  std::unique_ptr<GpuShard> gpu;        // a GPU shard's
  caf::actor stage;
  int group = 0;
  int n_embd = 0;
  bool fail_next = false;  // fault injection: throw on the next compute message
  std::shared_ptr<Metrics> metrics;
  ShardCounters* counters = nullptr;  // this shard's own (in metrics): messages taken, step time
  int last_layer = 0;                 // its FFN ends its part of a step
  uint64_t step_id = 0;               // the step being computed and its compute time so far
  uint64_t step_ns = 0;
};

using ShardActor = caf::stateful_actor<ShardState>;

// Every handler starts here: the message has left the mailbox (the mailbox depth /metrics reports).
void took_message(ShardActor* self) { ShardCounters::add(self->state.counters->taken, 1); }

// Runs one compute call, timed, and replies with the partial sums or reports failure (the stage then fails the step).
// The last layer's FFN ends the shard's part of a step: its compute time over the step's layers is observed then
// (a step that failed half way is dropped when the next one starts).
template <class F>
void compute(ShardActor* self, uint64_t step_id, int layer, bool ends_step, int n_tokens, F&& f) {
  auto& st = self->state;
  if (st.fail_next) throw std::runtime_error("injected fault in shard " + std::to_string(st.group));
  const auto t0 = std::chrono::steady_clock::now();
  auto out = std::make_shared<std::vector<double>>(static_cast<size_t>(n_tokens) * st.n_embd);
  Expected<void> r = f(out->data());
  const uint64_t ns = std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now() - t0).count();
  st.metrics->compute_ns += ns;
  st.metrics->messages += 1;
  if (!r) {
    self->send(st.stage, failed_atom::value, step_id, r.error().message);
    if (st.gpu && st.gpu->broken()) {  // the device is unusable: end, so the stage reports it
      self->quit(caf::make_error(caf::sec::runtime_error, st.gpu->device_name() + " is unusable: " + r.error().message));
    }
    return;
  }
  if (step_id != st.step_id) st.step_id = step_id, st.step_ns = 0;
  st.step_ns += ns;
  if (ends_step) st.counters->observe_step(std::exchange(st.step_ns, 0));
  self->send(st.stage, partial_atom::value, step_id, layer, st.group, Partials{std::move(out)});
}

caf::behavior shard_actor(ShardActor* self, ShardInit init, caf::actor stage) {
  auto& st = self->state;
  st.stage = std::move(stage);
  st.group = init.group;
  st.n_embd = init.model->config().n_embd;
  st.metrics = init.metrics;
  st.counters = init.counters;
  st.last_layer = init.spec.layer_end - 1;
  // An exception ends this shard (its stage sees it go down and respawns it) with the exception's text as the
  // reason, instead of CAF's default report on stderr.
  self->set_exception_handler([](caf::scheduled_actor*, std::exception_ptr& e) -> caf::error {
    try {
      std::rethrow_exception(e);
    } catch (const std::exception& x) {
      return caf::make_error(caf::sec::runtime_error, std::string(x.what()));
    } catch (...) {
      return caf::make_error(caf::sec::runtime_error, std::string("unknown exception"));
    }
  });
  if (init.device >= 0) {
    auto gpu = GpuShard::create(init.model, {init.device, init.spec, init.max_tokens, init.n_blocks, init.block_size});
    if (!gpu) {
      self->quit(caf::make_error(caf::sec::runtime_error, "head group " + std::to_string(init.group) + " on cuda:" +
                                                              std::to_string(init.device) + ": " + gpu.error().message));
      return {};
    }
    st.gpu = std::move(*gpu);
  } else {
    st.worker = std::make_unique<ShardWorker>(init.model, init.spec, init.precision, init.max_tokens, init.n_blocks,
                                              init.block_size);
  }
  if (init.team > 1 && st.worker) {
    st.team = std::make_unique<ThreadTeam>(init.team);
    st.worker->set_team(st.team.get());
  }
  return {
      [=](attn_atom, uint64_t step_id, int layer, const Shared<StepData>& step, const Activations& xn) {
        took_message(self);
        compute(self, step_id, layer, false, step->layout.n_tokens, [&](double* out) {
          auto& s = self->state;
          return s.gpu ? s.gpu->attention(layer, step->layout, xn->data(), out)
                       : s.worker->attention(layer, step->layout, xn->data(), out);
        });
      },
      [=](ffn_atom, uint64_t step_id, int layer, const Shared<StepData>& step, const Activations& xn) {
        took_message(self);
        compute(self, step_id, layer, layer == self->state.last_layer, step->layout.n_tokens, [&](double* out) {
          auto& s = self->state;
          return s.gpu ? s.gpu->ffn(layer, step->layout.n_tokens, xn->data(), out)
                       : s.worker->ffn(layer, step->layout.n_tokens, xn->data(), out);
        });
      },
      [=](fault_atom) {
        took_message(self);
        self->state.fail_next = true;
      },
  };
}

}  // namespace

caf::actor spawn_shard(caf::local_actor* parent, ShardInit init, caf::actor stage) {
  if (init.detached) return parent->spawn<caf::detached>(shard_actor, std::move(init), std::move(stage));
  return parent->spawn(shard_actor, std::move(init), std::move(stage));
}

}  // namespace troupe
