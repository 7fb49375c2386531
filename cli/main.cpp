// main.cpp: the troupe command. It parses the command line and hands over to a subcommand; nothing else.
//   troupe inspect MODEL
//   troupe generate [--model M] (--prompt P | --chat P) [-n N] [sampling flags]
//   troupe batch [--model M] --in PROMPTS.jsonl --out RESULTS.jsonl [plan flags] [sampling flags]
//   troupe serve [--model M] [--host H] [--port P] [--api-key KEY] [server flags] [plan flags]
//   troupe bench [--model M] [-p 128,512] [-n 128] [-r 5] [-t 1,2] [--direct] [-o md|json] [plan flags]
//   troupe worker [--listen HOST:PORT] [--secret S] [--model M] [--threads N]
//   troupe synth [--shape NAME] [--type T] [--out FILE] [--seed N] [--layers N --embd N --heads N ...]
#include <CLI/CLI.hpp>
#include <spdlog/sinks/stdout_color_sinks.h>
#include <spdlog/spdlog.h>

#include <cstdlib>
#include <map>
#include <random>

#include "commands.hpp"

namespace {

std::string default_model() {
  if (const char* p = std::getenv("TROUPE_MODEL")) return p;
  return "models/SmolLM2-135M-Instruct.Q4_1.gguf";
}

// The generation flags `generate` and `batch` share. Defaults follow llama.cpp's CLI (a sampled, varied answer);
// --temp 0 is greedy.
void add_sampling_flags(CLI::App& cmd, troupe::GenerateParams& params, std::vector<std::string>& logit_bias,
                        int64_t& seed) {
  auto& s = params.sampling;
  s.temperature = 0.8f;
  s.top_k = 40;
  s.top_p = 0.95f;
  s.min_p = 0.05f;
  cmd.add_option("-n,--max-tokens", params.max_tokens, "tokens to generate at most")->capture_default_str()
      ->check(CLI::Range(1, 1 << 20));
  cmd.add_option("--temp", s.temperature, "temperature; 0 = greedy")->capture_default_str()->check(CLI::Range(0.0, 100.0));
  cmd.add_option("--top-k", s.top_k, "keep the k most likely tokens; 0 = off")->capture_default_str()->check(CLI::NonNegativeNumber);
  cmd.add_option("--top-p", s.top_p, "nucleus mass; 1 = off")->capture_default_str()->check(CLI::Range(0.0, 1.0));
  cmd.add_option("--min-p", s.min_p, "drop tokens below min_p * p(top); 0 = off")->capture_default_str()->check(CLI::Range(0.0, 1.0));
  cmd.add_option("--repeat-penalty", s.repetition_penalty, "repetition penalty; 1 = off")->capture_default_str()->check(CLI::Range(0.0, 10.0));
  cmd.add_option("--presence-penalty", s.presence_penalty, "presence penalty")->capture_default_str()->check(CLI::Range(-2.0, 2.0));
  cmd.add_option("--frequency-penalty", s.frequency_penalty, "frequency penalty")->capture_default_str()->check(CLI::Range(-2.0, 2.0));
  cmd.add_option("--repeat-last-n", s.penalty_last_n, "tokens the penalties look back over; -1 = all")->capture_default_str()->check(CLI::Range(-1, 1 << 20));
  cmd.add_option("--logit-bias", logit_bias, "TOKEN_ID=BIAS, repeatable");
  cmd.add_option("--seed", seed, "random seed; -1 = random")->capture_default_str();
  cmd.add_option("--stop", params.stop, "stop string, repeatable");
  cmd.add_flag("--ignore-eos", params.ignore_eos, "keep generating past end-of-generation tokens");
}

uint64_t seed_or_random(int64_t seed) { return seed >= 0 ? static_cast<uint64_t>(seed) : std::random_device{}(); }

}  // namespace

int main(int argc, char** argv) {
  using namespace troupe::cli;
  CLI::App app{"Troupe: an LLM inference server that runs a model as a troupe of actors"};
  app.require_subcommand(1);

  std::string inspect_path;
  auto* inspect = app.add_subcommand("inspect", "Print a GGUF file's metadata and tensor table");
  inspect->add_option("model", inspect_path, "GGUF file")->required();

  GenerateOptions g;
  g.model_path = default_model();
  int64_t seed = -1;
  auto* gen = app.add_subcommand("generate", "Run the model on a prompt and stream the text to stdout");
  gen->add_option("-m,--model", g.model_path, "GGUF model file (env TROUPE_MODEL)")->capture_default_str();
  auto* prompt = gen->add_option("-p,--prompt", g.prompt, "raw prompt text (special-token text is recognised)");
  auto* chat = gen->add_option("-c,--chat", g.chat, "a user message, rendered with the model's chat template");
  prompt->excludes(chat);
  gen->add_option("--system", g.system, "system message for --chat (default: the template's own)");
  add_sampling_flags(*gen, g.params, g.logit_bias, seed);
  gen->add_option("--ctx-size", g.ctx_size, "context size (KV cache positions)")->capture_default_str()->check(CLI::Range(16, 1 << 24));
  gen->add_option("--batch-size", g.batch_size, "prompt tokens per forward pass")->capture_default_str()->check(CLI::Range(1, 4096));
  gen->add_option("--precision", g.precision, "fast (8-bit activations, fp16 KV) or exact (fp32 throughout)")
      ->transform(CLI::CheckedTransformer(std::map<std::string, troupe::Precision>{
          {"fast", troupe::Precision::fast}, {"exact", troupe::Precision::exact}}))
      ->capture_default_str();
  gen->add_flag("-v,--verbose", g.verbose, "print model details and timings to stderr");

  BatchOptions b;
  b.model_path = default_model();
  int64_t batch_seed = 0;
  auto* batch = app.add_subcommand("batch", "Run every prompt of a JSONL file through the engine; resumable");
  batch->add_option("-m,--model", b.model_path, "GGUF model file (env TROUPE_MODEL)")->capture_default_str();
  batch->add_option("--in", b.in_path, "input JSONL: {\"id\", \"prompt\" or \"messages\", ...} per line")->required();
  batch->add_option("--out", b.out_path, "output JSONL, appended; ids already answered there are skipped")->required();
  batch->add_option("--parallel", b.parallel, "requests in flight; 0 = max-running x replicas")->capture_default_str()
      ->check(CLI::Range(0, 1 << 20));
  add_sampling_flags(*batch, b.params, b.logit_bias, batch_seed);
  add_plan_options(*batch, b.plan);
  batch->add_flag("-v,--verbose", b.verbose, "debug logging to stderr");

  ServeOptions serve_options;
  auto* serve = app.add_subcommand("serve", "Serve the model over an OpenAI-compatible HTTP API");
  add_serve_options(*serve, serve_options);

  BenchOptions bench_options;
  bench_options.model_path = default_model();
  auto* bench = app.add_subcommand("bench", "Measure prompt (pp) and generation (tg) tokens/s, as llama-bench does");
  bench->add_option("-m,--model", bench_options.model_path, "GGUF model file (env TROUPE_MODEL)")->capture_default_str();
  bench->add_option("-p,--n-prompt", bench_options.n_prompt, "prompt lengths: a ppN test each (comma-separated)")
      ->delimiter(',')->capture_default_str()->check(CLI::Range(0, 1 << 20));
  bench->add_option("-n,--n-gen", bench_options.n_gen, "generation lengths: a tgN test each (comma-separated)")
      ->delimiter(',')->capture_default_str()->check(CLI::Range(0, 1 << 20));
  bench->add_option("-r,--repetitions", bench_options.repetitions, "timed samples per test")->capture_default_str()
      ->check(CLI::Range(1, 1000));
  bench->add_option("-t", bench_options.threads,
                    "thread counts to test (comma-separated): --threads N each and, without --tp, tp fitted to N cores")
      ->delimiter(',')->check(CLI::Range(1, 4096));
  bench->add_flag("--direct", bench_options.direct, "time Forward alone on one thread, not the actor troupe");
  bench->add_flag("--no-warmup", bench_options.no_warmup, "skip the untimed warm-up sample of each test");
  bench->add_option("-o,--output", bench_options.output, "md (a table) or json")->capture_default_str();
  add_plan_options(*bench, bench_options.plan);
  bench->add_flag("-v,--verbose", bench_options.verbose, "debug logging to stderr");

  WorkerOptions worker_options;
  worker_options.model_path = default_model();
  auto* worker = app.add_subcommand("worker", "Host pipeline stages for a coordinator (serve, batch, bench with a "
                                              "placement; docs/distributed.md)");
  worker->add_option("--listen", worker_options.listen, "HOST:PORT to listen on (port 0: any free port)")
      ->capture_default_str();
  worker->add_option("--secret", worker_options.secret,
                     "shared secret a coordinator must prove it knows (env TROUPE_SECRET); required off loopback");
  worker->add_option("-m,--model", worker_options.model_path, "GGUF model file: the coordinator's, byte for byte "
                                                               "(env TROUPE_MODEL)")->capture_default_str();
  worker->add_option("--threads", worker_options.threads, "actor scheduler threads; 0: one per core")
      ->capture_default_str()->check(CLI::Range(0, 4096));

  SynthOptions synth_options;
  auto* synth = app.add_subcommand("synth", "Write a synthetic llama model with random weights (a named shape, any "
                                            "dimension overridden) for checks without a real model");
  add_synth_options(*synth, synth_options);

  // Logs go to stderr: stdout carries generated text.
  spdlog::set_default_logger(spdlog::stderr_color_mt("troupe"));

  CLI11_PARSE(app, argc, argv);
  if (*inspect) return run_inspect(inspect_path);
  if (*gen) {
    g.params.sampling.seed = seed_or_random(seed);
    return run_generate(std::move(g));
  }
  if (*batch) {
    b.params.sampling.seed = seed_or_random(batch_seed);
    return run_batch(std::move(b));
  }
  if (*serve) return run_serve(std::move(serve_options));
  if (*bench) return run_bench(std::move(bench_options));
  if (*worker) return run_worker(std::move(worker_options));
  if (*synth) return run_synth(synth_options);
  return 0;
}
