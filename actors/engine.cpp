// engine.cpp: Engine's implementation: an actor system, one scheduler actor per replica, and the calls from plain
// C++ threads into them.
#include "engine.hpp"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <mutex>
#include <thread>

#include "remote.hpp"
#include "troupe.hpp"

namespace troupe {

std::string Plan::describe() const {
  return "tp=" + std::to_string(tp) + " pp=" + std::to_string(pp) + " replicas=" + std::to_string(replicas) +
         " precision=" + (precision == Precision::exact ? "exact" : "fast") + " kv_blocks=" + std::to_string(kv_blocks) +
         "x" + std::to_string(block_size) + " max_running=" + std::to_string(max_running) +
         " max_batched_tokens=" + std::to_string(max_batched_tokens) + " max_waiting=" + std::to_string(max_waiting) +
         " max_context=" + std::to_string(max_context) + " threads=" + std::to_string(threads) + " team=" + std::to_string(team) +
         (devices.empty() ? "" : " devices=" + describe_devices(devices));
}

std::string describe_devices(const std::vector<std::vector<int>>& devices) {
  std::string out;
  for (size_t i = 0; i < devices.size(); ++i) {
    out += i ? "," : "";
    for (size_t g = 0; g < devices[i].size(); ++g) {
      out += (g ? "+" : "") + (devices[i][g] < 0 ? std::string("cpu") : "cuda:" + std::to_string(devices[i][g]));
    }
  }
  return out;
}

const RemoteStages* Placement::find(int replica, int stage) const {
  for (const auto& r : remote) {
    if (!r.groups() && (r.replica < 0 || r.replica == replica) && stage >= r.stage_begin && stage < r.stage_end) return &r;
  }
  return nullptr;
}

namespace {

// "replica 0: stage 0 here (layers 0-9), stages 1-2 on 127.0.0.1:9101 (layers 10-29)" per replica, for the log.
std::string describe_placement(const Plan& plan, const ModelConfig& c) {
  auto layers = split_range(c.n_layer, plan.pp, 1);
  std::string out;
  for (int r = 0; r < plan.replicas; ++r) {
    out += (r ? "; replica " : "replica ") + std::to_string(r) + ":";
    for (int s = 0; s < plan.pp;) {
      const RemoteStages* w = plan.placement.find(r, s);
      int e = s + 1;
      while (e < plan.pp) {
        const RemoteStages* n = plan.placement.find(r, e);
        if ((w == nullptr) != (n == nullptr) || (w && (n->host != w->host || n->port != w->port))) break;
        if (!w && (!describe_groups(plan, r, s).empty() || !describe_groups(plan, r, e).empty())) break;
        ++e;
      }
      out += (s ? ", " : " ") + std::string(e - s > 1 ? "stages " : "stage ") + std::to_string(s) +
             (e - s > 1 ? "-" + std::to_string(e - 1) : "") +
             (w ? " on " + w->host + ":" + std::to_string(w->port) : " here") + " (layers " +
             std::to_string((*layers)[s].first) + "-" + std::to_string((*layers)[e - 1].second - 1) +
             (w ? "" : describe_groups(plan, r, s)) + ")";
      s = e;
    }
  }
  return out;
}

}  // namespace

Plan auto_plan(const ModelConfig& config, int cores) {
  // One replica, one stage: head groups share a step's work with the fewest messages per token, and a single
  // replica batches every request together (batching is what pays on a CPU). One group per core, up to the KV heads.
  Plan plan;
  plan.tp = std::clamp(cores, 1, config.n_head_kv);
  while (plan.tp > 1 && config.n_head_kv % plan.tp != 0 && plan.tp > cores) --plan.tp;
  return plan;
}

// Stages on CUDA devices: the devices exist, the stage is not also on a worker, and the GPU path can run the model.
static Expected<void> check_devices(const Model& model, const Plan& plan) {
  if (plan.devices.empty()) return {};
  auto bad = [](const std::string& m) { return Error{ErrorKind::invalid_argument, m}; };
  if (plan.devices.size() != 1 && static_cast<int>(plan.devices.size()) != plan.pp) {
    return bad("--devices lists " + std::to_string(plan.devices.size()) + " devices for " + std::to_string(plan.pp) +
               " pipeline stage(s): give one for every stage, or one for all");
  }
  std::string why;
  const int n_cuda = cuda_device_count(&why);
  const ModelConfig& c = model.config();
  for (int s = 0; s < plan.pp; ++s) {
    const std::vector<int>& list = *plan.devices_of(s);
    if (list.size() > 1 && static_cast<int>(list.size()) != plan.tp) {
      return bad("stage " + std::to_string(s) + ": " + std::to_string(list.size()) + " head-group devices for tp " +
                 std::to_string(plan.tp) + " (give one per head group, joined by +)");
    }
    for (size_t g = 0; g < list.size(); ++g) {
      const int d = list[g];
      if (d < 0) continue;
      const std::string where = "stage " + std::to_string(s) + (list.size() > 1 ? " group " + std::to_string(g) : "") +
                                " on cuda:" + std::to_string(d);
      if (d >= n_cuda) {
        return Error{ErrorKind::unavailable,
                     where + ": " + (n_cuda == 0 ? why : std::to_string(n_cuda) + " CUDA device(s)")};
      }
      if (plan.precision != Precision::fast) return bad(where + ": GPU stages compute in the fast precision only");
      for (int r = 0; r < plan.replicas; ++r) {  // a stage or a group is either on a worker or on a GPU here
        bool on_worker = plan.placement.find(r, s) != nullptr;
        for (int g2 = 0; g2 < plan.tp; ++g2) {
          if ((list.size() == 1 || g2 == static_cast<int>(g)) && plan.placement.find_group(r, s, g2)) on_worker = true;
        }
        if (on_worker) return bad(where + ": it is also placed on a worker");
      }
      if (c.head_dim % 32 != 0 || c.head_dim > 256) {
        return bad(where + ": the CUDA attention needs a head size that is a multiple of 32 up to 256");
      }
    }
  }
  return {};
}

Expected<void> check_plan(const Model& model, const Plan& plan) {
  const ModelConfig& c = model.config();
  auto bad = [](const std::string& m) { return Error{ErrorKind::invalid_argument, m}; };
  if (plan.pp < 1 || plan.pp > c.n_layer) {
    return bad("--pp " + std::to_string(plan.pp) + ": pipeline stages must be 1 .. " + std::to_string(c.n_layer));
  }
  if (plan.replicas < 1 || plan.replicas > 64) return bad("--replicas must be 1 .. 64");
  if (plan.block_size < 1 || plan.block_size > 4096) return bad("--block-size must be 1 .. 4096");
  if (plan.max_running < 1 || plan.max_batched_tokens < 1 || plan.max_waiting < 0) {
    return bad("max_running and max_batched_tokens must be positive, max_waiting not negative");
  }
  if (plan.max_batched_tokens < plan.max_running) {
    return bad("max_batched_tokens (" + std::to_string(plan.max_batched_tokens) + ") must be at least max_running (" +
               std::to_string(plan.max_running) + "): every running sequence needs a token per step");
  }
  for (const auto& r : plan.placement.remote) {
    if (r.groups()) continue;  // check_group_placement
    const std::string where = "placement of " + r.host + ":" + std::to_string(r.port);
    if (r.host.empty() || r.port < 1 || r.port > 65535) return bad(where + ": a worker needs HOST:PORT");
    if (r.replica >= plan.replicas) return bad(where + ": replica " + std::to_string(r.replica) + " does not exist");
    if (r.stage_begin < 0 || r.stage_begin >= r.stage_end || r.stage_end > plan.pp) {
      return bad(where + ": stages " + std::to_string(r.stage_begin) + ".." + std::to_string(r.stage_end - 1) +
                 " outside the pipeline's 0.." + std::to_string(plan.pp - 1));
    }
    for (const auto& o : plan.placement.remote) {
      const bool same_replicas = r.replica < 0 || o.replica < 0 || r.replica == o.replica;
      if (&o != &r && !o.groups() && same_replicas && r.stage_begin < o.stage_end && o.stage_begin < r.stage_end) {
        return bad(where + ": a stage is placed twice");
      }
    }
  }
  if (auto ok = check_group_placement(plan); !ok) return ok.error();
  if (plan.placement.timeout_s <= 0 || plan.placement.reconnect_s <= 0) {
    return bad("remote timeout and reconnect interval must be positive");
  }
  if (auto ok = check_devices(model, plan); !ok) return ok;
  auto layers = split_range(c.n_layer, plan.pp, 1);
  if (!layers) return layers.error();
  for (auto [l0, l1] : *layers) {
    auto specs = split_stage(c, l0, l1, plan.tp);
    if (!specs) return specs.error();
    for (const auto& s : *specs) {
      if (auto ok = check_shard(model, s); !ok) return ok.error();
    }
  }
  return {};
}

namespace {

class ActorEngine final : public Engine {
 public:
  ActorEngine(std::shared_ptr<const Model> model, Tokenizer tokenizer, Plan plan, FileDigest digest)
      : model_(std::move(model)), tokenizer_(std::move(tokenizer)), plan_(plan), system_(configure(config_, plan)),
        loads_(plan.replicas), health_(plan.replicas) {
    metrics_ = std::make_shared<Metrics>(plan_.replicas, plan_.pp, plan_.tp);
    // TROUPE_FAULT=replica:stage:group:step, the fault-injection switch for front ends that have no API to call.
    int f_replica = -1, f_stage = 0, f_group = 0;
    unsigned long long f_step = 0;
    if (const char* f = std::getenv("TROUPE_FAULT")) {
      if (std::sscanf(f, "%d:%d:%d:%llu", &f_replica, &f_stage, &f_group, &f_step) != 4) {
        spdlog::warn("TROUPE_FAULT='{}' ignored: expected replica:stage:group:step", f);
        f_replica = -1;
      }
    }
    if (plan_.placement.remote.empty()) {
      for (auto& h : health_) h = {true, true, {}};  // nothing to attach
    }
    for (int r = 0; r < plan_.replicas; ++r) {
      ReplicaInit init{model_, &tokenizer_, plan_, r, plan_.kv_blocks, plan_.max_context, metrics_,
                       [this](int replica) { loads_[replica] -= 1; }};
      if (r == f_replica) init.fault_step = f_step, init.fault_stage = f_stage, init.fault_group = f_group;
      init.digest = digest;
      init.on_health = [this](int replica, bool up, const std::string& why) {
        {
          std::lock_guard lock(health_mutex_);
          health_[replica] = {true, up, why};
        }
        health_changed_.notify_all();
      };
      schedulers_.push_back(spawn_scheduler(system_, std::move(init)));
    }
    if (!plan_.placement.remote.empty()) {
      // Serve once every replica has attached its workers or failed to (it keeps retrying): at most 20 s.
      std::unique_lock lock(health_mutex_);
      health_changed_.wait_for(lock, std::chrono::seconds(20), [this] {
        return std::all_of(health_.begin(), health_.end(), [](const ReplicaHealth& h) { return h.known; });
      });
    }
  }

  ~ActorEngine() override {
    for (const auto& s : schedulers_) caf::anon_send(s, stop_atom::value);
    schedulers_.clear();
    system_.await_all_actors_done();
  }

  Expected<RequestId> submit(Request request, std::shared_ptr<Sink> sink) override {
    if (request.prompt.empty()) return Error{ErrorKind::invalid_argument, "the prompt is empty"};
    if (request.params.max_tokens < 1) return Error{ErrorKind::invalid_argument, "max_tokens must be at least 1"};
    const int64_t total = static_cast<int64_t>(request.prompt.size()) + request.params.max_tokens;
    if (total > plan_.max_context) {
      return Error{ErrorKind::invalid_argument,
                   "the prompt (" + std::to_string(request.prompt.size()) + " tokens) plus max_tokens (" +
                       std::to_string(request.params.max_tokens) + ") exceeds the context of " +
                       std::to_string(plan_.max_context) + " tokens"};
    }
    // The least loaded replica (requests running or waiting on it) of those that can serve.
    int replica = -1;
    {
      std::lock_guard lock(health_mutex_);
      for (int r = 0; r < plan_.replicas; ++r) {
        if (health_[r].up && (replica < 0 || loads_[r].load() < loads_[replica].load())) replica = r;
      }
    }
    if (replica < 0) replica = 0;  // none can: its scheduler says why
    const RequestId id = next_id_++ * 64 + replica;  // the replica is recoverable from the id
    auto sub = std::make_shared<Submission>(Submission{id, std::move(request), std::move(sink)});
    loads_[replica] += 1;
    caf::scoped_actor self{system_};
    Expected<RequestId> out = Error{ErrorKind::internal, "no answer from the scheduler"};
    self->request(schedulers_[replica], std::chrono::seconds(30), submit_atom::value, std::move(sub))
        .receive(
            [&](int kind, const std::string& message, double retry) {
              if (kind < 0) {
                out = id;
              } else {
                out = Error{static_cast<ErrorKind>(kind), message, retry};
              }
            },
            [&](caf::error& e) { out = Error{ErrorKind::unavailable, "scheduler: " + system_.render(e)}; });
    if (!out) loads_[replica] -= 1;
    return out;
  }

  void ack(RequestId id, int n_tokens) override {
    caf::anon_send(schedulers_[id % 64], ack_atom::value, id, n_tokens);
  }

  void cancel(RequestId id) override { caf::anon_send(schedulers_[id % 64], cancel_atom::value, id); }

  EngineStats stats() override {
    EngineStats total;
    caf::scoped_actor self{system_};
    for (const auto& s : schedulers_) {
      self->request(s, std::chrono::seconds(10), stats_atom::value)
          .receive(
              [&](const EngineStats& r) {
                total.running += r.running;
                total.waiting += r.waiting;
                total.paused += r.paused;
                total.blocks_used += r.blocks_used;
                total.blocks_total += r.blocks_total;
                total.preemptions += r.preemptions;
                total.steps += r.steps;
                total.tokens_generated += r.tokens_generated;
                total.prompt_tokens += r.prompt_tokens;
                total.step_seconds += r.step_seconds;
              },
              [&](caf::error&) {});
    }
    total.messages = metrics_->messages.load();
    total.compute_seconds = metrics_->compute_ns.load() * 1e-9;
    total.shard_restarts = metrics_->shard_restarts.load();
    for (int r = 0; r < plan_.replicas; ++r) {
      for (int s = 0; s < plan_.pp; ++s) {
        for (int g = 0; g < plan_.tp; ++g) total.shards.push_back(shard_stats(r, s, g));
      }
    }
    return total;
  }

  const Plan& plan() const override { return plan_; }

  ShardStats shard_stats(int replica, int stage, int group) const {
    const ShardCounters& c = metrics_->shard(replica, stage, group);
    ShardStats out{replica, stage, group};
    const uint64_t taken = c.taken.load(std::memory_order_relaxed);  // first: the two are read at different moments
    out.mailbox_depth = std::max<int64_t>(0, static_cast<int64_t>(c.sent.load(std::memory_order_relaxed) - taken));
    for (const auto& b : c.step_buckets) out.step_buckets.push_back(b.load(std::memory_order_relaxed));
    for (uint64_t n : out.step_buckets) out.steps += n;
    out.step_seconds = c.step_ns.load(std::memory_order_relaxed) * 1e-9;
    return out;
  }

  double retry_after() override { return 1.0; }

  Health health() override {
    Health h;
    std::lock_guard lock(health_mutex_);
    for (int r = 0; r < plan_.replicas; ++r) {
      if (health_[r].up) {
        h.replicas_up += 1;
      } else {
        h.detail += (h.detail.empty() ? "" : "; ") + std::string("replica ") + std::to_string(r) + ": " +
                    (health_[r].known ? health_[r].why : "attaching its workers");
      }
    }
    return h;
  }

  void inject_fault(int replica, int stage, int group) override {
    if (replica < 0 || replica >= plan_.replicas) return;
    caf::anon_send(schedulers_[replica], fault_atom::value, stage, group);
  }

 private:
  static caf::actor_system_config& configure(caf::actor_system_config& cfg, const Plan& plan) {
    const int threads = plan.threads > 0 ? plan.threads : std::max(2u, std::thread::hardware_concurrency());
    cfg.set("scheduler.max-threads", threads);
    // Idle workers block on a condition variable after a short spin instead of sleeping in steps: messages from
    // outside CAF (HTTP threads) then arrive in microseconds (see STACK.md).
    cfg.set("work-stealing.moderate-poll-attempts", 0);
    if (!plan.placement.remote.empty()) configure_remote(cfg);
    return cfg;
  }

  struct ReplicaHealth {
    bool known = false;  // its scheduler has reported once
    bool up = false;
    std::string why;
  };

  std::shared_ptr<const Model> model_;
  Tokenizer tokenizer_;
  Plan plan_;
  caf::actor_system_config config_;
  caf::actor_system system_;
  std::vector<std::atomic<int>> loads_;
  std::shared_ptr<Metrics> metrics_;
  std::vector<caf::actor> schedulers_;
  std::atomic<uint64_t> next_id_{1};
  std::mutex health_mutex_;
  std::condition_variable health_changed_;
  std::vector<ReplicaHealth> health_;  // (replicas) as their schedulers last reported
};

}  // namespace

Expected<std::unique_ptr<Engine>> Engine::start(std::shared_ptr<const Model> model, const Tokenizer& tokenizer,
                                                const Plan& requested) {
  Plan plan = requested;
  const ModelConfig& c = model->config();
  if (plan.max_context <= 0 || plan.max_context > c.n_ctx_train) plan.max_context = c.n_ctx_train;
  if (plan.kv_blocks <= 0) {
    // Room for one sequence of the whole context, and for max_running sequences up to 16384 positions in all
    // (for SmolLM2-135M, 23 KB per position per replica in fp16: 377 MB).
    const int64_t positions = std::max<int64_t>(plan.max_context, std::min<int64_t>(16384, int64_t{plan.max_running} * plan.max_context));
    plan.kv_blocks = static_cast<int>((positions + plan.block_size - 1) / plan.block_size);
  }
  if (auto ok = check_plan(*model, plan); !ok) return ok.error();
  spdlog::info("plan: {}", plan.describe());
  FileDigest digest;
  if (!plan.placement.remote.empty()) {
    // Workers load their own copy of the model; the attach checks that it is this one.
    auto d = digest_file(model->file().path());
    if (!d) return d.error();
    digest = *d;
    spdlog::info("placement: {}; activations cross as {}, remote timeout {} s, model sha256 {}",
                 describe_placement(plan, c), plan.placement.f16 ? "f16" : "f32", plan.placement.timeout_s,
                 digest.sha256.substr(0, 16));
  }
  return std::unique_ptr<Engine>(new ActorEngine(std::move(model), tokenizer, plan, digest));
}

}  // namespace troupe
