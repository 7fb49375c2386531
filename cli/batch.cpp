// batch.cpp: `troupe batch`: a JSONL file of prompts through the Engine at full batch width, one JSONL result per
// line appended as each finishes. In the order it runs:
//   read_answered(out)   ids already answered in the output file (resume); error lines and a torn last line dropped
//   parse_line(...)      one input line into a Job, or the error to report for it
//   Collector, LineSink  the sinks (engine threads) hand finished requests to the main thread: mutex + condvar
//   Progress             a progress bar on a terminal's stderr, and the summary line always
//   run_batch            keep N requests in flight, write each result as it arrives
//
// Ids: a line's "id" (a string or an integer); without one, the line number (1-based). Two ids are the same when
// their JSON text is ("7" and 7 differ). A line whose id appeared before in the input is an error.
// Resume: ids with a result in the output file are skipped; error lines are dropped from the file and retried, so
// after any number of runs the file holds each id once.
// Seeds: a line's "seed", else one derived from --seed and the id, so a rerun samples the same text.
#include <nlohmann/json.hpp>
#include <spdlog/spdlog.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <csignal>
#include <cstdio>
#include <deque>
#include <filesystem>
#include <fstream>
#include <map>
#include <mutex>
#include <optional>
#include <set>

#include "commands.hpp"
#include "engine.hpp"
#include "load.hpp"
#include "prompt.hpp"

namespace troupe::cli {

namespace {

using json = nlohmann::json;
using ojson = nlohmann::ordered_json;  // output lines keep "id" first
using Clock = std::chrono::steady_clock;

int fail(const Error& e) {
  std::fprintf(stderr, "error: %s\n", e.message.c_str());
  return 1;
}

// One line of output: never throws on invalid UTF-8 in generated or echoed text (replaced by U+FFFD).
std::string dump_line(const ojson& j) { return j.dump(-1, ' ', false, ojson::error_handler_t::replace) + "\n"; }

ojson error_line(const json& id, const Error& e) {
  return {{"id", ojson(id)}, {"error", {{"type", to_string(e.kind)}, {"message", e.message}}}};
}

// ---- resume: what the output file already answers ----

// Keys (id JSON text) of the results in `path`. Lines that are errors, torn (a crash mid-write) or repeats are
// dropped by rewriting the file (a temporary file renamed over it), so retried lines do not appear twice.
Expected<std::set<std::string>> read_answered(const std::string& path) {
  std::set<std::string> answered;
  std::error_code ec;
  if (!std::filesystem::exists(path, ec)) return answered;
  std::ifstream in(path, std::ios::binary);
  if (!in) return Error{ErrorKind::io, "cannot read " + path};
  std::string kept, line;
  int n_dropped = 0;
  bool torn = false;
  while (std::getline(in, line)) {
    torn = in.eof();  // the last line had no newline: a write was cut short, or the file was edited by hand
    const json j = json::parse(line, nullptr, /*allow_exceptions=*/false);
    const bool result = j.is_object() && j.contains("id") && j.contains("text") && !j.contains("error");
    if (result && answered.insert(j["id"].dump()).second) {
      kept += line + "\n";
    } else if (!line.empty()) {
      ++n_dropped;
    }
  }
  if (n_dropped == 0 && !torn) return answered;
  const std::string tmp = path + ".tmp";
  {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    out << kept;
    if (!out.flush()) return Error{ErrorKind::io, "cannot write " + tmp};
  }
  std::filesystem::rename(tmp, path, ec);
  if (ec) return Error{ErrorKind::io, "cannot replace " + path + ": " + ec.message()};
  if (n_dropped > 0) spdlog::info("{}: dropped {} error or unreadable lines, to retry them", path, n_dropped);
  return answered;
}

// ---- input lines ----

struct Job {
  json id;
  std::string key;                    // id.dump(): what resume compares
  std::optional<std::string> prompt;  // raw text, or
  std::vector<ChatMessage> messages;  // a chat, rendered with the model's template
  GenerateParams params;
  std::vector<TokenId> tokens;        // encoded when first submitted
};

// A line's seed when it gives none: the base seed mixed with the id (FNV-1a, then splitmix64's finaliser).
uint64_t derive_seed(uint64_t base, const std::string& key) {
  uint64_t h = 0xcbf29ce484222325ull;
  for (unsigned char c : key) h = (h ^ c) * 0x100000001b3ull;
  uint64_t z = base ^ h;
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

Error bad(const std::string& what) { return Error{ErrorKind::invalid_argument, what}; }

// The request fields of a line object (its id is already known).
Expected<Job> parse_job(const json& j, Job job, const GenerateParams& defaults) {
  job.params = defaults;
  const bool has_prompt = j.contains("prompt"), has_messages = j.contains("messages");
  if (has_prompt == has_messages) return bad("give exactly one of \"prompt\" and \"messages\"");
  if (has_prompt) {
    if (!j["prompt"].is_string()) return bad("\"prompt\" must be a string");
    job.prompt = j["prompt"].get<std::string>();
  } else {
    const json& ms = j["messages"];
    if (!ms.is_array() || ms.empty()) return bad("\"messages\" must be a non-empty array");
    for (const json& m : ms) {
      if (!m.is_object() || !m.contains("role") || !m["role"].is_string() || !m.contains("content") ||
          !m["content"].is_string()) {
        return bad("each message must be {\"role\": string, \"content\": string}");
      }
      job.messages.push_back({m["role"].get<std::string>(), m["content"].get<std::string>()});
    }
  }
  if (j.contains("max_tokens")) {
    const json& v = j["max_tokens"];
    if (!v.is_number_integer() || v.get<int64_t>() < 1 || v.get<int64_t>() > (1 << 20)) {
      return bad("\"max_tokens\" must be a whole number from 1 to 1048576");
    }
    job.params.max_tokens = v.get<int>();
  }
  if (j.contains("temperature")) {
    const json& v = j["temperature"];
    if (!v.is_number() || v.get<double>() < 0 || v.get<double>() > 100) {
      return bad("\"temperature\" must be a number from 0 to 100");
    }
    job.params.sampling.temperature = v.get<float>();
  }
  if (j.contains("seed")) {
    const json& v = j["seed"];
    if (!v.is_number_unsigned()) return bad("\"seed\" must be a whole number from 0");
    job.params.sampling.seed = v.get<uint64_t>();
  } else {
    job.params.sampling.seed = derive_seed(defaults.sampling.seed, job.key);
  }
  if (j.contains("stop")) {
    const json& v = j["stop"];
    job.params.stop.clear();
    if (v.is_string()) {
      job.params.stop.push_back(v.get<std::string>());
    } else if (v.is_array() && std::all_of(v.begin(), v.end(), [](const json& s) { return s.is_string(); })) {
      for (const json& s : v) job.params.stop.push_back(s.get<std::string>());
    } else {
      return bad("\"stop\" must be a string or an array of strings");
    }
    if (std::any_of(job.params.stop.begin(), job.params.stop.end(), [](const std::string& s) { return s.empty(); })) {
      return bad("\"stop\" strings must not be empty");
    }
  }
  return job;
}

// What reading the input made of one line: a job, an answer to skip, or an error to report under `id`.
struct Parsed {
  enum { job, skipped, error } what = error;
  json id;
  std::optional<Job> j;
  Error err;
};

Parsed parse_line(const std::string& text, int line_no, const std::set<std::string>& answered,
                  std::set<std::string>& seen, const GenerateParams& defaults) {
  Parsed p;
  p.id = line_no;
  json j;
  try {
    j = json::parse(text);
  } catch (const json::exception& e) {
    p.err = bad("line " + std::to_string(line_no) + ": not valid JSON: " + e.what());
    return p;
  }
  if (!j.is_object()) {
    p.err = bad("line " + std::to_string(line_no) + ": expected a JSON object");
    return p;
  }
  if (j.contains("id")) {
    if (!j["id"].is_string() && !j["id"].is_number_integer()) {
      p.err = bad("line " + std::to_string(line_no) + ": \"id\" must be a string or a whole number");
      return p;
    }
    p.id = j["id"];
  }
  Job job;
  job.id = p.id;
  job.key = p.id.dump();
  if (answered.count(job.key)) {
    p.what = Parsed::skipped;
    return p;
  }
  if (!seen.insert(job.key).second) {
    p.err = bad("line " + std::to_string(line_no) + ": id " + job.key + " appeared on an earlier line");
    return p;
  }
  auto parsed = parse_job(j, std::move(job), defaults);
  if (!parsed) {
    p.err = bad("line " + std::to_string(line_no) + ": " + parsed.error().message);
    return p;
  }
  p.what = Parsed::job;
  p.j = std::move(*parsed);
  return p;
}

// ---- results from engine threads to the main thread ----

struct Outcome {
  size_t job = 0;
  std::string text;
  FinishEvent finish;
  std::optional<Error> error;
};

class Collector {
 public:
  void push(Outcome outcome) {
    {
      std::lock_guard lock(mutex_);
      done_.push_back(std::move(outcome));
    }
    ready_.notify_one();
  }

  // The outcomes that arrived, waiting up to `timeout` for the first one.
  std::deque<Outcome> wait(std::chrono::milliseconds timeout) {
    std::unique_lock lock(mutex_);
    ready_.wait_for(lock, timeout, [this] { return !done_.empty(); });
    return std::exchange(done_, {});
  }

  std::atomic<uint64_t> n_tokens{0};  // tokens generated so far, for the progress bar

 private:
  std::mutex mutex_;
  std::condition_variable ready_;
  std::deque<Outcome> done_;
};

// Gathers one request's text. The engine calls it for one request in order, never at once from two threads.
class LineSink : public Sink {
 public:
  LineSink(size_t job, std::shared_ptr<Collector> collector) : job_(job), collector_(std::move(collector)) {}

  void on_token(const TokenEvent& event) override {
    text_ += event.text;
    collector_->n_tokens.fetch_add(1, std::memory_order_relaxed);
  }
  void on_finished(const FinishEvent& event) override {
    collector_->push({job_, std::move(text_) + event.text, event, std::nullopt});
  }
  void on_error(const Error& error) override { collector_->push({job_, {}, {}, error}); }

 private:
  size_t job_;
  std::shared_ptr<Collector> collector_;
  std::string text_;
};

// ---- progress on stderr ----

class Progress {
 public:
  explicit Progress(size_t total) : total_(total), tty_(isatty(STDERR_FILENO) == 1), t0_(Clock::now()) {}

  double seconds() const { return std::chrono::duration<double>(Clock::now() - t0_).count(); }

  void update(size_t n_done, size_t n_failed, uint64_t n_tokens) {
    if (!tty_ || total_ == 0) return;
    const size_t n = n_done + n_failed;
    constexpr int width = 30;
    const int filled = static_cast<int>(width * n / total_);
    const double s = seconds();
    std::fprintf(stderr, "\r\033[K[%s%s] %zu/%zu  %zu failed  %.1f tok/s", std::string(filled, '#').c_str(),
                 std::string(width - filled, ' ').c_str(), n, total_, n_failed, s > 0 ? n_tokens / s : 0.0);
    std::fflush(stderr);
    drawn_ = true;
  }

  void clear() {
    if (drawn_) std::fputs("\r\033[K", stderr);
    drawn_ = false;
  }

 private:
  size_t total_;
  bool tty_;
  bool drawn_ = false;
  Clock::time_point t0_;
};

std::atomic<bool> g_interrupted{false};
static_assert(std::atomic<bool>::is_always_lock_free);

extern "C" void on_sigint(int) {
  g_interrupted.store(true);
  std::signal(SIGINT, SIG_DFL);  // a second Ctrl-C ends the process at once
}

}  // namespace

int run_batch(BatchOptions o) {
  if (o.verbose) spdlog::set_level(spdlog::level::debug);
  auto loaded = load_model(o.model_path);
  if (!loaded) return fail(loaded.error());
  const GgufFile& file = *loaded->file;
  const Tokenizer& tokenizer = loaded->tokenizer;
  const ModelConfig& c = loaded->model->config();
  auto bias = parse_logit_bias(o.logit_bias, c.n_vocab);
  if (!bias) return fail(bias.error());
  o.params.sampling.logit_bias = std::move(*bias);

  // Read everything before starting the engine: a bad file fails fast.
  auto answered = read_answered(o.out_path);
  if (!answered) return fail(answered.error());
  std::ifstream in(o.in_path, std::ios::binary);
  if (!in) return fail({ErrorKind::io, "cannot open " + o.in_path});
  std::vector<Job> jobs;
  std::vector<std::pair<json, Error>> bad_lines;
  std::set<std::string> seen;
  size_t n_lines = 0, n_skipped = 0;
  std::string line;
  for (int line_no = 1; std::getline(in, line); ++line_no) {
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
    ++n_lines;
    Parsed p = parse_line(line, line_no, *answered, seen, o.params);
    if (p.what == Parsed::skipped) ++n_skipped;
    else if (p.what == Parsed::job) jobs.push_back(std::move(*p.j));
    else bad_lines.emplace_back(std::move(p.id), std::move(p.err));
  }
  std::FILE* out = std::fopen(o.out_path.c_str(), "ab");
  if (!out) return fail({ErrorKind::io, "cannot open " + o.out_path + " for appending"});
  auto write = [out](const ojson& j) {
    const std::string s = dump_line(j);
    std::fwrite(s.data(), 1, s.size(), out);
    std::fflush(out);
  };
  spdlog::info("batch: {} lines in {}: {} to run, {} invalid, {} already answered in {}", n_lines, o.in_path,
               jobs.size(), bad_lines.size(), n_skipped, o.out_path);

  size_t n_done = 0, n_failed = 0;
  uint64_t n_generated = 0;
  for (const auto& [id, e] : bad_lines) {
    write(error_line(id, e));
    ++n_failed;
  }

  std::unique_ptr<Engine> engine;
  if (!jobs.empty()) {
    auto plan = resolve_plan(o.plan, c);
    if (!plan) return fail(plan.error());
    auto started = Engine::start(loaded->model, tokenizer, *plan);
    if (!started) return fail(started.error());
    engine = std::move(*started);
  }
  const size_t width =
      o.parallel > 0 ? o.parallel : engine ? static_cast<size_t>(engine->plan().max_running * engine->plan().replicas) : 1;

  std::optional<Expected<ChatTemplate>> chat_template;  // parsed on the first chat line
  auto encode = [&](Job& job) -> Expected<void> {
    if (!job.tokens.empty()) return {};
    if (job.prompt) {
      job.tokens = encode_text(tokenizer, *job.prompt);
    } else {
      if (!chat_template) chat_template = load_chat_template(file);
      if (!*chat_template) return chat_template->error();
      auto tokens = encode_chat(**chat_template, tokenizer, job.messages);
      if (!tokens) return tokens.error();
      job.tokens = std::move(*tokens);
    }
    if (job.tokens.empty()) return bad("the prompt is empty");
    return {};
  };

  g_interrupted = false;
  auto previous_handler = std::signal(SIGINT, on_sigint);
  auto collector = std::make_shared<Collector>();
  Progress progress(jobs.size() + bad_lines.size());
  std::map<size_t, RequestId> in_flight;  // job index -> engine request
  size_t next = 0;
  bool cancelled = false;
  while (next < jobs.size() || !in_flight.empty()) {
    // Fill the engine up to `width` requests; an overloaded engine is retried once something finishes.
    std::optional<double> retry_in;
    while (!g_interrupted && next < jobs.size() && in_flight.size() < width) {
      Job& job = jobs[next];
      auto ok = encode(job);
      if (!ok) {
        write(error_line(job.id, ok.error()));
        ++n_failed, ++next;
        continue;
      }
      auto id = engine->submit(Request{job.tokens, job.params}, std::make_shared<LineSink>(next, collector));
      if (!id && id.error().kind == ErrorKind::overloaded) {
        retry_in = engine->retry_after();
        break;
      }
      if (!id) {
        write(error_line(job.id, id.error()));
        ++n_failed, ++next;
        continue;
      }
      in_flight.emplace(next++, *id);
      std::vector<TokenId>().swap(job.tokens);  // the engine has its copy
    }
    if (g_interrupted && !cancelled) {
      for (const auto& [job, id] : in_flight) engine->cancel(id);
      cancelled = true;
      next = jobs.size();
    }
    if (in_flight.empty() && !retry_in) continue;  // loop ends, or fills again

    // Wait for results; wake at least every 200 ms to redraw progress and notice Ctrl-C.
    const double wait_s = std::clamp(retry_in.value_or(0.2), 0.001, 0.2);
    for (Outcome& r : collector->wait(std::chrono::milliseconds(static_cast<int>(wait_s * 1000) + 1))) {
      in_flight.erase(r.job);
      const Job& job = jobs[r.job];
      if (r.error && r.error->kind == ErrorKind::cancelled) continue;  // interrupted: retried on resume
      if (!r.error && r.finish.reason == FinishReason::cancelled) continue;
      if (r.error) {
        write(error_line(job.id, *r.error));
        ++n_failed;
        continue;
      }
      write({{"id", ojson(job.id)},
             {"text", r.text},
             {"finish_reason", to_string(r.finish.reason)},
             {"prompt_tokens", r.finish.n_prompt},
             {"completion_tokens", r.finish.n_generated}});
      ++n_done;
      n_generated += r.finish.n_generated;
    }
    progress.update(n_done, n_failed, collector->n_tokens.load(std::memory_order_relaxed));
  }
  std::signal(SIGINT, previous_handler);
  progress.clear();
  std::fclose(out);

  const double s = progress.seconds();
  std::fprintf(stderr, "batch: %zu lines: %zu done, %zu skipped, %zu failed; %llu tokens generated in %.1f s (%.1f tok/s)\n",
               n_lines, n_done, n_skipped, n_failed, static_cast<unsigned long long>(n_generated), s,
               s > 0 ? n_generated / s : 0.0);
  if (g_interrupted) {
    const size_t n_left = n_lines - n_done - n_skipped - n_failed;
    std::fprintf(stderr, "interrupted: %zu lines left; run the same command again to finish them\n", n_left);
    return 130;
  }
  return 0;  // the engine stops as `engine` goes out of scope
}

}  // namespace troupe::cli
