// actors_bench: what the troupe costs and what batching buys, on the real model (a benchmark, not a test).
//   direct   Forward alone: prompt tokens/s (one 128-token prefill) and decode tokens/s (128 tokens)
//   actors   the same through the engine at a given plan, one request
//   batch    aggregate output tokens/s with 1, 4, 16 and 64 concurrent requests
// plus messages per generated token and the share of step time spent computing in shards.
// Usage: troupe-actors-bench [--model M] [--tp N] [--pp N] [--replicas N] [--repeat K] [--concurrency 1,4,16,64]
#include <CLI/CLI.hpp>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <mutex>
#include <numeric>

#include "engine.hpp"

using namespace troupe;
using Clock = std::chrono::steady_clock;

namespace {

double seconds_since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v.empty() ? 0 : v[v.size() / 2];
}

class Waiter : public Sink {
 public:
  void on_token(const TokenEvent&) override {
    std::lock_guard lock(mu_);
    if (n_++ == 0) first_ = Clock::now();
  }
  void on_finished(const FinishEvent&) override { end(); }
  void on_error(const Error& e) override {
    spdlog::error("request failed: {}", e.message);
    end();
  }
  void wait() {
    std::unique_lock lock(mu_);
    cv_.wait(lock, [&] { return done_; });
  }
  Clock::time_point first() const { return first_; }
  int n() const { return n_; }

 private:
  void end() {
    std::lock_guard lock(mu_);
    done_ = true;
    cv_.notify_all();
  }
  std::mutex mu_;
  std::condition_variable cv_;
  bool done_ = false;
  int n_ = 0;
  Clock::time_point first_;
};

std::vector<TokenId> prompt_of(int n, int salt) {
  std::vector<TokenId> p;
  for (int i = 0; i < n; ++i) p.push_back(static_cast<TokenId>(500 + (i * 37 + salt * 101) % 20000));
  return p;
}

Request request(std::vector<TokenId> prompt, int n_gen) {
  Request r;
  r.prompt = std::move(prompt);
  r.params.max_tokens = n_gen;
  r.params.ignore_eos = true;
  r.params.sampling.temperature = 0;
  return r;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"Troupe actor-path benchmark"};
  std::string model_path = "models/SmolLM2-135M-Instruct.Q4_1.gguf";
  Plan plan;
  int repeat = 3, n_prompt = 128, n_gen = 128;
  std::vector<int> concurrency{1, 4, 16, 64};
  app.add_option("-m,--model", model_path);
  app.add_option("--tp", plan.tp);
  app.add_option("--pp", plan.pp);
  app.add_option("--replicas", plan.replicas);
  app.add_option("--threads", plan.threads);
  app.add_option("--repeat", repeat);
  app.add_option("--prompt-tokens", n_prompt);
  app.add_option("--gen-tokens", n_gen);
  app.add_option("--concurrency", concurrency)->delimiter(',');
  CLI11_PARSE(app, argc, argv);

  auto file = GgufFile::open(model_path);
  if (!file) return std::fprintf(stderr, "error: %s\n", file.error().message.c_str()), 1;
  auto model = Model::load(*file);
  if (!model) return std::fprintf(stderr, "error: %s\n", model.error().message.c_str()), 1;
  auto tok = Tokenizer::from_gguf(**file);
  if (!tok) return std::fprintf(stderr, "error: %s\n", tok.error().message.c_str()), 1;

  plan.max_running = std::max(64, *std::max_element(concurrency.begin(), concurrency.end()));
  plan.max_batched_tokens = std::max(plan.max_running, 256);
  plan.max_context = n_prompt + n_gen + 8;

  // direct path: one prefill of n_prompt tokens, then n_gen decode steps
  std::vector<double> d_pp, d_tg;
  for (int k = 0; k < repeat; ++k) {
    Forward fw(*model, n_prompt);
    KvCache cache = fw.make_cache(n_prompt + n_gen + 1);
    auto p = prompt_of(n_prompt, k);
    auto t0 = Clock::now();
    (void)fw.run(p.data(), n_prompt, 0, cache);
    d_pp.push_back(n_prompt / seconds_since(t0));
    TokenId t = 504;
    t0 = Clock::now();
    for (int i = 0; i < n_gen; ++i) (void)fw.run(&t, 1, n_prompt + i, cache);
    d_tg.push_back(n_gen / seconds_since(t0));
  }

  auto engine = Engine::start(*model, *tok, plan);
  if (!engine) return std::fprintf(stderr, "error: %s\n", engine.error().message.c_str()), 1;
  Engine& e = **engine;

  // actor path, one request: prefill rate from submit to the first token, decode rate after it
  std::vector<double> a_pp, a_tg, msgs_per_token, compute_share;
  for (int k = 0; k < repeat; ++k) {
    const EngineStats before = e.stats();
    auto w = std::make_shared<Waiter>();
    auto t0 = Clock::now();
    if (!e.submit(request(prompt_of(n_prompt, k), n_gen), w)) return 1;
    w->wait();
    const double total = seconds_since(t0);
    const double ttft = std::chrono::duration<double>(w->first() - t0).count();
    a_pp.push_back(n_prompt / ttft);
    a_tg.push_back((n_gen - 1) / (total - ttft));
    const EngineStats after = e.stats();
    msgs_per_token.push_back(double(after.messages - before.messages) / n_gen);
    compute_share.push_back((after.compute_seconds - before.compute_seconds) / total);
  }

  std::printf("plan: %s\n", e.plan().describe().c_str());
  std::printf("| path | prompt tok/s (pp%d) | decode tok/s (tg%d) |\n|---|---|---|\n", n_prompt, n_gen);
  std::printf("| direct Forward | %.1f | %.1f |\n", median(d_pp), median(d_tg));
  std::printf("| actors | %.1f | %.1f |\n", median(a_pp), median(a_tg));
  std::printf("actor overhead on decode: %.1f%%; messages per generated token: %.0f; shard compute / wall: %.0f%%\n",
              100.0 * (1 - median(a_tg) / median(d_tg)), median(msgs_per_token), 100 * median(compute_share));

  // continuous batching: aggregate output tokens/s with c concurrent requests
  std::printf("\n| concurrent requests | output tok/s (aggregate) | per request |\n|---|---|---|\n");
  for (int c : concurrency) {
    std::vector<double> rates;
    for (int k = 0; k < repeat; ++k) {
      std::vector<std::shared_ptr<Waiter>> ws;
      auto t0 = Clock::now();
      for (int i = 0; i < c; ++i) {
        ws.push_back(std::make_shared<Waiter>());
        if (!e.submit(request(prompt_of(16, i + k * c), n_gen), ws.back())) return 1;
      }
      int produced = 0;
      for (auto& w : ws) {
        w->wait();
        produced += w->n();
      }
      rates.push_back(produced / seconds_since(t0));
    }
    std::printf("| %d | %.1f | %.1f |\n", c, median(rates), median(rates) / c);
  }
  return 0;
}
