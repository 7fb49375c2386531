// engine.hpp: the troupe, seen from outside. Plain C++: no CAF and no JSON in this interface, so the HTTP gateway,
// the offline batch runner and tests drive the same engine the same way.
//
//   Engine::start(model, plan)   spawns the actors: per replica, pipeline stages of tensor-parallel shards and a
//                                scheduler actor doing continuous batching over the replica's paged KV cache
//   submit(request, sink)        queues a request on the least loaded replica, or refuses it at once (overloaded)
//   ack(id, n)                   the consumer took n more tokens (backpressure credit)
//   cancel(id)                   stops a request and frees its KV blocks within one scheduler step
//   stats()                      counters for /metrics and tests, engine-wide and per shard
#pragma once

#include <array>
#include <atomic>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "error.hpp"
#include "generate.hpp"
#include "model.hpp"
#include "sampling.hpp"
#include "tokenizer.hpp"

namespace troupe {

// Pipeline stages, or head groups of stages, placed on worker processes (`troupe worker`, docs/distributed.md);
// everything else runs here.
struct RemoteStages {
  int replica = -1;                    // -1: every replica
  int stage_begin = 0, stage_end = 0;  // stages [begin, end); a range on one worker runs as one chain there
  int group_begin = 0, group_end = 0;  // head groups [begin, end) of those stages: only their shards (KV heads, FFN
                                       // rows, KV cache) go to the worker, each stage stays here; 0, 0: whole stages
  std::string host;                    // the worker's address
  int port = 0;

  bool groups() const { return group_end > group_begin; }
};

struct Placement {
  std::vector<RemoteStages> remote;  // empty: everything in this process
  std::string secret;                // shared with the workers (HMAC challenge/response); "" only for loopback ones
  double timeout_s = 30;             // a remote step unanswered this long fails its requests and drops the link
  double reconnect_s = 1;            // between attempts to re-attach a worker that is gone
  bool f16 = false;                  // activations cross as f16 (half the bytes; outputs then differ from in-process)

  // The worker serving stage s of replica r, or nullptr when it is local.
  const RemoteStages* find(int replica, int stage) const;
  // The worker serving head group g of stage s of replica r, or nullptr when the group runs with its stage.
  const RemoteStages* find_group(int replica, int stage, int group) const;
};

// How the model is cut: t head groups per stage, p pipeline stages, r replicas.
struct Plan {
  int tp = 1;
  int pp = 1;
  int replicas = 1;
  Precision precision = Precision::fast;
  int block_size = 16;           // KV positions per block
  int kv_blocks = 0;             // blocks per replica; 0: max(context, min(16384, max_running * context)) positions
  int max_running = 64;          // sequences decoding at once per replica
  int max_batched_tokens = 256;  // tokens per step (decode tokens + prefill chunks)
  int max_waiting = 256;         // queued requests per replica before "overloaded"
  int max_context = 0;           // 0: the model's training context
  int threads = 0;               // CAF scheduler threads; 0: the number of cores
  int team = 1;                  // threads per shard (and per stage, for the logits), splitting each step's matmuls
  Placement placement;           // stages on worker processes
  // Where each pipeline stage computes: devices[s] for stage s, or devices[0] for every stage when there is one
  // entry; empty: everything on the CPU. An entry is
  //   {-1}             the CPU: the stage's tp head groups on CPU threads
  //   {d}              CUDA device d: the whole stage (every head) as one GPU stage
  //   {g_0 .. g_tp-1}  head group i on g_i (-1 a CPU thread, d CUDA device d); the stage actor on the CPU adds
  //                    their partials
  std::vector<std::vector<int>> devices;
  const std::vector<int>* devices_of(int stage) const {
    if (devices.empty()) return nullptr;
    return devices.size() == 1 ? &devices[0] : &devices[stage];
  }
  int device_of(int stage) const {  // d when the stage is a GPU stage, else -1
    const auto* d = devices_of(stage);
    return d && d->size() == 1 ? (*d)[0] : -1;
  }
  int group_device(int stage, int group) const {  // d when the head group is a GPU shard, else -1
    const auto* d = devices_of(stage);
    return d && d->size() > 1 ? (*d)[group] : -1;
  }
  std::string describe() const;  // "tp=2 pp=1 replicas=1 ..." for the start-up log
};

std::string describe_devices(const std::vector<std::vector<int>>& devices);  // "cuda:0,cpu+cuda:1"

// Picks a plan for `cores` cores: head groups up to the model's KV heads and the cores, one stage, one replica.
Plan auto_plan(const ModelConfig& config, int cores);
// Checks that the model can be cut this way (group sizes, quantisation blocks, limits).
Expected<void> check_plan(const Model& model, const Plan& plan);

struct Request {
  std::vector<TokenId> prompt;
  GenerateParams params;  // max_tokens, stop strings, ignore_eos, sampling
  int credit = 1 << 30;   // tokens that may be delivered before the consumer acks (backpressure window)
  int logprobs = -1;      // -1: none; 0: the chosen token's log-probability; k > 0: and the k most likely tokens'
};

// Log-probabilities are the model's own distribution (log-softmax of the logits, before logit bias, penalties,
// temperature and truncation), as vLLM reports them by default.
struct TokenEvent {
  TokenId token = 0;
  std::string text;  // the text this token completes (may be empty: a partial character or a held stop prefix)
  float logprob = 0;                             // when Request::logprobs >= 0
  std::vector<std::pair<TokenId, float>> top;    // the Request::logprobs most likely tokens, most likely first
};

struct FinishEvent {
  FinishReason reason = FinishReason::length;
  int n_prompt = 0;
  int n_generated = 0;
  std::string text;  // text released at the end (held-back bytes)
  double queue_seconds = 0;  // from submit to the first step that computed it
};

// Receives a request's events, on an engine thread: it must not block. Exactly one of on_finished / on_error ends
// the stream.
class Sink {
 public:
  virtual ~Sink() = default;
  virtual void on_token(const TokenEvent& event) = 0;
  virtual void on_finished(const FinishEvent& event) = 0;
  virtual void on_error(const Error& error) = 0;
};

using RequestId = uint64_t;

// Upper bounds (seconds) of the buckets of a shard's step time; +Inf is implied. A decode step of a small model is
// about a millisecond per shard, a prefill chunk of a large one seconds.
inline constexpr std::array<double, 14> kShardStepBounds = {0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
                                                            0.1,    0.25,  0.5,    1.0,   2.5,  5.0,  10.0};

// One shard actor's load: what waits for it, and how long its part of a step takes (to find the slow one).
struct ShardStats {
  int replica = 0, stage = 0, group = 0;
  int64_t mailbox_depth = 0;           // messages its stage sent that it has not yet taken from its mailbox
  uint64_t steps = 0;                  // steps it computed all its layers of
  double step_seconds = 0;             // its compute time over those steps, summed
  std::vector<uint64_t> step_buckets;  // (kShardStepBounds.size() + 1) steps per bucket, not cumulative; last +Inf
};

struct EngineStats {
  int running = 0;
  int waiting = 0;
  int paused = 0;
  int blocks_used = 0;
  int blocks_total = 0;
  uint64_t preemptions = 0;
  uint64_t steps = 0;
  uint64_t messages = 0;          // actor messages sent for steps (scheduler, stages, shards)
  uint64_t tokens_generated = 0;
  uint64_t prompt_tokens = 0;
  uint64_t shard_restarts = 0;
  double compute_seconds = 0;     // time shards spent computing
  double step_seconds = 0;        // wall time of steps from send to result (summed over steps)
  std::vector<ShardStats> shards; // every shard of every replica, by (replica, stage, group)
};

class Engine {
 public:
  static Expected<std::unique_ptr<Engine>> start(std::shared_ptr<const Model> model, const Tokenizer& tokenizer,
                                                 const Plan& plan);
  virtual ~Engine() = default;

  // Queues a request. Errors at once: overloaded (with a retry-after estimate in seconds in the message and
  // retry_after()), invalid_argument (empty prompt, prompt plus max_tokens past the context).
  virtual Expected<RequestId> submit(Request request, std::shared_ptr<Sink> sink) = 0;
  virtual void ack(RequestId id, int n_tokens) = 0;
  virtual void cancel(RequestId id) = 0;
  virtual EngineStats stats() = 0;
  virtual const Plan& plan() const = 0;
  // Seconds a refused client should wait, from the measured drain rate.
  virtual double retry_after() = 0;

  // Replicas that can serve now, and what is wrong with the others ("" when all are up): a replica whose worker is
  // unreachable is down until it re-attaches. Cheap and non-blocking (for /health).
  struct Health {
    int replicas_up = 0;
    std::string detail;
  };
  virtual Health health() { return {plan().replicas, {}}; }

  // Fault injection for tests: the shard (replica, stage, group) throws on its next message. The environment switch
  // TROUPE_FAULT=replica:stage:group:step does the same when that replica sends its step-th step (any front end).
  virtual void inject_fault(int replica, int stage, int group) = 0;
};

}  // namespace troupe
