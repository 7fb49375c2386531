// plan_options.cpp: the Plan from defaults, config file, environment and flags (see plan_options.hpp).
#include "plan_options.hpp"

#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>
#include <spdlog/spdlog.h>

#include <charconv>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <thread>
#include <vector>

namespace troupe::cli {

namespace {

constexpr const char* kDefaultConfig = "config/troupe.json";

// One plan setting under its three names, with the Plan field it sets and the whole numbers it takes.
struct Setting {
  const char* key;   // config file key inside "engine": the Plan field's name
  const char* flag;  // command-line flag
  const char* env;   // environment variable
  const char* type;  // shown in --help
  const char* help;
  int Plan::*field;  // nullptr: precision, which is a word
  int min;
  int max;
};

const Setting kSettings[] = {
    {"tp", "--tp", "TROUPE_TP", "N|auto", "tensor-parallel head groups per stage; auto: fit the cores", &Plan::tp, 1, 256},
    {"pp", "--pp", "TROUPE_PP", "N", "pipeline stages (consecutive layer ranges)", &Plan::pp, 1, 256},
    {"replicas", "--replicas", "TROUPE_REPLICAS", "N", "independent copies of the model", &Plan::replicas, 1, 64},
    {"precision", "--precision", "TROUPE_PRECISION", "fast|exact",
     "fast (8-bit activations, fp16 KV) or exact (fp32 throughout)", nullptr, 0, 0},
    {"block_size", "--block-size", "TROUPE_BLOCK_SIZE", "N", "KV positions per cache block", &Plan::block_size, 1, 4096},
    {"kv_blocks", "--kv-blocks", "TROUPE_KV_BLOCKS", "N",
     "KV blocks per replica; 0: max(context, min(16384, max_running x context)) positions", &Plan::kv_blocks, 0, 1 << 24},
    {"max_running", "--max-running", "TROUPE_MAX_RUNNING", "N", "sequences decoding at once per replica",
     &Plan::max_running, 1, 1 << 16},
    {"max_batched_tokens", "--max-batched-tokens", "TROUPE_MAX_BATCHED_TOKENS", "N",
     "tokens per scheduler step (decode tokens + prefill chunks)", &Plan::max_batched_tokens, 1, 1 << 20},
    {"max_waiting", "--max-waiting", "TROUPE_MAX_WAITING", "N", "queued requests per replica before refusing more",
     &Plan::max_waiting, 0, 1 << 24},
    {"max_context", "--ctx-size", "TROUPE_CTX_SIZE", "N", "positions per sequence; 0: the model's training context",
     &Plan::max_context, 0, 1 << 24},
    {"threads", "--threads", "TROUPE_THREADS", "N", "actor scheduler threads; 0: one per core", &Plan::threads, 0,
     4096},
    {"team", "--team", "TROUPE_TEAM", "N",
     "threads per shard (and for the logits), splitting each matmul's rows and attention's heads", &Plan::team, 1, 256},
};

// The plan being built, plus whether tp is still to be chosen by auto_plan.
struct Draft {
  Plan plan;
  bool tp_auto = false;
};

// Sets one setting from its text; `where` names the source for the error ("--tp", "TROUPE_TP", "FILE: engine.tp").
Expected<void> apply(Draft& d, const Setting& s, const std::string& value, const std::string& where) {
  if (!s.field) {
    if (value == "fast") d.plan.precision = Precision::fast;
    else if (value == "exact") d.plan.precision = Precision::exact;
    else return Error{ErrorKind::invalid_argument, where + " '" + value + "': expected fast or exact"};
    return {};
  }
  if (s.field == &Plan::tp && value == "auto") {
    d.tp_auto = true;
    return {};
  }
  int n = 0;
  const char* end = value.data() + value.size();
  const auto [ptr, ec] = std::from_chars(value.data(), end, n);
  if (value.empty() || ec != std::errc() || ptr != end || n < s.min || n > s.max) {
    return Error{ErrorKind::invalid_argument, where + " '" + value + "': expected a whole number from " +
                                                  std::to_string(s.min) + " to " + std::to_string(s.max) +
                                                  (s.field == &Plan::tp ? ", or auto" : "")};
  }
  d.plan.*s.field = n;
  if (s.field == &Plan::tp) d.tp_auto = false;
  return {};
}

// Applies the "engine" object of a JSON config file. Other top-level sections belong to other parts (http, ...).
Expected<void> apply_config(Draft& d, const std::string& path) {
  auto parsed = read_config(path);
  if (!parsed) return parsed.error();
  const nlohmann::json& doc = *parsed;
  auto engine = doc.find("engine");
  if (engine == doc.end()) return {};
  if (!engine->is_object()) return Error{ErrorKind::invalid_argument, path + ": \"engine\" must be an object"};
  for (const auto& [key, value] : engine->items()) {
    const std::string where = path + ": engine." + key;
    const Setting* s = nullptr;
    for (const auto& candidate : kSettings) {
      if (key == candidate.key) s = &candidate;
    }
    if (!s) {
      std::string known;
      for (const auto& candidate : kSettings) known += std::string(known.empty() ? "" : ", ") + candidate.key;
      return Error{ErrorKind::invalid_argument, where + ": unknown key (known: " + known + ")"};
    }
    std::string text;
    if (value.is_string()) text = value.get<std::string>();
    else if (value.is_number_integer()) text = value.dump();
    else return Error{ErrorKind::invalid_argument, where + ": expected a whole number or a string, got " + value.dump()};
    if (auto ok = apply(d, *s, text, where); !ok) return ok.error();
  }
  return {};
}

}  // namespace

// The config file to read: --config, else $TROUPE_CONFIG, else the default file when it exists; "" for none.
Expected<std::string> config_path(const PlanOptions& o) {
  if (!o.config_path.empty()) return o.config_path;
  if (const char* p = std::getenv("TROUPE_CONFIG"); p && *p) return std::string(p);
  std::error_code ec;
  return std::filesystem::exists(kDefaultConfig, ec) ? std::string(kDefaultConfig) : std::string();
}

Expected<nlohmann::json> read_config(const std::string& path) {
  std::ifstream in(path);
  if (!in) return Error{ErrorKind::io, "cannot open the config file " + path};
  nlohmann::json doc;
  try {
    doc = nlohmann::json::parse(in);
  } catch (const nlohmann::json::exception& e) {
    return Error{ErrorKind::invalid_argument, path + ": not valid JSON: " + e.what()};
  }
  if (!doc.is_object()) return Error{ErrorKind::invalid_argument, path + ": expected a JSON object"};
  return doc;
}

void add_plan_options(CLI::App& app, PlanOptions& options) {
  app.add_option("--config", options.config_path,
                 std::string("JSON config file (env TROUPE_CONFIG; default ") + kDefaultConfig + " when present)");
  for (const auto& s : kSettings) {
    const std::string key = s.key;
    app.add_option_function<std::string>(
           s.flag, [&options, key](const std::string& value) { options.flags[key] = value; },
           std::string(s.help) + " (env " + s.env + ")")
        ->type_name(s.type);
  }
}

Expected<Plan> resolve_plan(const PlanOptions& options, const ModelConfig& config) {
  Draft d;
  std::vector<std::string> sources;
  auto path = config_path(options);
  if (!path) return path.error();
  if (!path->empty()) {
    if (auto ok = apply_config(d, *path); !ok) return ok.error();
    sources.push_back(*path);
  }
  for (const auto& s : kSettings) {
    const char* value = std::getenv(s.env);
    if (!value || !*value) continue;
    if (auto ok = apply(d, s, value, s.env); !ok) return ok.error();
    sources.push_back(s.env);
  }
  for (const auto& s : kSettings) {
    auto it = options.flags.find(s.key);
    if (it == options.flags.end()) continue;
    if (auto ok = apply(d, s, it->second, s.flag); !ok) return ok.error();
    sources.push_back(s.flag);
  }
  if (d.tp_auto) {
    // auto_plan sees the cores one stage of one replica can have.
    const int cores = std::max(1u, std::thread::hardware_concurrency());
    d.plan.tp = auto_plan(config, std::max(1, cores / (d.plan.pp * d.plan.replicas))).tp;
  }
  // Engine::start logs the plan in effect (with what it derives: KV blocks, context); this says where it came from.
  std::string from = "defaults";
  for (const auto& s : sources) from += ", " + s;
  spdlog::info("plan settings from {}", from);
  spdlog::debug("plan requested: {}", d.plan.describe());
  return d.plan;
}

}  // namespace troupe::cli
