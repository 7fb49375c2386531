// commands.hpp: the troupe subcommands. main.cpp parses the command line into these option structs.
#pragma once

#include <string>
#include <vector>

#include "generate.hpp"

namespace troupe::cli {

// `troupe inspect MODEL`: metadata and tensor table.
int run_inspect(const std::string& model_path);

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

}  // namespace troupe::cli
