// messages.hpp: what the troupe's actors say to each other.
//
// Step traffic (one step = one micro-batch of sequences through every stage):
//   scheduler -> stage 0        (step, Shared<StepData>, Shared<activations>)    activations empty: stage 0 embeds
//   stage s -> stage s+1        (step, Shared<StepData>, Shared<activations>)    the residual stream after stage s
//   GPU stage -> GPU stage      (step, Shared<StepData>, DeviceActivations)      the same, left on the device
//   stage -> each of its shards (attn | ffn, step id, layer, Shared<StepData>, Shared<activations>)   normed input
//   shard -> its stage          (partial, step id, layer, group, Shared<partial sums>)
//   last stage -> scheduler     (result, step id, Shared<logits>)                one row per entry wanting logits
//   stage -> scheduler          (failed, step id, message)                      a shard died or erred mid-step
//   stage -> scheduler          (restarted)                                      a shard was respawned: KV lost
//
// Within a process every buffer travels as Shared<T>: one immutable heap object that all receivers read, never
// copied per receiver. Each type has a CAF inspect() so the same messages can later cross processes (Shared<T>
// serializes the object it points to and deserializes into a fresh one).
#pragma once

#include <caf/all.hpp>

#include <array>
#include <atomic>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "engine.hpp"
#include "gpu_stage.hpp"
#include "shard.hpp"

namespace troupe {

using step_atom = caf::atom_constant<caf::atom("step")>;
using attn_atom = caf::atom_constant<caf::atom("attn")>;
using ffn_atom = caf::atom_constant<caf::atom("ffn")>;
using partial_atom = caf::atom_constant<caf::atom("partial")>;
using result_atom = caf::atom_constant<caf::atom("result")>;
using failed_atom = caf::atom_constant<caf::atom("failed")>;
using restarted_atom = caf::atom_constant<caf::atom("restarted")>;
using fault_atom = caf::atom_constant<caf::atom("fault")>;
using submit_atom = caf::atom_constant<caf::atom("submit")>;
using ack_atom = caf::atom_constant<caf::atom("ack")>;
using cancel_atom = caf::atom_constant<caf::atom("cancel")>;
using stats_atom = caf::atom_constant<caf::atom("stats")>;
using stop_atom = caf::atom_constant<caf::atom("stop")>;

// An immutable object shared by every receiver in a process.
template <class T>
struct Shared {
  std::shared_ptr<const T> ptr;
  const T& operator*() const { return *ptr; }
  const T* operator->() const { return ptr.get(); }
};

template <class T>
Shared<T> share(T value) {
  return {std::make_shared<const T>(std::move(value))};
}

template <class Inspector, class T>
typename std::enable_if<Inspector::reads_state, typename Inspector::result_type>::type inspect(Inspector& f,
                                                                                               Shared<T>& x) {
  static const T empty{};
  return f(x.ptr ? *x.ptr : empty);
}

template <class Inspector, class T>
typename std::enable_if<Inspector::writes_state, typename Inspector::result_type>::type inspect(Inspector& f,
                                                                                                Shared<T>& x) {
  auto fresh = std::make_shared<T>();
  x.ptr = fresh;  // nobody else holds it yet, so loading into it is safe
  return f(*fresh);
}

// What every stage needs to know about a step.
struct StepData {
  uint64_t step_id = 0;
  StepLayout layout;
  std::vector<TokenId> tokens;  // (n_tokens) the step's input tokens (stage 0 embeds them)
  std::vector<int> logit_rows;  // token indices whose logits the scheduler wants (last token of a finished chunk)
};

template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, StepLayout::Seq& x) {
  return f(caf::meta::type_name("step_seq"), x.first, x.n, x.pos0, x.block_table);
}

template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, StepLayout& x) {
  return f(caf::meta::type_name("step_layout"), x.seqs, x.n_tokens);
}

template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, StepData& x) {
  return f(caf::meta::type_name("step_data"), x.step_id, x.layout, x.tokens, x.logit_rows);
}

using Activations = Shared<std::vector<float>>;  // (n_tokens, n_embd) row-major

// Between two GPU stages of one process the residual stream stays on the devices: the message carries where it is
// (gpu/gpu_stage.hpp), never crossing a process (a GPU stage is never remote).
template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, DeviceActivations& x) {
  return f(caf::meta::type_name("device_activations"), x.device, x.address, x.bytes);
}
using Partials = Shared<std::vector<double>>;    // (n_tokens, n_embd) a shard's unrounded share
using Logits = Shared<std::vector<float>>;       // (rows, n_vocab)

// One shard's load, read by Engine::stats() from any thread. Each counter has one writer (the stage or the shard),
// so an update is a relaxed load and store on a cache line of the shard's own: no locked instruction, no sharing
// with other shards. Mailbox depth = sent - taken (CAF 0.17's mailbox().size() is only callable by the actor itself:
// it moves messages between the mailbox's internal queues).
struct alignas(64) ShardCounters {
  std::atomic<uint64_t> sent{0};     // written by the stage: messages sent to this shard (reset to taken on a respawn)
  std::atomic<uint64_t> taken{0};    // written by the shard: messages it took from its mailbox
  std::atomic<uint64_t> step_ns{0};  // written by the shard: compute time of the steps it finished, summed
  std::array<std::atomic<uint64_t>, kShardStepBounds.size() + 1> step_buckets{};  // steps per bucket; last +Inf

  // The one writer adds n (not an atomic read-modify-write: no other thread writes this counter).
  static void add(std::atomic<uint64_t>& counter, uint64_t n) {
    counter.store(counter.load(std::memory_order_relaxed) + n, std::memory_order_relaxed);
  }
  // The shard finished its part of a step in ns of compute (the bucket: the first bound >= the time, as "le" says).
  void observe_step(uint64_t ns) {
    const double seconds = ns * 1e-9;
    size_t i = 0;
    while (i < kShardStepBounds.size() && seconds > kShardStepBounds[i]) ++i;
    add(step_buckets[i], 1);
    add(step_ns, ns);
  }
};

// Counters every actor of an engine adds to, read by Engine::stats() (lock-free), and each shard's own.
struct Metrics {
  Metrics(int replicas, int stages, int groups)
      : n_stages(stages), n_groups(groups), shards(static_cast<size_t>(replicas) * stages * groups) {}

  std::atomic<uint64_t> messages{0};
  std::atomic<uint64_t> compute_ns{0};
  std::atomic<uint64_t> shard_restarts{0};

  const int n_stages, n_groups;
  std::vector<ShardCounters> shards;  // (replicas, stages, groups)
  ShardCounters& shard(int replica, int stage, int group) {
    return shards[(static_cast<size_t>(replica) * n_stages + stage) * n_groups + group];
  }
  const ShardCounters& shard(int replica, int stage, int group) const {
    return shards[(static_cast<size_t>(replica) * n_stages + stage) * n_groups + group];
  }
};

}  // namespace troupe
