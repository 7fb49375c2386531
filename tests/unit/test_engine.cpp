// The troupe on the real model: every plan of head groups x stages x replicas gives the single-process path's greedy
// tokens, concurrent requests do not disturb each other, and cancellation, overload, backpressure and a dying shard
// behave as the engine promises.
#include <doctest/doctest.h>

#include <nlohmann/json.hpp>

#include <chrono>
#include <cmath>
#include <cstdlib>
#include <condition_variable>
#include <mutex>
#include <thread>

#include "engine.hpp"
#include "test_util.hpp"

using namespace troupe;
using namespace std::chrono_literals;

namespace {

struct Loaded {
  std::shared_ptr<const Model> model;
  std::unique_ptr<Tokenizer> tokenizer;
};

const Loaded& loaded() {
  static Loaded l = [] {
    auto file = GgufFile::open(test::model_path());
    REQUIRE_MESSAGE(file.has_value(), "default model missing: run scripts/fetch-model.sh");
    auto model = Model::load(*file);
    REQUIRE(model.has_value());
    auto tok = Tokenizer::from_gguf(**file);
    REQUIRE(tok.has_value());
    return Loaded{*model, std::make_unique<Tokenizer>(std::move(*tok))};
  }();
  return l;
}

// Collects a request's events; wait() blocks until it ends.
class Collector : public Sink {
 public:
  void on_token(const TokenEvent& e) override {
    std::lock_guard lock(mu_);
    tokens.push_back(e.token);
    events.push_back(e);
    text += e.text;
    cv_.notify_all();
  }
  void on_finished(const FinishEvent& e) override {
    std::lock_guard lock(mu_);
    finish = e;
    text += e.text;
    done = true;
    cv_.notify_all();
  }
  void on_error(const Error& e) override {
    std::lock_guard lock(mu_);
    error = e;
    done = true;
    cv_.notify_all();
  }
  bool wait(std::chrono::seconds timeout = 120s) {
    std::unique_lock lock(mu_);
    return cv_.wait_for(lock, timeout, [&] { return done; });
  }
  bool wait_tokens(size_t n, std::chrono::seconds timeout = 60s) {
    std::unique_lock lock(mu_);
    return cv_.wait_for(lock, timeout, [&] { return tokens.size() >= n || done; });
  }
  size_t n_tokens() {
    std::lock_guard lock(mu_);
    return tokens.size();
  }

  std::vector<TokenId> tokens;
  std::vector<TokenEvent> events;
  std::string text;
  std::optional<FinishEvent> finish;
  std::optional<Error> error;
  bool done = false;

 private:
  std::mutex mu_;
  std::condition_variable cv_;
};

Request greedy_request(std::vector<TokenId> prompt, int max_tokens) {
  Request r;
  r.prompt = std::move(prompt);
  r.params.max_tokens = max_tokens;
  r.params.ignore_eos = true;
  r.params.sampling.temperature = 0;
  return r;
}

// The single-process reference: Forward and a greedy argmax loop.
std::vector<TokenId> reference_greedy(const std::vector<TokenId>& prompt, int n) {
  const auto& m = loaded().model;
  Forward fw(m, 64);
  KvCache cache = fw.make_cache(static_cast<int>(prompt.size()) + n + 1);
  std::vector<TokenId> out;
  const float* logits = nullptr;
  for (size_t pos = 0; pos < prompt.size(); pos += 64) {
    const int k = std::min<int>(64, static_cast<int>(prompt.size() - pos));
    logits = *fw.run(prompt.data() + pos, k, static_cast<int>(pos), cache);
  }
  for (int i = 0; i < n; ++i) {
    const TokenId next = static_cast<TokenId>(std::max_element(logits, logits + m->config().n_vocab) - logits);
    out.push_back(next);
    if (i + 1 < n) logits = *fw.run(&next, 1, static_cast<int>(prompt.size()) + i, cache);
  }
  return out;
}

struct Case {
  std::string name;
  std::vector<TokenId> prompt;
};

std::vector<Case> fidelity_prompts() {
  const auto j = nlohmann::json::parse(test::read_text(test::source_path("tests/golden/greedy.json")));
  std::vector<Case> out;
  for (const auto& c : j["cases"]) out.push_back({c["name"], c["tokens"].get<std::vector<TokenId>>()});
  return out;
}

std::unique_ptr<Engine> start(Plan plan) {
  auto e = Engine::start(loaded().model, *loaded().tokenizer, plan);
  REQUIRE_MESSAGE(e.has_value(), (e ? "" : e.error().message));
  return std::move(*e);
}

// Waits until the engine has nothing running (stats lag the last event by a message).
EngineStats idle_stats(Engine& e) {
  EngineStats s;
  for (int i = 0; i < 200; ++i) {
    s = e.stats();
    if (s.running == 0 && s.waiting == 0 && s.blocks_used == 0) break;
    std::this_thread::sleep_for(10ms);
  }
  return s;
}

}  // namespace

TEST_CASE("engine: every plan (tp 1-3 x pp 1-3 x replicas 1-2, teams of 1 and 2) gives the reference path's greedy tokens") {
  const int n_gen = 16;
  const auto prompts = fidelity_prompts();
  std::vector<std::vector<TokenId>> expected;
  for (const auto& c : prompts) expected.push_back(reference_greedy(c.prompt, n_gen));
  for (int tp = 1; tp <= 3; ++tp) {
    for (int pp = 1; pp <= 3; ++pp) {
      for (int r = 1; r <= 2; ++r) {
        Plan plan;
        plan.tp = tp, plan.pp = pp, plan.replicas = r;
        plan.team = tp == pp ? 2 : 1;  // thread teams in the diagonal plans
        plan.max_running = 32, plan.max_batched_tokens = 512, plan.max_context = 512;
        auto engine = start(plan);
        // Prefill dominates the run time on a CPU: the two long prompts (~300 tokens) run in the plain head-group
        // plans only; every other prompt runs in every plan.
        const bool all = pp == 1 && r == 1;
        std::vector<size_t> picked;
        std::vector<std::shared_ptr<Collector>> sinks;
        for (size_t k = 0; k < prompts.size(); ++k) {
          if (!all && prompts[k].prompt.size() > 100) continue;
          picked.push_back(k);
          sinks.push_back(std::make_shared<Collector>());
          REQUIRE(engine->submit(greedy_request(prompts[k].prompt, n_gen), sinks.back()).has_value());
        }
        int equal = 0;
        for (size_t i = 0; i < picked.size(); ++i) {
          REQUIRE(sinks[i]->wait());
          CAPTURE(prompts[picked[i]].name);
          REQUIRE_FALSE(sinks[i]->error.has_value());
          equal += sinks[i]->tokens == expected[picked[i]];
        }
        INFO("tp=" << tp << " pp=" << pp << " replicas=" << r << " team=" << plan.team);
        CHECK(equal == static_cast<int>(picked.size()));
        CHECK(idle_stats(*engine).blocks_used == 0);
      }
    }
  }
}

TEST_CASE("engine: 32 concurrent requests of mixed lengths each give what they give alone") {
  const auto prompts = fidelity_prompts();
  Plan plan;
  plan.tp = 2, plan.max_running = 16, plan.max_batched_tokens = 64, plan.max_context = 1024;  // queueing, chunks
  auto engine = start(plan);
  std::vector<std::shared_ptr<Collector>> sinks;
  std::vector<std::vector<TokenId>> expected;
  for (int k = 0; k < 32; ++k) {
    const std::vector<TokenId>& base = prompts[k % prompts.size()].prompt;
    std::vector<TokenId> prompt;
    for (int rep = 0; rep <= k % 4; ++rep) prompt.insert(prompt.end(), base.begin(), base.end());  // 1 to 4 copies
    prompt.resize(std::min<size_t>(prompt.size(), 160));  // lengths from 1 to 160
    const int n = 4 + (k * 7) % 29;
    expected.push_back(reference_greedy(prompt, n));
    sinks.push_back(std::make_shared<Collector>());
    REQUIRE(engine->submit(greedy_request(prompt, n), sinks.back()).has_value());
  }
  for (int k = 0; k < 32; ++k) {
    REQUIRE(sinks[k]->wait());
    CAPTURE(k);
    CHECK(sinks[k]->tokens == expected[k]);
    REQUIRE(sinks[k]->finish.has_value());
    CHECK(sinks[k]->finish->reason == FinishReason::length);
  }
  const EngineStats s = idle_stats(*engine);
  CHECK(s.blocks_used == 0);
  CHECK(s.tokens_generated > 0);
}

TEST_CASE("engine: cancelling mid-generation gives every KV block back") {
  Plan plan;
  plan.max_context = 1024;
  auto engine = start(plan);
  std::vector<std::shared_ptr<Collector>> sinks;
  std::vector<RequestId> ids;
  for (int k = 0; k < 4; ++k) {
    sinks.push_back(std::make_shared<Collector>());
    auto id = engine->submit(greedy_request({504, 3575, 282, 4649, static_cast<TokenId>(314 + k)}, 500), sinks.back());
    REQUIRE(id.has_value());
    ids.push_back(*id);
  }
  REQUIRE(sinks[0]->wait_tokens(3));
  CHECK(engine->stats().blocks_used > 0);
  for (auto id : ids) engine->cancel(id);
  for (auto& s : sinks) {
    REQUIRE(s->wait(10s));
    REQUIRE(s->finish.has_value());
    CHECK(s->finish->reason == FinishReason::cancelled);
    CHECK(s->tokens.size() < 500);
  }
  CHECK(idle_stats(*engine).blocks_used == 0);
}

TEST_CASE("engine: past max_waiting a request is refused at once as overloaded while admitted ones finish") {
  Plan plan;
  plan.max_running = 1, plan.max_batched_tokens = 16, plan.max_waiting = 3, plan.max_context = 256;
  auto engine = start(plan);
  std::vector<std::shared_ptr<Collector>> sinks;
  // The first is admitted at once; three more wait; the fifth finds the queue full.
  int refused = 0;
  Error refusal;
  for (int k = 0; k < 5; ++k) {
    sinks.push_back(std::make_shared<Collector>());
    auto id = engine->submit(greedy_request({504, 3575, static_cast<TokenId>(282 + k)}, 24), sinks.back());
    if (!id) {
      ++refused;
      refusal = id.error();
    }
  }
  CHECK(refused == 1);
  CHECK(refusal.kind == ErrorKind::overloaded);
  CHECK(refusal.retry_after >= 1.0);
  for (int k = 0; k < 4; ++k) {
    REQUIRE(sinks[k]->wait());
    CHECK_FALSE(sinks[k]->error.has_value());
    CHECK(sinks[k]->tokens.size() == 24);
  }
  CHECK(idle_stats(*engine).blocks_used == 0);
}

TEST_CASE("engine: a consumer that does not take its tokens pauses its sequence until it acks") {
  Plan plan;
  plan.max_context = 256;
  auto engine = start(plan);
  auto sink = std::make_shared<Collector>();
  Request r = greedy_request({504, 3575, 282, 4649}, 20);
  r.credit = 4;
  auto id = engine->submit(r, sink);
  REQUIRE(id.has_value());
  REQUIRE(sink->wait_tokens(4));
  std::this_thread::sleep_for(300ms);  // time for many steps, were it running
  CHECK(sink->n_tokens() == 4);
  CHECK(engine->stats().paused == 1);
  engine->ack(*id, 100);
  REQUIRE(sink->wait());
  CHECK(sink->tokens.size() == 20);
  CHECK(sink->tokens == reference_greedy({504, 3575, 282, 4649}, 20));
}

TEST_CASE("engine: a shard that dies fails only its replica's running requests and the next request succeeds") {
  Plan plan;
  plan.tp = 2, plan.pp = 2, plan.replicas = 2, plan.max_context = 1024;
  auto engine = start(plan);
  // One long request per replica (the engine spreads them), then a fault in replica 0's stage 1, group 1.
  auto a = std::make_shared<Collector>(), b = std::make_shared<Collector>();
  auto ia = engine->submit(greedy_request({504, 3575, 282}, 400), a);
  auto ib = engine->submit(greedy_request({504, 3575, 283}, 60), b);
  REQUIRE(ia.has_value());
  REQUIRE(ib.has_value());
  REQUIRE(a->wait_tokens(2));
  engine->inject_fault(static_cast<int>(*ia % 64), 1, 1);
  REQUIRE(a->wait());
  REQUIRE(a->error.has_value());
  CHECK(a->error->kind == ErrorKind::unavailable);
  REQUIRE(b->wait());
  CHECK_FALSE(b->error.has_value());
  CHECK(b->tokens == reference_greedy({504, 3575, 283}, 60));
  // The respawned shard serves the next request on the same replica correctly.
  const auto expected = reference_greedy({504, 3575, 282}, 12);
  for (int k = 0; k < 2; ++k) {
    auto c = std::make_shared<Collector>();
    REQUIRE(engine->submit(greedy_request({504, 3575, 282}, 12), c).has_value());
    REQUIRE(c->wait());
    CHECK_FALSE(c->error.has_value());
    CHECK(c->tokens == expected);
  }
  const EngineStats s = idle_stats(*engine);
  CHECK(s.shard_restarts == 1);
  CHECK(s.blocks_used == 0);
  // what the dead shard never took left with it: no mailbox shows it
  REQUIRE(s.shards.size() == 8);
  for (const auto& sh : s.shards) CHECK(sh.mailbox_depth == 0);
}

TEST_CASE("engine: every shard reports its mailbox depth and the compute time of each step it ran") {
  Plan plan;
  plan.tp = 2, plan.pp = 2, plan.replicas = 2, plan.max_context = 256;
  auto engine = start(plan);
  EngineStats s = engine->stats();
  REQUIRE(s.shards.size() == 8);
  for (size_t i = 0; i < s.shards.size(); ++i) {  // by replica, stage, group
    CAPTURE(i);
    CHECK(s.shards[i].replica == static_cast<int>(i / 4));
    CHECK(s.shards[i].stage == static_cast<int>(i / 2 % 2));
    CHECK(s.shards[i].group == static_cast<int>(i % 2));
    CHECK(s.shards[i].steps == 0);
    CHECK(s.shards[i].step_buckets.size() == kShardStepBounds.size() + 1);
  }
  // one request: on one replica, 6 steps (the prompt, then a token each) through every one of its shards
  auto sink = std::make_shared<Collector>();
  auto id = engine->submit(greedy_request({504, 3575, 282}, 6), sink);
  REQUIRE(id.has_value());
  REQUIRE(sink->wait());
  s = idle_stats(*engine);
  CHECK(s.steps == 6);
  const int busy = static_cast<int>(*id % 64);
  for (const auto& sh : s.shards) {
    INFO("shard ", sh.replica, ":", sh.stage, ":", sh.group);
    CHECK(sh.mailbox_depth == 0);
    CHECK(sh.steps == (sh.replica == busy ? 6u : 0u));
    uint64_t in_buckets = 0;
    for (uint64_t n : sh.step_buckets) in_buckets += n;
    CHECK(in_buckets == sh.steps);
    CHECK((sh.step_seconds > 0) == (sh.steps > 0));
  }
}

TEST_CASE("engine: log-probabilities are the model's log-softmax, with the most likely alternatives in order") {
  Plan plan;
  plan.max_context = 256;
  auto engine = start(plan);
  auto sink = std::make_shared<Collector>();
  const std::vector<TokenId> prompt{504, 3575, 282, 4649, 314};
  Request r = greedy_request(prompt, 1);
  r.logprobs = 5;
  REQUIRE(engine->submit(r, sink).has_value());
  REQUIRE(sink->wait());
  REQUIRE(sink->events.size() == 1);
  const TokenEvent& ev = sink->events[0];
  Forward fw(loaded().model, 64);
  KvCache cache = fw.make_cache(16);
  const float* logits = *fw.run(prompt.data(), static_cast<int>(prompt.size()), 0, cache);
  const int n_vocab = loaded().model->config().n_vocab;
  double z = 0;
  const float max = *std::max_element(logits, logits + n_vocab);
  for (int i = 0; i < n_vocab; ++i) z += std::exp(double(logits[i]) - max);
  const auto ref = [&](TokenId t) { return double(logits[t]) - max - std::log(z); };
  CHECK(ev.logprob == doctest::Approx(ref(ev.token)).epsilon(1e-4));
  REQUIRE(ev.top.size() == 5);
  CHECK(ev.top[0].first == ev.token);  // greedy: the chosen token is the most likely
  for (size_t k = 0; k < ev.top.size(); ++k) {
    CHECK(ev.top[k].second == doctest::Approx(ref(ev.top[k].first)).epsilon(1e-4));
    if (k > 0) CHECK(ev.top[k].second <= ev.top[k - 1].second);
  }
}

TEST_CASE("engine: the TROUPE_FAULT switch kills a shard mid-run: its request fails and the next succeeds") {
  setenv("TROUPE_FAULT", "0:0:0:3", 1);  // replica 0, stage 0, group 0, at the third step
  Plan plan;
  plan.tp = 3, plan.max_context = 256;
  auto engine = start(plan);
  unsetenv("TROUPE_FAULT");
  auto a = std::make_shared<Collector>();
  REQUIRE(engine->submit(greedy_request({504, 3575, 282}, 30), a).has_value());
  REQUIRE(a->wait());
  REQUIRE(a->error.has_value());
  CHECK(a->error->kind == ErrorKind::unavailable);
  CHECK(a->error->message.find("injected fault") != std::string::npos);
  auto b = std::make_shared<Collector>();
  REQUIRE(engine->submit(greedy_request({504, 3575, 282}, 10), b).has_value());
  REQUIRE(b->wait());
  CHECK_FALSE(b->error.has_value());
  CHECK(b->tokens == reference_greedy({504, 3575, 282}, 10));
  CHECK(idle_stats(*engine).shard_restarts == 1);
}
