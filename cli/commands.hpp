// commands.hpp: the troupe subcommands. main.cpp parses the command line into these option structs.
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "generate.hpp"
#include "plan_options.hpp"

namespace troupe::cli {

// `troupe inspect MODEL`: metadata and tensor table.
int run_inspect(const std::string& model_path);

struct SynthOptions {
  std::string shape = "smollm2-135m";     // a named shape (synth_shape_names())
  std::string out;                        // default: SHAPE.TYPE.gguf
  std::string type = "q4_1";              // the layers' matrices: f32, f16, q4_0, q4_1 or q8_0
  std::string embd_type;                  // token_embd; empty: the shape's (q8_0)
  std::string output_type;                // output.weight when not tied; empty: the shape's (q8_0)
  std::optional<bool> tied;               // default: the shape's
  uint64_t seed = 0;
  // overrides of the shape's dimensions; -1: the shape's own
  int n_layer = -1, n_embd = -1, n_head = -1, n_head_kv = -1, n_ff = -1, n_vocab = -1, n_ctx = -1;
};

// Adds synth's flags; parsed values land in `options`.
void add_synth_options(CLI::App& app, SynthOptions& options);

// `troupe synth`: writes a synthetic model with random weights (src/synth.hpp).
int run_synth(const SynthOptions& options);

struct GenerateOptions {
  std::string model_path;
  std::string prompt;         // raw text, tokenized with special tokens recognised
  std::string chat;           // a user message, rendered with the model's chat template
  std::string system;         // optional system message for --chat
  int ctx_size = 4096;        // KV cache positions (capped at the model's training context)
  int batch_size = 64;        // prompt tokens per forward pass
  Precision precision = Precision::fast;  // exact: fp32 arithmetic throughout (slower; the fidelity reference)
  bool verbose = false;       // timings to stderr
  std::vector<std::string> logit_bias;  // "TOKEN_ID=BIAS"
  GenerateParams params;
};

// `troupe generate`: streams the continuation to stdout.
int run_generate(GenerateOptions options);

struct BatchOptions {
  std::string model_path;
  std::string in_path;   // JSONL: {"id", "prompt" | "messages", "max_tokens"?, "temperature"?, "seed"?, "stop"?}
  std::string out_path;  // JSONL results, appended; ids already answered there are skipped (resume)
  PlanOptions plan;
  int parallel = 0;      // requests in flight at most; 0: the plan's max_running * replicas
  bool verbose = false;  // debug logging to stderr
  std::vector<std::string> logit_bias;  // "TOKEN_ID=BIAS", for every line
  GenerateParams params;  // every line's defaults; sampling.seed is the base a line's own seed is derived from
};

// `troupe batch`: every line of the input through the Engine, results as each finishes. 0 when every line was
// answered (a line's error is an answer), 1 on a fatal error, 130 when interrupted.
int run_batch(BatchOptions options);

struct BenchOptions {
  std::string model_path;
  std::vector<int> n_prompt{128, 512};  // -p: a ppN test per value (a prompt of N tokens in one go); 0 = none
  std::vector<int> n_gen{128};          // -n: a tgN test per value (N tokens generated one at a time); 0 = none
  int repetitions = 5;                  // -r: timed samples per test (after one warm-up sample)
  std::vector<int> threads;             // -t: thread counts to test, one engine each; empty: the plan's
  bool direct = false;                  // Forward alone on the calling thread instead of the actor troupe
  bool no_warmup = false;
  std::string output = "md";            // md (llama-bench's table) or json
  bool verbose = false;
  PlanOptions plan;
};

// `troupe bench`: pp and tg tokens/s, mean and standard deviation over repetitions (cli/bench.cpp).
int run_bench(BenchOptions options);

struct WorkerOptions {
  std::string listen = "127.0.0.1:9101";  // HOST:PORT; port 0: any free port (logged)
  std::string secret;                     // else TROUPE_SECRET; required unless HOST is loopback
  std::string model_path;                 // its own copy: size and sha256 must match the coordinator's
  int threads = 0;                        // actor scheduler threads; 0: one per core
};

// `troupe worker`: hosts pipeline stages for coordinators (cli/worker.cpp, docs/distributed.md). 0 after
// SIGINT/SIGTERM, 1 when it cannot start.
int run_worker(WorkerOptions options);

struct ServeOptions {
  std::map<std::string, std::string> flags;  // server setting (config key) -> value, only those given as flags
  std::vector<std::string> cors_origins;     // --cors-origin, repeatable
  PlanOptions plan;
  bool verbose = false;
};

// Adds serve's flags (docs/http-contract.md) and the plan flags; parsed values land in `options`.
void add_serve_options(CLI::App& app, ServeOptions& options);

// `troupe serve`: the OpenAI-compatible HTTP server. 0 after SIGINT/SIGTERM, 1 when it cannot start.
int run_serve(ServeOptions options);

}  // namespace troupe::cli
