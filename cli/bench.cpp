// bench.cpp: `troupe bench`: the engine's speed measured as llama-bench measures llama.cpp's, so the two tables
// can be set side by side (scripts/compare.sh does). In the order it runs:
//   make_tests(options)   the tests: ppN (a prompt of N tokens processed in one go, timed to its logits) and tgN (N
//                         tokens generated one at a time after a one-token prompt, as llama-bench's tg does)
//   DirectRunner          Forward alone on the calling thread (--direct): the single-process path
//   EngineRunner          the actor troupe at a plan, one request at a time through Engine::submit
//   run_bench             per thread count: warm-up, then -r timed samples of each test
//   print_markdown        llama-bench's table: mean +- standard deviation of tokens/s per test
//   print_json            one JSON object: build, kernels, model, and per test the samples and their statistics
// Prompts are token ids from a fixed pseudo-random sequence, different in every sample, that skip the special
// tokens; speed does not depend on which tokens they are.
#include <nlohmann/json.hpp>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <cstdio>
#include <fstream>
#include <mutex>
#include <numeric>
#include <optional>
#include <thread>

#include "build_info.hpp"
#include "commands.hpp"
#include "engine.hpp"
#include "gguf.hpp"

namespace troupe::cli {

namespace {

using Clock = std::chrono::steady_clock;

int fail(const Error& e) {
  std::fprintf(stderr, "error: %s\n", e.message.c_str());
  return 1;
}

// ---- tests and their samples ----

struct Test {
  std::string name;  // "pp512", "tg128"
  int n_prompt = 0;  // prompt tokens timed in one go (pp); 0 for tg
  int n_gen = 0;     // tokens generated one at a time (tg); 0 for pp
};

struct Result {
  Test test;
  int threads = 0;
  std::string plan;               // "tp=2 pp=1 replicas=1", or "direct"
  std::vector<int64_t> samples_ns;

  int n_tokens() const { return test.n_prompt + test.n_gen; }
  std::vector<double> samples_ts() const {
    std::vector<double> ts;
    for (int64_t ns : samples_ns) ts.push_back(1e9 * n_tokens() / static_cast<double>(ns));
    return ts;
  }
};

double mean(const std::vector<double>& v) { return v.empty() ? 0 : std::accumulate(v.begin(), v.end(), 0.0) / v.size(); }

// Sample standard deviation (n - 1), as llama-bench reports it; 0 for a single sample.
double stddev(const std::vector<double>& v) {
  if (v.size() < 2) return 0;
  const double m = mean(v);
  double ss = 0;
  for (double x : v) ss += (x - m) * (x - m);
  return std::sqrt(ss / (v.size() - 1));
}

std::vector<Test> make_tests(const BenchOptions& o) {
  std::vector<Test> tests;
  for (int n : o.n_prompt) {
    if (n > 0) tests.push_back({"pp" + std::to_string(n), n, 0});
  }
  for (int n : o.n_gen) {
    if (n > 0) tests.push_back({"tg" + std::to_string(n), 0, n});
  }
  return tests;
}

// n prompt tokens for sample `salt`: a fixed pseudo-random walk over ordinary tokens (ids from 100; SmolLM2's
// special tokens are 0..16), so no two samples share a prefix.
std::vector<TokenId> prompt_tokens(int n, int salt, int n_vocab) {
  std::vector<TokenId> p(n);
  uint64_t x = 0x9e3779b97f4a7c15ull * (salt + 1);
  const int lo = std::min(100, n_vocab - 1);
  for (int i = 0; i < n; ++i) {
    x ^= x << 13, x ^= x >> 7, x ^= x << 17;  // xorshift64
    p[i] = static_cast<TokenId>(lo + x % static_cast<uint64_t>(n_vocab - lo));
  }
  return p;
}

int64_t ns_between(Clock::time_point a, Clock::time_point b) {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(b - a).count();
}

// ---- the single-process path: Forward on the calling thread ----

class DirectRunner {
 public:
  DirectRunner(std::shared_ptr<const Model> model, int max_tokens, Precision precision)
      : forward_(std::move(model), std::max(1, max_tokens), precision) {}

  // One sample of `t`, in nanoseconds: pp times one run() over the whole prompt; tg times n_gen one-token runs at
  // positions 0 .. n_gen - 1.
  Expected<int64_t> sample(const Test& t, int salt) {
    const int n_vocab = forward_.model().config().n_vocab;
    const auto tokens = prompt_tokens(std::max(t.n_prompt, t.n_gen), salt, n_vocab);
    KvCache cache = forward_.make_cache(t.n_prompt + t.n_gen + 1);
    const auto t0 = Clock::now();
    if (t.n_prompt > 0) {
      auto logits = forward_.run(tokens.data(), t.n_prompt, 0, cache);
      if (!logits) return logits.error();
    }
    for (int i = 0; i < t.n_gen; ++i) {
      auto logits = forward_.run(&tokens[i], 1, i, cache);
      if (!logits) return logits.error();
    }
    return ns_between(t0, Clock::now());
  }

 private:
  Forward forward_;
};

// ---- the actor troupe: one request at a time ----

// Records when a request's first token and its end arrive (on an engine thread), for the main thread to wait on.
class Timer : public Sink {
 public:
  void on_token(const TokenEvent&) override {
    std::lock_guard lock(mu_);
    if (!first_) first_ = Clock::now();
  }
  void on_finished(const FinishEvent& e) override { end(e.n_generated, std::nullopt); }
  void on_error(const Error& e) override { end(0, e); }

  // Waits for the end; the time of the first token and of the end, or the request's error.
  Expected<std::pair<Clock::time_point, Clock::time_point>> wait() {
    std::unique_lock lock(mu_);
    cv_.wait(lock, [&] { return done_; });
    if (error_) return *error_;
    if (!first_) return Error{ErrorKind::internal, "the request finished without a token"};
    return std::make_pair(*first_, end_);
  }
  int n_generated() const { return n_generated_; }

 private:
  void end(int n_generated, std::optional<Error> error) {
    {
      std::lock_guard lock(mu_);
      end_ = Clock::now();
      n_generated_ = n_generated;
      error_ = std::move(error);
      done_ = true;
    }
    cv_.notify_all();
  }

  std::mutex mu_;
  std::condition_variable cv_;
  bool done_ = false;
  std::optional<Clock::time_point> first_;
  Clock::time_point end_;
  int n_generated_ = 0;
  std::optional<Error> error_;
};

class EngineRunner {
 public:
  explicit EngineRunner(std::unique_ptr<Engine> engine, int n_vocab) : engine_(std::move(engine)), n_vocab_(n_vocab) {}

  // One sample of `t`, in nanoseconds from submit: pp to the prompt's first token (its logits, sampled);
  // tg to the end of n_gen tokens after a one-token prompt (n_gen forward passes of one token, as llama-bench's).
  Expected<int64_t> sample(const Test& t, int salt) {
    Request r;
    r.prompt = prompt_tokens(std::max(t.n_prompt, 1), salt, n_vocab_);
    r.params.max_tokens = t.n_prompt > 0 ? 1 : t.n_gen;
    r.params.ignore_eos = true;
    r.params.sampling.temperature = 0;
    auto timer = std::make_shared<Timer>();
    const auto t0 = Clock::now();
    auto id = engine_->submit(std::move(r), timer);
    if (!id) return id.error();
    auto times = timer->wait();
    if (!times) return times.error();
    if (t.n_prompt > 0) return ns_between(t0, times->first);
    if (timer->n_generated() != t.n_gen) {
      return Error{ErrorKind::internal, "generated " + std::to_string(timer->n_generated()) + " tokens, not " +
                                            std::to_string(t.n_gen)};
    }
    return ns_between(t0, times->second);
  }

 private:
  std::unique_ptr<Engine> engine_;
  int n_vocab_;
};

// ---- output ----

std::string short_plan(const Plan& p) {
  return "tp=" + std::to_string(p.tp) + " pp=" + std::to_string(p.pp) + " replicas=" + std::to_string(p.replicas) +
         (p.team > 1 ? " team=" + std::to_string(p.team) : "");
}

std::string model_name(const std::string& path) {
  std::string name = path.substr(path.find_last_of('/') + 1);
  if (name.size() > 5 && name.ends_with(".gguf")) name.resize(name.size() - 5);
  return name;
}

int64_t n_params(const GgufFile& file) {
  int64_t n = 0;
  for (const auto& t : file.tensors()) n += t.n_elements();
  return n;
}

std::string cpu_name() {
  std::ifstream in("/proc/cpuinfo");
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind("model name", 0) == 0) {
      const auto colon = line.find(':');
      if (colon != std::string::npos) return line.substr(line.find_first_not_of(' ', colon + 1));
    }
  }
  return "unknown";
}

std::string compiler() {
#if defined(__clang__)
  return std::string("clang ") + __clang_version__;
#elif defined(__GNUC__)
  return std::string("gcc ") + __VERSION__;
#else
  return "unknown";
#endif
}

struct Header {
  std::string model_path;
  int64_t model_size = 0;
  int64_t model_n_params = 0;
  std::string kernels;
  std::string mode;  // "engine" or "direct"
  std::string precision;
};

void print_markdown(const Header& h, const std::vector<Result>& results) {
  char size[32], params[32];
  std::snprintf(size, sizeof size, "%.2f MiB", h.model_size / 1048576.0);
  std::snprintf(params, sizeof params, "%.2f M", h.model_n_params / 1e6);
  std::printf("| model | size | params | kernels | path | threads | test | t/s |\n");
  std::printf("| --- | ---: | ---: | --- | --- | ---: | ---: | ---: |\n");
  for (const auto& r : results) {
    const auto ts = r.samples_ts();
    std::printf("| %s | %s | %s | %s | %s | %d | %s | %.2f ± %.2f |\n", model_name(h.model_path).c_str(), size, params,
                h.kernels.c_str(), r.plan.c_str(), r.threads, r.test.name.c_str(), mean(ts), stddev(ts));
  }
  std::printf("\nbuild: %s%s (%s, %s)\n", kBuildCommit, kBuildDirty ? "-dirty" : "", kBuildType, compiler().c_str());
}

void print_json(const Header& h, const BenchOptions& o, const std::vector<Result>& results) {
  using ojson = nlohmann::ordered_json;
  ojson doc = {{"build_commit", kBuildCommit},
               {"build_dirty", kBuildDirty},
               {"build_type", kBuildType},
               {"compiler", compiler()},
               {"cpu_info", cpu_name()},
               {"n_cores", std::thread::hardware_concurrency()},
               {"kernels", h.kernels},
               {"mode", h.mode},
               {"precision", h.precision},
               {"model_file", h.model_path},
               {"model_size", h.model_size},
               {"model_n_params", h.model_n_params},
               {"repetitions", o.repetitions},
               {"warmup", !o.no_warmup},
               {"tests", ojson::array()}};
  for (const auto& r : results) {
    std::vector<double> ns(r.samples_ns.begin(), r.samples_ns.end());
    const auto ts = r.samples_ts();
    doc["tests"].push_back({{"test", r.test.name},
                            {"n_prompt", r.test.n_prompt},
                            {"n_gen", r.test.n_gen},
                            {"threads", r.threads},
                            {"plan", r.plan},
                            {"samples_ns", r.samples_ns},
                            {"samples_ts", ts},
                            {"avg_ns", mean(ns)},
                            {"stddev_ns", stddev(ns)},
                            {"avg_ts", mean(ts)},
                            {"stddev_ts", stddev(ts)}});
  }
  std::printf("%s\n", doc.dump(2).c_str());
}

// Times every test at one thread count: a warm-up sample (unless --no-warmup), then `repetitions` timed samples.
template <class Runner>
Expected<void> run_tests(Runner& runner, const std::vector<Test>& tests, const BenchOptions& o, int threads,
                         const std::string& plan, std::vector<Result>& results) {
  int salt = 0;
  for (const auto& t : tests) {
    Result r{t, threads, plan, {}};
    if (!o.no_warmup) {
      if (auto w = runner.sample(t, salt++); !w) return w.error();
    }
    for (int k = 0; k < o.repetitions; ++k) {
      auto ns = runner.sample(t, salt++);
      if (!ns) return ns.error();
      r.samples_ns.push_back(std::max<int64_t>(*ns, 1));
    }
    spdlog::debug("{} threads={} {}: {:.2f} t/s", plan, threads, t.name, mean(r.samples_ts()));
    results.push_back(std::move(r));
  }
  return {};
}

}  // namespace

int run_bench(BenchOptions o) {
  if (o.verbose) spdlog::set_level(spdlog::level::debug);
  if (o.output != "md" && o.output != "json") {
    return fail({ErrorKind::invalid_argument, "--output '" + o.output + "': expected md or json"});
  }
  const auto tests = make_tests(o);
  if (tests.empty()) return fail({ErrorKind::invalid_argument, "no tests: give -p and/or -n with a value above 0"});
  if (!o.threads.empty() && o.plan.flags.count("threads")) {
    return fail({ErrorKind::invalid_argument, "give -t (a list to test) or --threads, not both"});
  }
  if (o.direct && std::any_of(o.threads.begin(), o.threads.end(), [](int t) { return t != 1; })) {
    return fail({ErrorKind::invalid_argument, "--direct runs Forward on the calling thread: -t must be 1"});
  }

  auto file = GgufFile::open(o.model_path);
  if (!file) return fail(file.error());
  auto model = Model::load(*file);
  if (!model) return fail(model.error());
  auto tokenizer = Tokenizer::from_gguf(**file);
  if (!tokenizer) return fail(tokenizer.error());
  const ModelConfig& c = (*model)->config();
  const int max_prompt = std::max(1, *std::max_element(o.n_prompt.begin(), o.n_prompt.end()));
  const int max_gen = std::max(1, *std::max_element(o.n_gen.begin(), o.n_gen.end()));
  if (max_prompt + max_gen + 1 > c.n_ctx_train) {
    return fail({ErrorKind::invalid_argument, "a test needs " + std::to_string(max_prompt + max_gen + 1) +
                                                  " positions; the model's context is " + std::to_string(c.n_ctx_train)});
  }

  Header h{o.model_path, static_cast<int64_t>((*file)->file_size()), n_params(**file), kernels().name,
           o.direct ? "direct" : "engine", ""};
  std::vector<Result> results;
  const std::vector<int> thread_counts = o.threads.empty() ? std::vector<int>{0} : o.threads;
  for (int threads : thread_counts) {
    PlanOptions plan_options = o.plan;
    if (threads > 0) plan_options.flags["threads"] = std::to_string(threads);
    auto plan = resolve_plan(plan_options, c);
    if (!plan) return fail(plan.error());
    h.precision = plan->precision == Precision::exact ? "exact" : "fast";
    if (o.direct) {
      DirectRunner runner(*model, max_prompt, plan->precision);
      if (auto ok = run_tests(runner, tests, o, 1, "direct", results); !ok) return fail(ok.error());
      continue;
    }
    // What runs is what is reported: threads 0 (one per core) made explicit; tp fitted to the threads when -t
    // chose them and --tp did not (as --tp auto on a machine of that many cores, each shard's team counted).
    if (plan->threads <= 0) plan->threads = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
    if (threads > 0 && !o.plan.flags.count("tp")) {
      plan->tp = auto_plan(c, std::max(1, threads / (plan->pp * plan->replicas * plan->team))).tp;
    }
    // The longest prompt in one scheduler step, as llama-bench's pp runs in one batch (unless a flag says otherwise).
    if (!o.plan.flags.count("max_batched_tokens")) {
      plan->max_batched_tokens = std::max(plan->max_batched_tokens, max_prompt);
    }
    // One request at a time: unless set, the context and the KV pool fit the longest test, as llama-bench sizes its
    // context to the test, so peak memory is comparable (the defaults would allocate a server's pool).
    if (plan->max_context == 0) plan->max_context = max_prompt + max_gen + 1;
    if (plan->kv_blocks == 0) plan->kv_blocks = (plan->max_context + plan->block_size - 1) / plan->block_size + 1;
    auto engine = Engine::start(*model, *tokenizer, *plan);
    if (!engine) return fail(engine.error());
    const std::string described = short_plan((*engine)->plan());
    EngineRunner runner(std::move(*engine), c.n_vocab);
    if (auto ok = run_tests(runner, tests, o, plan->threads, described, results); !ok) return fail(ok.error());
  }

  if (o.output == "json") print_json(h, o, results);
  else print_markdown(h, results);
  return 0;
}

}  // namespace troupe::cli
