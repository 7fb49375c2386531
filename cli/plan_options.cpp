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
#include <tuple>
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
    {"devices", "--devices", "TROUPE_DEVICES", "LIST",
     "where each pipeline stage computes, comma-separated (one per stage, or one for all): cpu, cuda:N (the whole "
     "stage on that GPU) or head groups' devices joined by + (cuda:0+cuda:1, cpu+cuda:0)", nullptr, 0, 0},
};

// One device: "cpu" (-1), "cuda" (0) or "cuda:N"; -2 when it is none of these.
int parse_device(const std::string& item) {
  if (item == "cpu") return -1;
  if (item == "cuda") return 0;
  if (item.rfind("cuda:", 0) != 0) return -2;
  int d = -1;
  const char* first = item.data() + 5;
  const char* last = item.data() + item.size();
  const auto [ptr, ec] = std::from_chars(first, last, d);
  return first == last || ec != std::errc() || ptr != last || d < 0 || d > 255 ? -2 : d;
}

// Plan::devices from "STAGE,STAGE,...", each STAGE a device or head groups' devices joined by '+'.
Expected<std::vector<std::vector<int>>> parse_devices(const std::string& text, const std::string& where) {
  std::vector<std::vector<int>> out;
  auto bad = [&] {
    return Error{ErrorKind::invalid_argument,
                 where + " '" + text + "': expected cpu, cuda or cuda:N per stage, comma-separated (head groups joined by +)"};
  };
  size_t begin = 0;
  while (begin <= text.size()) {
    const size_t end = std::min(text.find(',', begin), text.size());
    std::vector<int> stage;
    size_t g0 = begin;
    while (g0 <= end) {
      const size_t g1 = std::min(text.find('+', g0), end);
      const int d = parse_device(text.substr(g0, g1 - g0));
      if (d == -2) return bad();
      stage.push_back(d);
      g0 = g1 + 1;
    }
    out.push_back(std::move(stage));
    begin = end + 1;
  }
  if (out.size() > 256) return bad();
  return out;
}

// The plan being built, plus whether tp is still to be chosen by auto_plan.
struct Draft {
  Plan plan;
  bool tp_auto = false;
};

// Sets one setting from its text; `where` names the source for the error ("--tp", "TROUPE_TP", "FILE: engine.tp").
Expected<void> apply(Draft& d, const Setting& s, const std::string& value, const std::string& where) {
  if (!s.field && std::string(s.key) == "devices") {
    auto devices = parse_devices(value, where);
    if (!devices) return devices.error();
    d.plan.devices = std::move(*devices);
    return {};
  }
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

// A whole number from a JSON value, or an error naming where it came from.
Expected<int> json_int(const nlohmann::json& v, const std::string& where, int min, int max) {
  if (!v.is_number_integer() || v.get<int64_t>() < min || v.get<int64_t>() > max) {
    return Error{ErrorKind::invalid_argument, where + ": expected a whole number from " + std::to_string(min) + " to " +
                                                  std::to_string(max) + ", got " + v.dump()};
  }
  return static_cast<int>(v.get<int64_t>());
}

// A stage or group index N (as [N, N + 1)), or with `pair` a range [FIRST, LAST] (as [FIRST, LAST + 1)); 0..255.
Expected<std::pair<int, int>> json_range(const nlohmann::json& v, const std::string& where, bool pair) {
  if (!pair) {
    auto n = json_int(v, where, 0, 255);
    if (!n) return n.error();
    return std::pair<int, int>{*n, *n + 1};
  }
  if (!v.is_array() || v.size() != 2) return Error{ErrorKind::invalid_argument, where + ": expected [FIRST, LAST]"};
  auto a = json_int(v[0], where + "[0]", 0, 255);
  if (!a) return a.error();
  auto b = json_int(v[1], where + "[1]", *a, 255);
  if (!b) return b.error();
  return std::pair<int, int>{*a, *b + 1};
}

// The "placement" array: [{"stage": S | "stages": [FIRST, LAST], "group": G | "groups": [FIRST, LAST] (optional),
// "replica": R (optional: every replica), "worker": "HOST:PORT"}, ...]; an entry without stages puts the whole
// replica on the worker (with groups: those head groups of every stage); with groups, only those head groups'
// shards go to the worker and their stage stays here.
Expected<void> apply_placement(Draft& d, const nlohmann::json& list, const std::string& path) {
  if (!list.is_array()) return Error{ErrorKind::invalid_argument, path + ": \"placement\" must be an array"};
  for (size_t i = 0; i < list.size(); ++i) {
    const nlohmann::json& e = list[i];
    const std::string where = path + ": placement[" + std::to_string(i) + "]";
    if (!e.is_object()) return Error{ErrorKind::invalid_argument, where + ": expected an object"};
    RemoteStages r;
    r.stage_end = -1;  // no stage given: every stage (resolved once pp is known)
    bool has_worker = false;
    for (const auto& [key, value] : e.items()) {
      if (key == "worker") {
        if (!value.is_string()) return Error{ErrorKind::invalid_argument, where + ".worker: expected \"HOST:PORT\""};
        auto hp = parse_host_port(value.get<std::string>());
        if (!hp) return Error{ErrorKind::invalid_argument, where + ".worker " + hp.error().message};
        if (hp->second == 0) return Error{ErrorKind::invalid_argument, where + ".worker: port 0 is not a worker's port"};
        r.host = hp->first;
        r.port = hp->second;
        has_worker = true;
      } else if (key == "stage" || key == "stages") {
        auto range = json_range(value, where + "." + key, key == "stages");
        if (!range) return range.error();
        std::tie(r.stage_begin, r.stage_end) = *range;
      } else if (key == "group" || key == "groups") {
        auto range = json_range(value, where + "." + key, key == "groups");
        if (!range) return range.error();
        std::tie(r.group_begin, r.group_end) = *range;
      } else if (key == "replica") {
        auto rep = json_int(value, where + ".replica", 0, 63);
        if (!rep) return rep.error();
        r.replica = *rep;
      } else {
        return Error{ErrorKind::invalid_argument, where + ": unknown key " + key + " (known: stage, stages, group, groups, replica, worker)"};
      }
    }
    if (!has_worker) return Error{ErrorKind::invalid_argument, where + ": \"worker\": \"HOST:PORT\" is required"};
    d.plan.placement.remote.push_back(r);
  }
  return {};
}

// The "remote" object: {"secret": S, "timeout_s": T, "reconnect_s": R, "activations": "f32" | "f16"}.
Expected<void> apply_remote(Draft& d, const nlohmann::json& obj, const std::string& path) {
  if (!obj.is_object()) return Error{ErrorKind::invalid_argument, path + ": \"remote\" must be an object"};
  Placement& p = d.plan.placement;
  for (const auto& [key, value] : obj.items()) {
    const std::string where = path + ": remote." + key;
    if (key == "secret" && value.is_string()) {
      p.secret = value.get<std::string>();
    } else if ((key == "timeout_s" || key == "reconnect_s") && value.is_number() && value.get<double>() > 0 &&
               value.get<double>() <= 86400) {
      (key == "timeout_s" ? p.timeout_s : p.reconnect_s) = value.get<double>();
    } else if (key == "activations" && value.is_string() &&
               (value.get<std::string>() == "f32" || value.get<std::string>() == "f16")) {
      p.f16 = value.get<std::string>() == "f16";
    } else if (key == "secret" || key == "timeout_s" || key == "reconnect_s" || key == "activations") {
      return Error{ErrorKind::invalid_argument, where + ": bad value " + value.dump() +
                                                    " (secret: a string; timeout_s, reconnect_s: seconds > 0; "
                                                    "activations: \"f32\" or \"f16\")"};
    } else {
      return Error{ErrorKind::invalid_argument,
                   where + ": unknown key (known: secret, timeout_s, reconnect_s, activations)"};
    }
  }
  return {};
}

// Applies the "engine" object of a JSON config file, and "placement" and "remote" when present. Other top-level
// sections belong to other parts (http, ...).
Expected<void> apply_config(Draft& d, const std::string& path) {
  auto parsed = read_config(path);
  if (!parsed) return parsed.error();
  const nlohmann::json& doc = *parsed;
  if (auto it = doc.find("placement"); it != doc.end()) {
    if (auto ok = apply_placement(d, *it, path); !ok) return ok.error();
  }
  if (auto it = doc.find("remote"); it != doc.end()) {
    if (auto ok = apply_remote(d, *it, path); !ok) return ok.error();
  }
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

Expected<std::pair<std::string, int>> parse_host_port(const std::string& text) {
  auto bad = [&] { return Error{ErrorKind::invalid_argument, "'" + text + "': expected HOST:PORT or [IPV6]:PORT"}; };
  std::string host, port;
  if (!text.empty() && text.front() == '[') {
    const size_t close = text.find(']');
    if (close == std::string::npos || close + 1 >= text.size() || text[close + 1] != ':') return bad();
    host = text.substr(1, close - 1);
    port = text.substr(close + 2);
  } else {
    const size_t colon = text.rfind(':');
    if (colon == std::string::npos || text.find(':') != colon) return bad();
    host = text.substr(0, colon);
    port = text.substr(colon + 1);
  }
  int n = -1;
  const auto [ptr, ec] = std::from_chars(port.data(), port.data() + port.size(), n);
  if (host.empty() || port.empty() || ec != std::errc() || ptr != port.data() + port.size() || n < 0 || n > 65535) {
    return bad();
  }
  return std::pair<std::string, int>{host, n};
}

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
  if (const char* secret = std::getenv("TROUPE_SECRET"); secret && *secret) d.plan.placement.secret = secret;
  for (auto& r : d.plan.placement.remote) {
    if (r.stage_end < 0) r.stage_begin = 0, r.stage_end = d.plan.pp;  // a whole replica
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
