// serve.cpp: `troupe serve`: the OpenAI-compatible HTTP server (docs/http-contract.md, docs/http.md).
//   1. settings: defaults < the config file's "server" object < TROUPE_HOST/PORT/API_KEY/MODEL < flags
//   2. listen at once (logs "listening on http://HOST:PORT"); /health answers 503 "loading" meanwhile
//   3. load the model and start the engine on a background thread, then hand them to the server
//   4. wait for SIGINT/SIGTERM; stop the server gracefully, then the engine; exit 0
#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>
#include <spdlog/spdlog.h>

#include <charconv>
#include <chrono>
#include <csignal>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <pthread.h>
#include <thread>
#include <unistd.h>

#include "commands.hpp"
#include "load.hpp"
#include "prompt.hpp"
#include "server.hpp"

namespace troupe::cli {

namespace {

constexpr const char* kDefaultModel = "models/SmolLM2-135M-Instruct.Q4_1.gguf";

int fail(const Error& e) {
  spdlog::error("{}", e.message);
  return 1;
}

// One server setting under its names, and the whole numbers it takes (min > max: a string).
struct Setting {
  const char* key;   // in the config file's "server" object
  const char* flag;
  const char* env;   // nullptr: none
  const char* help;
  long min;
  long max;
};

const Setting kSettings[] = {
    {"model", "-m,--model", "TROUPE_MODEL", "GGUF model file", 1, 0},
    {"host", "--host", "TROUPE_HOST", "address to listen on", 1, 0},
    {"port", "--port", "TROUPE_PORT", "port to listen on; 0: any free port", 0, 65535},
    {"api_key", "--api-key", "TROUPE_API_KEY", "require Authorization: Bearer KEY (all routes but /health)", 1, 0},
    {"served_model_name", "--served-model-name", nullptr, "model id in responses (default: the file name)", 1, 0},
    {"io_threads", "--io-threads", nullptr, "HTTP io threads", 1, 256},
    {"max_body_bytes", "--max-body-bytes", nullptr, "larger request bodies get 413", 1, 1l << 30},
    {"max_header_bytes", "--max-header-bytes", nullptr, "larger request headers get 431", 256, 1l << 20},
    {"idle_timeout", "--idle-timeout", nullptr, "seconds an idle keep-alive connection (or a stalled reader) is kept", 1,
     86400},
    {"read_timeout", "--read-timeout", nullptr, "seconds a request's headers and body may take to arrive (then 408)", 1,
     86400},
    {"max_n", "--max-n", nullptr, "largest \"n\" (choices per request)", 1, 128},
    {"max_top_logprobs", "--max-top-logprobs", nullptr, "largest top_logprobs / logprobs", 0, 100},
    {"stream_credit", "--stream-credit", nullptr, "tokens a stream may have unwritten before its request pauses", 1,
     4096},
};

struct Settings {
  std::string model = kDefaultModel;
  std::string served_model_name;
  http::ServerOptions server;
};

Expected<void> apply(Settings& s, const Setting& setting, const std::string& value, const std::string& where) {
  const std::string key = setting.key;
  if (setting.min > setting.max) {  // a string
    if (value.empty()) return Error{ErrorKind::invalid_argument, where + ": must not be empty"};
    if (key == "model") s.model = value;
    else if (key == "host") s.server.host = value;
    else if (key == "api_key") s.server.api_key = value;
    else if (key == "served_model_name") s.served_model_name = value;
    return {};
  }
  long n = 0;
  const char* end = value.data() + value.size();
  const auto [ptr, ec] = std::from_chars(value.data(), end, n);
  if (value.empty() || ec != std::errc() || ptr != end || n < setting.min || n > setting.max) {
    return Error{ErrorKind::invalid_argument, where + " '" + value + "': expected a whole number from " +
                                                  std::to_string(setting.min) + " to " + std::to_string(setting.max)};
  }
  http::ServerOptions& o = s.server;
  if (key == "port") o.port = static_cast<int>(n);
  else if (key == "io_threads") o.io_threads = static_cast<int>(n);
  else if (key == "max_body_bytes") o.max_body_bytes = static_cast<size_t>(n);
  else if (key == "max_header_bytes") o.max_header_bytes = static_cast<size_t>(n);
  else if (key == "idle_timeout") o.idle_timeout_s = static_cast<int>(n);
  else if (key == "read_timeout") o.read_timeout_s = static_cast<int>(n);
  else if (key == "max_n") o.max_n = static_cast<int>(n);
  else if (key == "max_top_logprobs") o.max_top_logprobs = static_cast<int>(n);
  else if (key == "stream_credit") o.stream_credit = static_cast<int>(n);
  return {};
}

// The "server" object of the config file (the same file the plan comes from), if there is one.
Expected<void> apply_config(Settings& s, const PlanOptions& plan) {
  auto found = config_path(plan);
  if (!found) return found.error();
  const std::string& path = *found;
  if (path.empty()) return {};
  auto parsed = read_config(path);
  if (!parsed) return parsed.error();
  const nlohmann::json& doc = *parsed;
  auto server = doc.find("server");
  if (server == doc.end()) return {};
  if (!server->is_object()) return Error{ErrorKind::invalid_argument, path + ": \"server\" must be an object"};
  for (const auto& [key, value] : server->items()) {
    const std::string where = path + ": server." + key;
    if (key == "cors_origins") {
      if (!value.is_array()) return Error{ErrorKind::invalid_argument, where + ": expected an array of origins"};
      for (const auto& origin : value) {
        if (!origin.is_string()) return Error{ErrorKind::invalid_argument, where + ": expected an array of origins"};
        s.server.cors_origins.push_back(origin.get<std::string>());
      }
      continue;
    }
    const Setting* setting = nullptr;
    for (const auto& candidate : kSettings) {
      if (key == candidate.key) setting = &candidate;
    }
    if (!setting) {
      std::string known = "cors_origins";
      for (const auto& candidate : kSettings) known += std::string(", ") + candidate.key;
      return Error{ErrorKind::invalid_argument, where + ": unknown key (known: " + known + ")"};
    }
    std::string text;
    if (value.is_string()) text = value.get<std::string>();
    else if (value.is_number_integer()) text = value.dump();
    else return Error{ErrorKind::invalid_argument, where + ": expected a whole number or a string"};
    if (auto ok = apply(s, *setting, text, where); !ok) return ok.error();
  }
  return {};
}

Expected<Settings> resolve_settings(const ServeOptions& o) {
  Settings s;
  if (auto ok = apply_config(s, o.plan); !ok) return ok.error();
  for (const auto& setting : kSettings) {
    const char* value = setting.env ? std::getenv(setting.env) : nullptr;
    if (!value || !*value) continue;
    if (auto ok = apply(s, setting, value, setting.env); !ok) return ok.error();
  }
  for (const auto& setting : kSettings) {
    auto it = o.flags.find(setting.key);
    if (it == o.flags.end()) continue;
    const std::string flag = setting.flag;
    if (auto ok = apply(s, setting, it->second, flag.substr(flag.rfind("--"))); !ok) return ok.error();
  }
  if (!o.cors_origins.empty()) s.server.cors_origins = o.cors_origins;
  if (s.served_model_name.empty()) {
    s.served_model_name = std::filesystem::path(s.model).filename().string();
    const std::string ext = ".gguf";
    if (s.served_model_name.size() > ext.size() && s.served_model_name.ends_with(ext)) {
      s.served_model_name.resize(s.served_model_name.size() - ext.size());
    }
  }
  return s;
}

// Loads the model and starts the engine: the backend the server answers with.
Expected<std::shared_ptr<http::Backend>> load(const Settings& s, const PlanOptions& plan_options) {
  const auto t0 = std::chrono::steady_clock::now();
  auto loaded = load_model(s.model);
  if (!loaded) return loaded.error();
  const std::shared_ptr<const GgufFile>& file = loaded->file;
  const Tokenizer& tokenizer = loaded->tokenizer;
  const ModelConfig& c = loaded->model->config();
  auto plan = resolve_plan(plan_options, c);
  if (!plan) return plan.error();
  auto engine = Engine::start(loaded->model, tokenizer, *plan);
  if (!engine) return engine.error();

  auto backend = std::make_shared<http::Backend>(tokenizer);
  backend->model_id = s.served_model_name;
  backend->created = std::chrono::duration_cast<std::chrono::seconds>(
                         std::chrono::system_clock::now().time_since_epoch()).count();
  backend->n_ctx = (*engine)->plan().max_context;
  backend->engine = std::move(*engine);
  // A model without a chat template still serves /v1/completions; chat requests then get the template's error.
  auto tmpl = load_chat_template(*file);
  if (!tmpl) spdlog::warn("no usable chat template ({}): /v1/chat/completions will refuse requests", tmpl.error().message);
  backend->encode_chat = [tmpl, tok = tokenizer, keep = file](const std::vector<ChatMessage>& messages)
      -> Expected<std::vector<TokenId>> {
    if (!tmpl) return tmpl.error();
    return encode_chat(*tmpl, tok, messages);
  };
  backend->encode_text = [tok = tokenizer](const std::string& text) { return encode_text(tok, text); };
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  spdlog::info("model {} loaded in {:.2f} s: {} layers, vocab {}, context {}; serving as '{}'",
               std::filesystem::path(s.model).filename().string(), seconds, c.n_layer, c.n_vocab, backend->n_ctx,
               backend->model_id);
  return backend;
}

std::string url_host(const std::string& host) { return host.find(':') != std::string::npos ? "[" + host + "]" : host; }

}  // namespace

void add_serve_options(CLI::App& app, ServeOptions& options) {
  for (const auto& s : kSettings) {
    const std::string key = s.key;
    std::string help = s.help;
    if (s.env) help += std::string(" (env ") + s.env + ")";
    auto* opt = app.add_option_function<std::string>(
        s.flag, [&options, key](const std::string& value) { options.flags[key] = value; }, help);
    opt->type_name(s.min > s.max ? "TEXT" : "N");
  }
  app.add_option("--cors-origin", options.cors_origins, "origin allowed by CORS (repeatable; none by default)");
  add_plan_options(app, options.plan);
  app.add_flag("-v,--verbose", options.verbose, "log one line per request: method, path, status (never its text)");
}

int run_serve(ServeOptions o) {
  auto settings = resolve_settings(o);
  if (!settings) return fail(settings.error());
  // Not spdlog's debug level: other parts log prompt text there, and no request's text may reach the log.
  settings->server.log_requests = o.verbose;

  // Signals are taken by sigwait on this thread: block them before any other thread starts (they inherit the mask).
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGINT);
  sigaddset(&signals, SIGTERM);
  sigaddset(&signals, SIGUSR1);  // the loading thread's "failed"
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);
  std::signal(SIGPIPE, SIG_IGN);

  const http::ServerOptions& so = settings->server;
  spdlog::info("serve: model {}; io threads {}; API key {}; CORS origins {}; body <= {} bytes, headers <= {} bytes; "
               "idle timeout {} s, read timeout {} s; n <= {}, top_logprobs <= {}",
               std::filesystem::path(settings->model).filename().string(), so.io_threads, so.api_key.empty() ? "none" : "required", so.cors_origins.size(),
               so.max_body_bytes, so.max_header_bytes, so.idle_timeout_s, so.read_timeout_s, so.max_n,
               so.max_top_logprobs);
  auto server = http::Server::start(so);
  if (!server) return fail(server.error());
  spdlog::info("listening on http://{}:{}", url_host((*server)->host()), (*server)->port());

  std::shared_ptr<http::Backend> backend;
  std::optional<Error> load_error;
  std::thread loader([&, main_pid = getpid()] {
    auto loaded = load(*settings, o.plan);
    if (!loaded) {
      load_error = loaded.error();
      kill(main_pid, SIGUSR1);
      return;
    }
    backend = std::move(*loaded);
    (*server)->set_backend(backend);
    spdlog::info("ready");
  });

  int sig = 0;
  sigwait(&signals, &sig);
  if (sig != SIGUSR1) spdlog::info("{}: stopping", sig == SIGINT ? "SIGINT" : "SIGTERM");
  (*server)->stop();
  loader.join();
  server->reset();
  backend.reset();  // the engine stops after the server: no engine event can reach a dead connection
  if (load_error) return fail(*load_error);
  spdlog::info("stopped");
  return 0;
}

}  // namespace troupe::cli
