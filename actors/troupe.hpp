// troupe.hpp: spawning the actors of one replica. engine.cpp composes them; nothing outside actors/ includes this.
//
//   scheduler actor      one per replica: continuous batching (Scheduler), sampling, the requests' sinks; it spawns
//                        and monitors the replica's stages and keeps up to pp steps in flight (pipelining)
//   stage actor          one per pipeline stage: the residual stream, norms and the all-reduce of its shards'
//                        partials; the first embeds tokens, the last computes logits; it spawns and monitors its
//                        shards and respawns one that dies
//   GPU stage actor      a pipeline stage on a CUDA device (Plan::devices), its own thread: the stage's layers, all its
//                        heads, with the stage actor's protocol towards the scheduler and the other stages
//   shard actor          one per (stage, head group), on its own thread when tp > 1: its slice of the weights and of the KV
//                        cache (ShardWorker)
#pragma once

#include <caf/all.hpp>

#include <functional>
#include <memory>

#include "engine.hpp"
#include "gpu_shard.hpp"
#include "gpu_stage.hpp"
#include "messages.hpp"
#include "wire.hpp"

namespace troupe {

struct ShardInit {
  std::shared_ptr<const Model> model;
  ShardSpec spec;
  int group = 0;
  Precision precision = Precision::fast;
  int max_tokens = 0;
  int n_blocks = 0;
  int block_size = 0;
  std::shared_ptr<Metrics> metrics;
  bool detached = false;  // its own thread (when the stage has several shards to run in parallel)
  ShardCounters* counters = nullptr;  // its slot in `metrics` (which keeps it alive): messages taken, step time
  int team = 1;                       // threads splitting its matmuls and attention heads (ThreadTeam)
  int device = -1;                    // >= 0: a GPU shard on that CUDA device (GpuShard), else ShardWorker
};

struct StageInit {
  std::shared_ptr<const Model> model;
  std::vector<ShardSpec> shards;
  int stage = 0;
  bool first = false, last = false;
  Precision precision = Precision::fast;
  int max_tokens = 0;
  int n_blocks = 0;
  int block_size = 0;
  caf::actor downstream;  // the next stage, or the scheduler after the last
  caf::actor scheduler;   // where failures are reported
  std::shared_ptr<Metrics> metrics;
  int replica = 0;        // with `stage`, where its shards' counters are in `metrics`
  int team = 1;           // threads per shard, and for the stage's logits
  std::vector<int> group_devices;  // per head group: -1 a CPU shard, d a GPU shard on device d (empty: all CPU)
  // Head groups on workers: the group link standing for group g (spawned by the stage, reporting to it), or an
  // invalid handle when the group runs here. Empty: every group here.
  std::function<caf::actor(caf::local_actor* stage, int group)> remote_group;
};

caf::actor spawn_shard(caf::local_actor* parent, ShardInit init, caf::actor stage);

struct GpuStageInit {
  std::shared_ptr<const Model> model;
  GpuStageSpec spec;      // device, layers, first/last, tokens per step, KV pool
  int stage = 0;
  caf::actor downstream;  // the next stage, or the scheduler after the last
  caf::actor scheduler;   // where failures are reported
  std::shared_ptr<Metrics> metrics;
  int replica = 0;        // with `stage`: its counters in `metrics` (group 0)
  bool downstream_gpu = false;  // the next stage is a GPU stage here: outputs stay on the device (spec.output_slots)
};

// A stage on a GPU. It exits with the error as its reason when the device cannot hold the stage or becomes unusable
// (a sticky CUDA error); the scheduler then treats the replica as down, as for a lost worker, and retries.
caf::actor spawn_gpu_stage(caf::local_actor* parent, GpuStageInit init);
caf::actor spawn_stage(caf::local_actor* parent, StageInit init);

struct ReplicaInit {
  std::shared_ptr<const Model> model;
  const Tokenizer* tokenizer = nullptr;  // outlives the engine's actors
  Plan plan;
  int replica = 0;
  int n_blocks = 0;
  int max_context = 0;
  std::shared_ptr<Metrics> metrics;
  std::function<void(int)> on_request_done;  // called with the replica index when a request ends (load balancing)
  FileDigest digest;  // the model file's, sent to workers hosting remote stages (plan.placement)
  // Called (on the scheduler's thread) when the replica becomes able or unable to serve: every worker of its
  // pipeline attached, or one unreachable (why).
  std::function<void(int replica, bool up, const std::string& why)> on_health;
  // TROUPE_FAULT: make shard (fault_stage, fault_group) throw when this replica sends step fault_step (0: never)
  uint64_t fault_step = 0;
  int fault_stage = 0, fault_group = 0;
};

// A request handed to a scheduler actor (local only: it carries the sink).
struct Submission {
  RequestId id = 0;
  Request request;
  std::shared_ptr<Sink> sink;
};

// Fault injection addressed to a replica's scheduler: (fault, stage, group).
caf::actor spawn_scheduler(caf::actor_system& system, ReplicaInit init);

}  // namespace troupe

CAF_ALLOW_UNSAFE_MESSAGE_TYPE(std::shared_ptr<troupe::Submission>)
CAF_ALLOW_UNSAFE_MESSAGE_TYPE(troupe::EngineStats)
