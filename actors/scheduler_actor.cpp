// scheduler_actor.cpp: one replica's scheduler. It wraps the plain Scheduler (continuous batching over the paged KV
// cache), keeps up to pp steps in flight so pipeline stages overlap, samples each sequence's next token from the
// last stage's logits, turns tokens into text (stop strings, end-of-generation) and feeds the requests' sinks.
//
// Faults: the scheduler spawns and monitors its stages; each stage monitors and respawns its shards. A failed step
// fails only the sequences in it. A respawned shard has an empty KV cache, so the replica's other sequences are
// preempted (recomputed from their tokens); steps already in flight when it happened fail too, since they ran over
// the lost cache. A stage that dies takes the whole pipeline down: it is respawned and serving goes on.
#include <spdlog/spdlog.h>

#include <algorithm>
#include <cmath>
#include <functional>
#include <chrono>
#include <deque>
#include <map>
#include <unordered_map>

#include "remote.hpp"
#include "scheduler.hpp"
#include "troupe.hpp"

namespace troupe {

namespace {

using Clock = std::chrono::steady_clock;

struct SeqInfo {
  std::shared_ptr<Sink> sink;
  GenerateParams params;
  Sampler sampler;
  IncrementalDecoder decoder;
  StopMatcher stops;
  int n_prompt = 0;
  int n_generated = 0;
  int logprobs = -1;
  Clock::time_point submitted = Clock::now();
  double queue_seconds = -1;  // set when a step first computes it
};

struct InFlight {
  StepPlan plan;
  Clock::time_point sent;
  bool tainted = false;  // ran over a cache a shard restart lost: its sequences fail when it returns
};

struct SchedulerState {
  ReplicaInit init;
  std::unique_ptr<Scheduler> sched;
  std::unordered_map<SeqId, SeqInfo> seqs;
  std::map<uint64_t, InFlight> in_flight;
  std::vector<caf::actor> stages;
  std::deque<Clock::time_point> completions;  // the last requests to finish: the drain rate for retry-after
  std::vector<float> scratch;
  EngineStats counters;
  // Stages on workers (plan.placement): a link actor stands in for each range of them (remote.hpp).
  std::vector<bool> remote;  // (pp) stage s runs on a worker; stages[s] is then its range's link
  std::vector<bool> remote_groups;  // (pp) stage s runs here with some of its head groups on workers
  int links_pending = 0;     // links of this pipeline that have not attached yet
  bool ready = true;         // every link attached: steps may be sent
  std::string down;          // why the replica cannot serve ("" when it can): a worker is gone; re-attaching
  uint64_t attempts = 0;     // re-attach attempts since it went down
};

using SchedulerActor = caf::stateful_actor<SchedulerState>;

// Sinks belong to the caller; one that throws must not take the replica down.
template <class F>
void to_sink(const std::shared_ptr<Sink>& sink, F&& f) {
  try {
    f(*sink);
  } catch (const std::exception& e) {
    spdlog::warn("a request's sink threw: {}", e.what());
  }
}

double retry_after(const SchedulerState& st) {
  const double waiting = st.sched->stats().waiting + 1;
  if (st.completions.size() < 2) return std::clamp(waiting, 1.0, 600.0);
  const double span = std::chrono::duration<double>(st.completions.back() - st.completions.front()).count();
  const double rate = (st.completions.size() - 1) / std::max(span, 1e-3);  // requests finished per second
  return std::clamp(waiting / rate, 1.0, 600.0);
}

void request_done(SchedulerActor* self, SeqId id) {
  auto& st = self->state;
  st.seqs.erase(id);
  st.completions.push_back(Clock::now());
  if (st.completions.size() > 64) st.completions.pop_front();
  if (st.init.on_request_done) st.init.on_request_done(st.init.replica);
}

void end_sequence(SchedulerActor* self, SeqId id, FinishReason reason) {
  auto& st = self->state;
  auto it = st.seqs.find(id);
  if (it == st.seqs.end()) return;
  SeqInfo& s = it->second;
  FinishEvent ev{reason, s.n_prompt, s.n_generated, {}, std::max(0.0, s.queue_seconds)};
  if (reason == FinishReason::length) {
    ev.text = s.stops.push(s.decoder.flush());
    ev.text += s.stops.flush();
  }
  st.sched->finish(id);
  auto sink = s.sink;
  request_done(self, id);
  to_sink(sink, [&](Sink& k) { k.on_finished(ev); });
}

void fail_sequence(SchedulerActor* self, SeqId id, const Error& error) {
  auto& st = self->state;
  auto it = st.seqs.find(id);
  if (it == st.seqs.end()) return;
  auto sink = it->second.sink;
  st.sched->finish(id);
  request_done(self, id);
  to_sink(sink, [&](Sink& k) { k.on_error(error); });
}

void stop_stages(SchedulerActor* self) {
  for (const auto& s : self->state.stages) {
    self->demonitor(s);
    self->send_exit(s, caf::exit_reason::user_shutdown);
  }
  self->state.stages.clear();
}

// What a worker is asked to run: stages [begin, end) of this replica's plan (or, with spec.group set, a head group).
AttachSpec attach_spec(const SchedulerState& st, int begin, int end) {
  const Plan& plan = st.init.plan;
  return AttachSpec{st.init.digest.size, st.init.digest.sha256, st.init.replica, plan.pp, begin, end, plan.tp,
                    static_cast<int>(plan.precision), plan.max_batched_tokens, st.init.n_blocks, plan.block_size,
                    st.init.max_context, plan.team,
                    static_cast<int>(plan.placement.f16 ? WireDtype::f16 : WireDtype::f32)};
}

// For a local stage with head groups on workers: what the stage calls to spawn the link of group g (an invalid
// handle for a group that runs here). Empty when every group of the stage runs here.
std::function<caf::actor(caf::local_actor*, int)> remote_groups(SchedulerActor* self, int stage) {
  auto& st = self->state;
  const Plan& plan = st.init.plan;
  const int replica = st.init.replica;
  bool any = false;
  for (int g = 0; g < plan.tp; ++g) any = any || plan.placement.find_group(replica, stage, g) != nullptr;
  if (!any) return {};
  GroupLinkInit base{st.init.model, {}, 0, plan.placement.secret, st.init.digest, attach_spec(st, stage, stage + 1),
                     plan.placement.timeout_s, {}, caf::actor_cast<caf::actor>(self), st.init.metrics, nullptr};
  return [base, placement = plan.placement, replica, stage](caf::local_actor* stage_actor, int g) -> caf::actor {
    const RemoteStages* w = placement.find_group(replica, stage, g);
    if (!w) return {};
    GroupLinkInit init = base;
    init.host = w->host;
    init.port = w->port;
    init.spec.group = g;
    init.stage = caf::actor_cast<caf::actor>(stage_actor);
    init.counters = &init.metrics->shard(replica, stage, g);
    return spawn_group_link(stage_actor, std::move(init));
  };
}

// The link for stages [.., last] placed on one worker (consecutive stages on the same worker form one range).
caf::actor spawn_remote_range(SchedulerActor* self, const RemoteStages& w, int last, caf::actor downstream) {
  auto& st = self->state;
  const Plan& plan = st.init.plan;
  RemoteStages range = w;
  range.stage_end = last + 1;
  range.stage_begin = last;
  while (range.stage_begin > 0) {
    const RemoteStages* prev = plan.placement.find(st.init.replica, range.stage_begin - 1);
    if (!prev || prev->host != w.host || prev->port != w.port) break;
    --range.stage_begin;
  }
  LinkInit li{st.init.model, range, plan.placement.secret, st.init.digest,
              attach_spec(st, range.stage_begin, range.stage_end), plan.placement.timeout_s,
              std::move(downstream), caf::actor_cast<caf::actor>(self), st.init.metrics};
  caf::actor link = spawn_link(self, std::move(li));
  self->monitor(link);
  for (int s = range.stage_begin; s <= last; ++s) {
    st.stages[s] = link;
    st.remote[s] = true;
  }
  st.links_pending += 1;
  return link;
}

void spawn_pipeline(SchedulerActor* self) {
  auto& st = self->state;
  const Plan& plan = st.init.plan;
  const ModelConfig& c = st.init.model->config();
  stop_stages(self);
  st.stages.assign(plan.pp, caf::actor{});
  st.remote.assign(plan.pp, false);
  st.remote_groups.assign(plan.pp, false);
  st.links_pending = 0;
  auto layers = split_range(c.n_layer, plan.pp, 1);
  caf::actor downstream = caf::actor_cast<caf::actor>(self);
  for (int s = plan.pp - 1; s >= 0; --s) {  // last first: each stage needs the next one's handle
    if (const RemoteStages* w = plan.placement.find(st.init.replica, s)) {
      downstream = spawn_remote_range(self, *w, s, downstream);
      while (s > 0 && st.stages[s - 1] == downstream) --s;
      continue;
    }
    if (plan.device_of(s) >= 0) {
      // A stage on a GPU fails like a worker: when it exits, the replica is down until a respawn succeeds.
      GpuStageSpec gs;
      gs.device = plan.device_of(s);
      gs.layer_begin = (*layers)[s].first;
      gs.layer_end = (*layers)[s].second;
      gs.first = s == 0;
      gs.last = s == plan.pp - 1;
      gs.max_tokens = plan.max_batched_tokens;
      gs.n_blocks = st.init.n_blocks;
      gs.block_size = plan.block_size;
      const bool next_gpu = s + 1 < plan.pp && plan.device_of(s + 1) >= 0;  // GPU stages are never remote
      if (next_gpu) gs.output_slots = plan.pp + 1;  // more than the steps in flight (one per stage at most)
      GpuStageInit gi{st.init.model, gs, s, downstream, caf::actor_cast<caf::actor>(self), st.init.metrics,
                      st.init.replica, next_gpu};
      st.stages[s] = spawn_gpu_stage(self, std::move(gi));
      st.remote[s] = true;
      self->monitor(st.stages[s]);
      downstream = st.stages[s];
      continue;
    }
    auto shards = split_stage(c, (*layers)[s].first, (*layers)[s].second, plan.tp);
    StageInit si{st.init.model, *shards, s, s == 0, s == plan.pp - 1, plan.precision,
                 plan.max_batched_tokens, st.init.n_blocks, plan.block_size, downstream,
                 caf::actor_cast<caf::actor>(self), st.init.metrics, st.init.replica, plan.team};
    bool gpu_groups = false;
    for (int g = 0; g < plan.tp && plan.devices_of(s) && plan.devices_of(s)->size() > 1; ++g) {
      si.group_devices.push_back(plan.group_device(s, g));
      gpu_groups = gpu_groups || si.group_devices.back() >= 0;
    }
    si.remote_group = remote_groups(self, s);
    if (si.remote_group) {
      st.remote_groups[s] = true;
      st.links_pending += 1;  // the stage reports (attached) once its group links have
    }
    st.stages[s] = spawn_stage(self, std::move(si));
    // a stage with GPU shards ends when a device fails: the replica is then down, as when a worker is lost
    if (gpu_groups) st.remote_groups[s] = true;
    self->monitor(st.stages[s]);
    downstream = st.stages[s];
  }
  st.ready = st.links_pending == 0;
}

// Fault injection for (stage, group): a link takes the stage too (it may stand for several).
void send_fault(SchedulerActor* self, int stage, int group) {
  auto& st = self->state;
  if (stage < 0 || stage >= static_cast<int>(st.stages.size())) return;
  if (st.remote[stage]) {
    self->send(st.stages[stage], fault_atom::value, stage, group);
  } else {
    self->send(st.stages[stage], fault_atom::value, group);
  }
}

void pump(SchedulerActor* self) {
  auto& st = self->state;
  if (!st.ready) return;  // links still attaching
  const int depth = st.init.plan.pp;
  while (static_cast<int>(st.in_flight.size()) < depth) {
    // With a pipeline, each step takes a share of the runnable sequences so that the next step has some too.
    const int running = st.sched->stats().running;
    const int cap = depth == 1 ? 1 << 30 : std::max(1, (running + depth - 1) / depth);
    auto plan = st.sched->schedule(cap);
    if (!plan) break;
    StepData data;
    data.step_id = plan->step_id;
    for (const auto& e : plan->entries) {
      StepLayout::Seq seq{data.layout.n_tokens, static_cast<int>(e.tokens.size()), e.pos0, e.block_table};
      data.tokens.insert(data.tokens.end(), e.tokens.begin(), e.tokens.end());
      data.layout.n_tokens += seq.n;
      if (e.wants_logits) data.logit_rows.push_back(seq.first + seq.n - 1);
      data.layout.seqs.push_back(std::move(seq));
    }
    st.counters.prompt_tokens += data.layout.n_tokens - static_cast<int>(data.logit_rows.size());
    const auto now = Clock::now();
    for (const auto& e : plan->entries) {
      auto it = st.seqs.find(e.id);
      if (it != st.seqs.end() && it->second.queue_seconds < 0) {
        it->second.queue_seconds = std::chrono::duration<double>(now - it->second.submitted).count();
      }
    }
    st.in_flight[plan->step_id] = {std::move(*plan), Clock::now(), false};
    self->send(st.stages.front(), step_atom::value, share(std::move(data)), Activations{});
    st.init.metrics->messages += 1;
    st.counters.steps += 1;
    if (st.counters.steps == st.init.fault_step && st.init.fault_stage < static_cast<int>(st.stages.size())) {
      spdlog::warn("replica {}: TROUPE_FAULT: shard {} of stage {} will fail", st.init.replica, st.init.fault_group,
                   st.init.fault_stage);
      send_fault(self, st.init.fault_stage, st.init.fault_group);
    }
  }
}

// A shard restarted: everything in flight ran over a lost cache, and what is not in flight must recompute.
void lose_cache(SchedulerActor* self) {
  auto& st = self->state;
  for (auto& [id, f] : st.in_flight) f.tainted = true;
  st.sched->preempt_all();
}

void fail_step(SchedulerActor* self, uint64_t step_id, const Error& error) {
  auto& st = self->state;
  auto it = st.in_flight.find(step_id);
  if (it == st.in_flight.end()) return;
  InFlight f = std::move(it->second);
  st.in_flight.erase(it);
  st.sched->abort(f.plan);
  for (const auto& e : f.plan.entries) fail_sequence(self, e.id, error);
}

// A worker of this replica's pipeline is gone (or never attached): every request of the replica ends now with
// `unavailable` (their KV cache was partly there), new ones are refused, and a fresh pipeline is tried every
// reconnect_s until all its workers attach again.
void remote_down(SchedulerActor* self, const std::string& why) {
  auto& st = self->state;
  const bool was_up = st.down.empty();
  const Error error{ErrorKind::unavailable, "replica " + std::to_string(st.init.replica) + " is unavailable: " + why};
  const size_t n_failed = st.seqs.size();
  std::vector<uint64_t> steps;
  for (const auto& [id, f] : st.in_flight) steps.push_back(id);
  for (uint64_t id : steps) fail_step(self, id, error);
  std::vector<SeqId> seqs;
  for (const auto& [id, info] : st.seqs) seqs.push_back(id);
  for (SeqId id : seqs) fail_sequence(self, id, error);
  stop_stages(self);  // the other links let go of their workers' KV pools too
  st.ready = false;
  if (was_up || why != st.down || st.attempts % 30 == 0) {
    spdlog::error("replica {}: {}{}; {} request(s) failed; re-attaching every {} s", st.init.replica, why,
                  was_up ? "" : " (attempt " + std::to_string(st.attempts) + ")", n_failed,
                  st.init.plan.placement.reconnect_s);
  }
  st.down = why;
  if (st.init.on_health) st.init.on_health(st.init.replica, false, why);
  const auto wait = std::chrono::duration_cast<caf::timespan>(std::chrono::duration<double>(st.init.plan.placement.reconnect_s));
  self->delayed_send(self, wait, reconnect_atom::value);
}

// The text of a link's end: the message it gave, else CAF's rendering.
std::string reason_text(SchedulerActor* self, const caf::error& e) {
  const caf::message& ctx = e.context();
  if (ctx.match_elements<std::string>()) return ctx.get_as<std::string>(0);
  return self->system().render(e);
}

// The model's log-probability of `chosen` and of the k most likely tokens (log-softmax of the raw logits).
void fill_logprobs(const float* logits, int n_vocab, TokenId chosen, int k, TokenEvent& ev) {
  const float max = *std::max_element(logits, logits + n_vocab);
  double sum = 0;
  for (int i = 0; i < n_vocab; ++i) sum += std::exp(static_cast<double>(logits[i] - max));
  const float log_z = max + static_cast<float>(std::log(sum));
  ev.logprob = logits[chosen] - log_z;
  if (k <= 0) return;
  k = std::min(k, n_vocab);
  std::vector<std::pair<float, TokenId>> best;
  best.reserve(k + 1);
  for (int i = 0; i < n_vocab; ++i) {  // a bounded min-heap of the k largest
    if (static_cast<int>(best.size()) < k || logits[i] > best.front().first) {
      best.emplace_back(logits[i], i);
      std::push_heap(best.begin(), best.end(), std::greater<>());
      if (static_cast<int>(best.size()) > k) {
        std::pop_heap(best.begin(), best.end(), std::greater<>());
        best.pop_back();
      }
    }
  }
  std::sort(best.begin(), best.end(), [](const auto& a, const auto& b) { return a.first > b.first || (a.first == b.first && a.second < b.second); });
  for (const auto& [logit, id] : best) ev.top.emplace_back(id, logit - log_z);
}

void on_result(SchedulerActor* self, uint64_t step_id, const Logits& logits) {
  auto& st = self->state;
  auto it = st.in_flight.find(step_id);
  if (it == st.in_flight.end()) return;
  if (it->second.tainted) {
    fail_step(self, step_id, {ErrorKind::unavailable, "a shard of this replica restarted while the request ran"});
    return;
  }
  InFlight f = std::move(it->second);
  st.in_flight.erase(it);
  st.counters.step_seconds += std::chrono::duration<double>(Clock::now() - f.sent).count();
  const int n_vocab = st.init.model->config().n_vocab;
  std::vector<TokenId> sampled;
  std::vector<SeqId> sampled_ids;
  std::vector<TokenEvent> events;  // logprobs, filled before sampling changes the logits
  size_t row = 0;
  for (const auto& e : f.plan.entries) {
    if (!e.wants_logits) continue;
    const float* l = logits->data() + row++ * n_vocab;
    auto s = st.seqs.find(e.id);
    TokenId tok = 0;
    TokenEvent ev;
    if (s != st.seqs.end()) {
      st.scratch.assign(l, l + n_vocab);
      tok = s->second.sampler.sample(st.scratch.data(), st.sched->tokens(e.id));
      if (s->second.logprobs >= 0) fill_logprobs(l, n_vocab, tok, s->second.logprobs, ev);
    }
    ev.token = tok;
    events.push_back(std::move(ev));
    sampled.push_back(tok);
    sampled_ids.push_back(e.id);
  }
  std::vector<std::pair<SeqId, SeqEvent>> left;
  st.sched->complete(f.plan, sampled, &left);
  for (size_t k = 0; k < sampled.size(); ++k) {
    auto s = st.seqs.find(sampled_ids[k]);
    if (s == st.seqs.end()) continue;  // cancelled while in flight
    SeqInfo& info = s->second;
    info.n_generated += 1;
    st.counters.tokens_generated += 1;
    const Tokenizer& tok = *st.init.tokenizer;
    if (!info.params.ignore_eos && tok.is_eog(sampled[k])) {
      end_sequence(self, sampled_ids[k], FinishReason::stop);
      continue;
    }
    TokenEvent& ev = events[k];
    ev.text = info.stops.push(info.decoder.push(sampled[k]));
    to_sink(info.sink, [&](Sink& sink) { sink.on_token(ev); });
    if (info.stops.stopped()) end_sequence(self, sampled_ids[k], FinishReason::stop);
  }
  for (const auto& [id, event] : left) {
    if (event == SeqEvent::finished) end_sequence(self, id, FinishReason::length);
  }
}

caf::behavior scheduler_actor(SchedulerActor* self, ReplicaInit init) {
  auto& st = self->state;
  st.init = std::move(init);
  const Plan& plan = st.init.plan;
  SchedulerLimits limits;
  limits.block_size = plan.block_size;
  limits.n_blocks = st.init.n_blocks;
  limits.max_running = plan.max_running;
  limits.max_batched_tokens = plan.max_batched_tokens;
  limits.max_waiting = plan.max_waiting;
  limits.max_context = st.init.max_context;
  st.sched = std::make_unique<Scheduler>(limits);
  spawn_pipeline(self);
  if (st.ready && st.init.on_health) st.init.on_health(st.init.replica, true, {});
  self->set_down_handler([self](caf::down_msg& dm) {
    auto& s = self->state;
    auto it = std::find_if(s.stages.begin(), s.stages.end(), [&](const caf::actor& a) { return a.address() == dm.source; });
    if (it == s.stages.end()) return;
    if (s.remote[it - s.stages.begin()] || s.remote_groups[it - s.stages.begin()]) {
      remote_down(self, reason_text(self, dm.reason));
      return;
    }
    spdlog::error("replica {}: a stage died ({}); restarting its pipeline", s.init.replica, caf::to_string(dm.reason));
    std::vector<uint64_t> steps;
    for (const auto& [id, f] : s.in_flight) steps.push_back(id);
    for (uint64_t id : steps) fail_step(self, id, {ErrorKind::unavailable, "a pipeline stage died"});
    s.sched->preempt_all();
    spawn_pipeline(self);
    pump(self);
  });
  return {
      [=](submit_atom, std::shared_ptr<Submission>& sub) -> caf::message {
        auto& s = self->state;
        const ModelConfig& c = s.init.model->config();
        const Request& r = sub->request;
        if (!s.down.empty()) {
          return caf::make_message(static_cast<int>(ErrorKind::unavailable),
                                   "replica " + std::to_string(s.init.replica) + " is unavailable: " + s.down, 0.0);
        }
        for (TokenId t : r.prompt) {
          if (t < 0 || t >= c.n_vocab) {
            return caf::make_message(static_cast<int>(ErrorKind::invalid_argument),
                                     "prompt token id " + std::to_string(t) + " is outside the vocabulary", 0.0);
          }
        }
        auto added = s.sched->add(sub->id, r.prompt, r.params.max_tokens, r.credit);
        if (!added) {
          const double retry = added.error().kind == ErrorKind::overloaded ? retry_after(s) : 0.0;
          return caf::make_message(static_cast<int>(added.error().kind), added.error().message, retry);
        }
        s.seqs.emplace(sub->id, SeqInfo{sub->sink, r.params, Sampler(r.params.sampling, c.n_vocab),
                                        IncrementalDecoder(*s.init.tokenizer), StopMatcher(r.params.stop),
                                        static_cast<int>(r.prompt.size()), 0, r.logprobs});
        pump(self);
        return caf::make_message(-1, std::string(), 0.0);
      },
      [=](ack_atom, RequestId id, int n) {
        self->state.sched->grant(id, n);
        pump(self);
      },
      [=](cancel_atom, RequestId id) {
        auto& s = self->state;
        auto it = s.seqs.find(id);
        if (it == s.seqs.end()) return;
        FinishEvent ev{FinishReason::cancelled, it->second.n_prompt, it->second.n_generated, {}};
        auto sink = it->second.sink;
        s.sched->finish(id);  // frees its blocks now, or when its step returns
        request_done(self, id);
        to_sink(sink, [&](Sink& k) { k.on_finished(ev); });
        pump(self);
      },
      [=](result_atom, uint64_t step_id, const Logits& logits) {
        on_result(self, step_id, logits);
        pump(self);
      },
      [=](failed_atom, uint64_t step_id, const std::string& why) {
        spdlog::error("replica {}: step failed: {}", self->state.init.replica, why);
        fail_step(self, step_id, {ErrorKind::unavailable, why});
        lose_cache(self);
        pump(self);
      },
      [=](restarted_atom, const std::string& why) {
        spdlog::error("replica {}: {}", self->state.init.replica, why);
        lose_cache(self);
        pump(self);
      },
      [=](fault_atom, int stage, int group) { send_fault(self, stage, group); },
      [=](attached_atom, int) {
        auto& s = self->state;
        const auto& sender = self->current_sender();
        if (std::none_of(s.stages.begin(), s.stages.end(),
                         [&](const caf::actor& a) { return caf::actor_cast<caf::strong_actor_ptr>(a) == sender; })) {
          return;  // a link of a pipeline already replaced
        }
        if (--s.links_pending > 0) return;
        s.ready = true;
        if (!s.down.empty()) {
          spdlog::info("replica {}: every worker attached again after {} attempt(s); serving", s.init.replica, s.attempts);
        } else {
          spdlog::info("replica {}: every worker attached", s.init.replica);
        }
        s.down.clear();
        s.attempts = 0;
        if (s.init.on_health) s.init.on_health(s.init.replica, true, {});
        pump(self);
      },
      [=](reconnect_atom) {
        auto& s = self->state;
        if (s.down.empty()) return;
        s.attempts += 1;
        spawn_pipeline(self);
      },
      [=](stop_atom) {
        // Whoever still waits hears that the engine stopped; the stages (and their shards) stop with us.
        auto& s = self->state;
        for (auto& [id, info] : s.seqs) {
          to_sink(info.sink, [](Sink& k) { k.on_error({ErrorKind::unavailable, "the engine stopped"}); });
        }
        s.seqs.clear();
        stop_stages(self);
        self->quit();
      },
      [=](stats_atom) {
        auto& s = self->state;
        EngineStats out = s.counters;
        const SchedulerStats ss = s.sched->stats();
        out.running = ss.running;
        out.waiting = ss.waiting;
        out.paused = ss.paused;
        out.blocks_used = ss.blocks_used;
        out.blocks_total = ss.blocks_total;
        out.preemptions = ss.preemptions;
        return out;
      },
  };
}

}  // namespace

caf::actor spawn_scheduler(caf::actor_system& system, ReplicaInit init) {
  return system.spawn(scheduler_actor, std::move(init));
}

}  // namespace troupe
