// plan_options.hpp: the engine's Plan (how the model is cut and how much the scheduler batches) from four layers,
// each overriding the one before:
//   1. Plan's defaults (actors/engine.hpp)
//   2. a JSON config file: --config FILE, else $TROUPE_CONFIG, else config/troupe.json when it exists
//      (the "engine" object; keys documented in config/README.md)
//   3. environment variables: TROUPE_TP, TROUPE_PP, TROUPE_REPLICAS, TROUPE_PRECISION, TROUPE_BLOCK_SIZE,
//      TROUPE_KV_BLOCKS, TROUPE_MAX_RUNNING, TROUPE_MAX_BATCHED_TOKENS, TROUPE_MAX_WAITING, TROUPE_CTX_SIZE,
//      TROUPE_THREADS
//   4. command-line flags: --tp N|auto, --pp, --replicas, --precision fast|exact, --block-size, --kv-blocks,
//      --max-running, --max-batched-tokens, --max-waiting, --ctx-size, --threads
// The file's "placement" array and "remote" object put pipeline stages on worker processes (Plan::placement;
// TROUPE_SECRET overrides "remote.secret"); config/README.md.
// Shared by every subcommand that starts an Engine (batch now, serve later).
#pragma once

#include <map>
#include <string>

#include "engine.hpp"
#include "error.hpp"
#include "model.hpp"

#include <nlohmann/json.hpp>

namespace CLI {
class App;
}

namespace troupe::cli {

struct PlanOptions {
  std::string config_path;                   // --config; empty: $TROUPE_CONFIG, else config/troupe.json if present
  std::map<std::string, std::string> flags;  // config key -> value as given on the command line (only those given)
};

// The config file in effect: --config, else $TROUPE_CONFIG, else config/troupe.json when it exists; "" for none.
Expected<std::string> config_path(const PlanOptions& options);
// A config file parsed: a JSON object, or an error naming the file.
Expected<nlohmann::json> read_config(const std::string& path);

// "HOST:PORT" or "[IPV6]:PORT", port 0..65535.
Expected<std::pair<std::string, int>> parse_host_port(const std::string& text);

// Adds --config and the plan flags to a subcommand; parsed values land in `options`, which must outlive parsing.
void add_plan_options(CLI::App& app, PlanOptions& options);

// The plan in effect: defaults < config file < environment < flags, every value range-checked with an error that
// names where it came from. `tp` may be "auto": auto_plan's choice for this machine's cores per stage and replica.
// Whether the model can be cut this way is check_plan's question, asked once the model is loaded.
Expected<Plan> resolve_plan(const PlanOptions& options, const ModelConfig& config);

}  // namespace troupe::cli
