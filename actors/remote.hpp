// remote.hpp: pipeline stages, and head groups of stages, in other processes, over CAF's middleman (BASP on TCP).
// docs/distributed.md.
//
//   coordinator                                         worker (`troupe worker`)
//   link actor, one per remote stage range  <-------->  gate (published)  ->  shell, one per attach  ->  stage actors
//   group link, one per remote head group   <-------->                        group shell, one per attach -> a shard
//
// Handshake (the link asks the published gate; nothing is spawned before the third line succeeds):
//   link -> gate   (hello, nonce_c)                      -> (nonce_w, mac_w, model_size, model_sha256)
//                    mac_w = HMAC(secret, "troupe-worker" | nonce_c | nonce_w): the worker knows the secret
//   link -> gate   (attach, nonce_w, mac_c, AttachSpec, link)  -> (error text, shell, session token)
//                    mac_c = HMAC(secret, "troupe-coordinator" | nonce_w | nonce_c): so does the coordinator; the
//                    worker also refuses a model whose size or sha256 differs from its own file's
// Steps (every buffer a Blob: wire.hpp's header + raw rows, checked against the receiver's own expectations):
//   link -> shell  (step, Shared<StepData>, Blob)        the input of the range's first stage (empty for stage 0)
//   shell -> link  (output, step id, Blob)               the residual stream after the range's last stage
//   shell -> link  (result, step id, Blob)               the logits, when the range ends the pipeline
//   shell -> link  (failed, step id, why) | (restarted, why)   as a local stage reports to its scheduler
//   shell -> link  (stats, Blob)                         its shards' counters (kShardCounterWords u64 each, by stage
//                                                        then group), at most every 0.25 s after a step: /metrics
//   link -> shell  (fault, stage, group)                 fault injection (tests)
// Head groups (AttachSpec::group >= 0; the stage actor stays on the coordinator, the group link stands for a shard):
//   link -> shell  (step, Shared<StepData>)              once per step, before its first attn: checked, kept
//   link -> shell  (attn | ffn, step id, layer, Blob)    the stage's normed input (activations dtype)
//   shell -> link  (partial, step id, layer, Blob, ns)   the shard's partial sums as f64 bits (exact), and the
//                                                        compute time it took (for /metrics)
//   shell -> link  (failed, step id, why)                instead of a partial: the request could not be computed
//   shell -> link  (restarted, why)                      the shard died while idle and was respawned: KV lost
//   link -> shell  (fault)                               fault injection (tests)
// Every attn/ffn gets exactly one answer, partial or failed, in the order sent.
// Faults: the link monitors its shell, the shell monitors its link; the connection dropping (or a peer silent past
// the heartbeat timeout) is a down message on both sides. A step unanswered for Placement::timeout_s ends the link.
#pragma once

#include <caf/all.hpp>

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "engine.hpp"
#include "messages.hpp"
#include "wire.hpp"

namespace troupe {

using hello_atom = caf::atom_constant<caf::atom("hello")>;
using attach_atom = caf::atom_constant<caf::atom("attach")>;
using attached_atom = caf::atom_constant<caf::atom("attached")>;
using output_atom = caf::atom_constant<caf::atom("output")>;
using reconnect_atom = caf::atom_constant<caf::atom("reconnect")>;
using timeout_atom = caf::atom_constant<caf::atom("timeout")>;

// Bytes in one block (a float vector would go float by float): a wire.hpp buffer, a nonce or a MAC. A string, not a
// byte vector: see encode_rows.
struct Blob {
  std::string bytes;
};

template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, Blob& x) {
  return f(caf::meta::type_name("troupe_blob"), x.bytes);
}

// What a coordinator asks a worker to run: a range of its pipeline's stages, cut as its plan says.
struct AttachSpec {
  uint64_t model_size = 0;   // the coordinator's model file: the worker's must be the same
  std::string model_sha256;
  int replica = 0;
  int n_stages = 1;          // the plan's pp: the layers are split the same way on both sides
  int stage_begin = 0, stage_end = 1;
  int tp = 1;
  int precision = 0;         // Precision
  int max_tokens = 0;        // the plan's max_batched_tokens
  int n_blocks = 0;
  int block_size = 16;
  int max_context = 0;
  int team = 1;
  int dtype = 0;             // WireDtype of the activations
  int group = -1;            // >= 0: only this head group (shard) of stage stage_begin; its stage stays on the caller
};

template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, AttachSpec& x) {
  return f(caf::meta::type_name("troupe_attach"), x.model_size, x.model_sha256, x.replica, x.n_stages, x.stage_begin,
           x.stage_end, x.tp, x.precision, x.max_tokens, x.n_blocks, x.block_size, x.max_context, x.team, x.dtype,
           x.group);
}

// Registers the types that cross processes (the same names on both sides) and loads the middleman with heartbeats,
// so that a peer that goes silent without closing its connection is declared down.
void configure_remote(caf::actor_system_config& cfg);

// ---- the coordinator's side ----

struct LinkInit {
  std::shared_ptr<const Model> model;
  RemoteStages where;
  std::string secret;
  FileDigest digest;   // the coordinator's model file
  AttachSpec spec;
  double timeout_s = 30;
  caf::actor next;       // where the range's output goes: the next stage (or its link), or the scheduler
  caf::actor scheduler;  // failures and "attached"
  std::shared_ptr<Metrics> metrics;  // where the worker's counters of the range's shards are copied (/metrics)
};

// A shard's counters as they cross: sent, taken, step_ns, then the step-time buckets.
inline constexpr size_t kShardCounterWords = 3 + kShardStepBounds.size() + 1;

// A local stand-in for a range of stages on a worker: it attaches (connect, hello, attach), then translates between
// the local messages (Shared buffers) and Blobs. It reports (attached, stage_begin) to the scheduler, and ends with
// the reason when the attach fails, the worker goes down or a step times out (the scheduler monitors it).
caf::actor spawn_link(caf::local_actor* parent, LinkInit init);

// Connects to the worker at host:port and runs the handshake (hello, check the worker's MAC and model, attach) for
// `spec`, as `self` (the actor the shell will answer to); then done(shell, session) or fail(why), on self's thread.
void attach_to_worker(caf::event_based_actor* self, const std::string& host, int port, const std::string& secret,
                      const FileDigest& digest, const AttachSpec& spec,
                      std::function<void(caf::actor shell, uint64_t session)> done,
                      std::function<void(const std::string& why)> fail);

struct GroupLinkInit {
  std::shared_ptr<const Model> model;
  std::string host;  // the worker
  int port = 0;
  std::string secret;
  FileDigest digest;
  AttachSpec spec;       // stage_begin: the stage; group: the head group
  double timeout_s = 30;
  caf::actor stage;      // the local stage it serves: partials, failed, attached
  caf::actor scheduler;  // restarted
  std::shared_ptr<Metrics> metrics;   // keeps `counters` alive
  ShardCounters* counters = nullptr;  // the group's slot: messages taken, the worker's compute time per step
};

// A local stand-in for one head group (shard) on a worker: to its stage it is a shard (the same messages in and
// out); it attaches, reports (attached, stage) to the stage, and ends with the reason when the attach fails, the
// worker goes down, a step times out or an answer fails its checks (the stage, which monitors it, then ends too).
caf::actor spawn_group_link(caf::local_actor* parent, GroupLinkInit init);

// Whether the placement's head-group entries fit the plan: groups inside 0..tp-1, each placed once, only of stages
// that run in this process (placement.cpp).
Expected<void> check_group_placement(const Plan& plan);
// "; head group 1 on 127.0.0.1:9101 of 3: ..." for stage s of replica r in the start-up log; "" when none is remote.
std::string describe_groups(const Plan& plan, int replica, int stage);

// ---- the worker's side ----

struct WorkerInit {
  std::shared_ptr<const Model> model;
  FileDigest digest;   // of the worker's own model file
  std::string secret;
  int max_attach = 16;  // shells alive at once (each holds KV pools)
};

// A worker process's actor system with its gate published at host:port (port 0: any free one). Destroying it stops
// the gate and every shell, then the actor system.
class WorkerHost {
 public:
  virtual ~WorkerHost() = default;
  virtual int port() const = 0;
};
Expected<std::unique_ptr<WorkerHost>> start_worker(WorkerInit init, const std::string& host, int port, int threads);

// The published actor: answers hello and attach, spawns a shell per successful attach. Only the hello and attach
// messages of its protocol are accepted from other processes; anything else (exit, error, link requests, unknown
// messages) is dropped before it reaches the mailbox. The gate stops on (stop) from a local actor.
caf::actor spawn_gate(caf::actor_system& system, WorkerInit init);

}  // namespace troupe
