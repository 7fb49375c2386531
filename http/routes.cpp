// routes.cpp: the route table and the answers that need no engine (see routes.hpp).
#include "routes.hpp"

#include <algorithm>
#include <cctype>
#include <optional>
#include <string_view>

namespace troupe::http {

namespace {

struct RouteEntry {
  const char* path;    // the path, or a prefix when it ends with '/' (the rest of the path is a parameter)
  const char* method;  // the one method it takes (a GET route takes HEAD too)
};

const RouteEntry kRoutes[] = {
    {"/health", "GET"},          {"/metrics", "GET"},   {"/v1/models", "GET"},    {"/v1/models/", "GET"},
    {"/v1/chat/completions", "POST"}, {"/v1/completions", "POST"}, {"/tokenize", "POST"}, {"/detokenize", "POST"},
};

const RouteEntry* find_route(const std::string& path) {
  for (const auto& r : kRoutes) {
    const std::string_view p = r.path;
    const bool prefix = p.back() == '/';
    if (prefix ? path.size() > p.size() && path.compare(0, p.size(), p) == 0 : path == p) return &r;
  }
  return nullptr;
}

bool is_get(const RouteEntry& r) { return std::string_view(r.method) == "GET"; }

// The Allow header of a route (every route's methods for "*").
std::string allowed_methods(const RouteEntry* r) {
  if (!r) return "GET, HEAD, POST, OPTIONS";
  return is_get(*r) ? "GET, HEAD, OPTIONS" : std::string(r->method) + ", OPTIONS";
}

// %XX escapes decoded (clients escape a model id's '/', ':' or spaces); nullopt for a malformed escape.
std::optional<std::string> percent_decode(std::string_view s) {
  auto hex = [](char c) {
    return c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : c >= 'A' && c <= 'F' ? c - 'A' + 10 : -1;
  };
  std::string out;
  for (size_t i = 0; i < s.size(); ++i) {
    if (s[i] != '%') {
      out += s[i];
      continue;
    }
    if (i + 2 >= s.size()) return std::nullopt;
    const int hi = hex(s[i + 1]), lo = hex(s[i + 2]);
    if (hi < 0 || lo < 0) return std::nullopt;
    out += static_cast<char>(hi * 16 + lo);
    i += 2;
  }
  return out;
}

ApiError api(int status, std::string type, std::string message, std::string code = {}) {
  ApiError e;
  e.status = status;
  e.type = std::move(type);
  e.message = std::move(message);
  e.code = std::move(code);
  return e;
}

HttpResponse json_response(std::string body, int status = 200) {
  HttpResponse r;
  r.status = status;
  r.body = std::move(body);
  return r;
}

bool authorized(const HttpRequest& req, const ServerOptions& o) {
  if (o.api_key.empty()) return true;
  constexpr std::string_view bearer = "Bearer ";
  if (req.authorization.size() < bearer.size() || req.authorization.compare(0, bearer.size(), bearer) != 0) return false;
  return same_secret(req.authorization.substr(bearer.size()), o.api_key);
}

// Access-Control-Request-Headers echoed back when it is a plain list of header names.
std::string allowed_headers(const std::string& requested) {
  const bool plain = !requested.empty() && requested.size() < 1024 &&
                     std::all_of(requested.begin(), requested.end(), [](unsigned char c) {
                       return std::isalnum(c) || c == '-' || c == '_' || c == ',' || c == ' ';
                     });
  return plain ? requested : "Authorization, Content-Type";
}

HttpResponse health(const ServerState& state) {
  const Backend* backend = state.backend.load();
  if (!backend) return json_response(format_health("loading"), 503);
  // Replicas whose workers are unreachable (docs/distributed.md): none left is 503, some is "degraded".
  const Engine::Health engine = backend->engine ? backend->engine->health() : Engine::Health{1, {}};
  if (engine.replicas_up == 0) return json_response(format_health("unavailable", engine.detail), 503);
  const uint64_t restarts = state.shard_restarts.load(), failed = state.failed_requests.load();
  if (restarts == 0 && failed == 0 && engine.detail.empty()) return json_response(format_health("ok"));
  std::string detail = engine.detail;
  if (restarts > 0 || failed > 0) detail += std::string(detail.empty() ? "" : "; ") + "a shard failed and was restarted";
  if (restarts > 0) detail += " (" + std::to_string(restarts) + " restarts)";
  if (failed > 0) detail += "; " + std::to_string(failed) + " requests running on it ended with 503";
  return json_response(format_health("degraded", detail));
}

ApiError model_not_found(const Backend& backend) {
  return api(404, "not_found_error", "this server serves only the model '" + backend.model_id + "'", "model_not_found");
}

Action generation(const HttpRequest& req, ServerState& state, const Backend& backend, Endpoint endpoint) {
  const RequestLimits limits{state.options.max_n, state.options.max_top_logprobs, backend.tokenizer.n_vocab()};
  auto parsed = endpoint == Endpoint::chat ? parse_chat_request(req.body, limits)
                                           : parse_completion_request(req.body, limits);
  if (!parsed) return {error_response(parsed.error()), {}, {}};
  if (parsed->model && *parsed->model != backend.model_id) return {error_response(model_not_found(backend)), {}, {}};
  return {{}, {}, std::make_shared<Generation>(std::move(*parsed), backend, state.options)};
}

Action tokenize(const HttpRequest& req, const Backend& backend) {
  auto parsed = parse_tokenize_request(req.body);
  if (!parsed) return {error_response(parsed.error()), {}, {}};
  return {{}, [&backend, r = std::move(*parsed)] {
            const auto ids = backend.tokenizer.encode(r.text, r.add_special_tokens, /*parse_special=*/true);
            return json_response(format_tokens(ids, backend.n_ctx));
          },
          {}};
}

Action detokenize(const HttpRequest& req, const Backend& backend) {
  auto parsed = parse_detokenize_request(req.body, {0, 0, backend.tokenizer.n_vocab()});
  if (!parsed) return {error_response(parsed.error()), {}, {}};
  return {{}, [&backend, ids = std::move(*parsed)] {
            return json_response(format_detokenized(backend.tokenizer.decode(ids, /*render_special=*/true)));
          },
          {}};
}

// GET /v1/models/{id}: the model object when the id is the served model's (the id comes %-escaped).
HttpResponse model(const std::string& escaped_id, const Backend& backend) {
  if (percent_decode(escaped_id) != backend.model_id) return error_response(model_not_found(backend));
  return json_response(format_model(backend.model_id, backend.created));
}

Action metrics(ServerState& state, const Backend& backend) {
  return {{}, [&state, &backend] {
            const EngineStats stats = backend.engine->stats();
            state.shard_restarts.store(std::max(state.shard_restarts.load(), stats.shard_restarts));
            HttpResponse r;
            r.content_type = "text/plain; version=0.0.4";
            r.body = state.metrics->render(stats);
            return r;
          },
          {}};
}

}  // namespace

std::string route_path(const std::string& target) {
  std::string path = target;
  if (path.rfind("http://", 0) == 0 || path.rfind("https://", 0) == 0) {
    const size_t slash = path.find('/', path.find("//") + 2);
    path = slash == std::string::npos ? "/" : path.substr(slash);
  }
  if (const size_t q = path.find_first_of("?#"); q != std::string::npos) path.resize(q);
  return path;
}

bool same_secret(const std::string& a, const std::string& b) {
  const size_t n = std::max(a.size(), b.size());
  volatile unsigned char diff = a.size() == b.size() ? 0 : 1;
  for (size_t i = 0; i < n; ++i) {
    const unsigned char x = i < a.size() ? a[i] : 0, y = i < b.size() ? b[i] : 0;
    diff = diff | (x ^ y);
  }
  return diff == 0;
}

HttpResponse error_response(const ApiError& e) {
  HttpResponse r = json_response(format_error(e), e.status);
  if (e.status == 429) r.headers.emplace_back("Retry-After", std::to_string(std::max(1, e.retry_after)));
  return r;
}

std::vector<std::pair<std::string, std::string>> cors_headers(const std::string& origin, const ServerOptions& o) {
  if (origin.empty() || std::find(o.cors_origins.begin(), o.cors_origins.end(), origin) == o.cors_origins.end()) {
    return {};
  }
  return {{"Access-Control-Allow-Origin", origin}, {"Vary", "Origin"}};
}

Action route(const HttpRequest& req, ServerState& state) {
  const ServerOptions& o = state.options;
  const std::string path = route_path(req.target);
  const RouteEntry* entry = find_route(path);

  if (req.method == "OPTIONS" && (entry || path == "*")) {
    HttpResponse r;
    r.status = 204;
    r.content_type.clear();
    r.headers.emplace_back("Allow", allowed_methods(entry));
    if (!cors_headers(req.origin, o).empty()) {  // the session adds Access-Control-Allow-Origin to every answer
      r.headers.emplace_back("Access-Control-Allow-Methods", allowed_methods(entry));
      r.headers.emplace_back("Access-Control-Allow-Headers", allowed_headers(req.request_headers));
      r.headers.emplace_back("Access-Control-Max-Age", "600");
    }
    return {r, {}, {}};
  }
  if (path != "/health" && !authorized(req, o)) {
    HttpResponse r = error_response(api(401, "authentication_error",
                                        "a valid API key is required: Authorization: Bearer KEY", "invalid_api_key"));
    r.headers.emplace_back("WWW-Authenticate", "Bearer");
    return {r, {}, {}};
  }
  if (!entry) return {error_response(api(404, "not_found_error", "no such route", "not_found")), {}, {}};
  // HEAD is GET without the body (the session drops it).
  if (req.method != entry->method && !(req.method == "HEAD" && is_get(*entry))) {
    HttpResponse r = error_response(api(405, "invalid_request_error",
                                        "this route takes " + std::string(entry->method), "method_not_allowed"));
    r.headers.emplace_back("Allow", allowed_methods(entry));
    return {r, {}, {}};
  }
  if (path == "/health") return {health(state), {}, {}};

  const Backend* backend = state.backend.load();
  if (!backend) {
    return {error_response(api(503, "service_unavailable", "the model is loading; retry shortly", "loading")), {}, {}};
  }
  if (path == "/v1/models") return {json_response(format_models(backend->model_id, backend->created)), {}, {}};
  if (const std::string_view p = entry->path; p == "/v1/models/") return {model(path.substr(p.size()), *backend), {}, {}};
  if (path == "/metrics") return metrics(state, *backend);
  if (path == "/tokenize") return tokenize(req, *backend);
  if (path == "/detokenize") return detokenize(req, *backend);
  return generation(req, state, *backend, path == "/v1/chat/completions" ? Endpoint::chat : Endpoint::completions);
}

}  // namespace troupe::http
