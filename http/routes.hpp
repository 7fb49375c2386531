// routes.hpp: what each request asks for, decided without sockets: the route table, the API key, CORS, /health,
// and the parsing of each API body. The session (session.cpp) turns an Action into bytes on the wire.
//
//   GET  /health                 503 {"status":"loading"} | 200 {"status":"ok"} | 200 {"status":"degraded", detail}
//   GET  /metrics                Prometheus text (engine stats are read off the io threads)
//   GET  /v1/models              the one served model
//   GET  /v1/models/{id}         its model object; 404 model_not_found for another id (%-escapes decoded)
//   POST /v1/chat/completions    a Generation (openai.hpp, generation.hpp)
//   POST /v1/completions         a Generation
//   POST /tokenize, /detokenize  text <-> token ids (off the io threads)
//   OPTIONS <route>              CORS preflight (no API key needed, as browsers send none)
//   HEAD <a GET route>           the GET's answer; the session sends its status and headers without the body
// Every route but /health and OPTIONS needs `Authorization: Bearer KEY` when the server has an API key.
#pragma once

#include <atomic>
#include <functional>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "generation.hpp"
#include "metrics.hpp"
#include "openai.hpp"
#include "server.hpp"

namespace troupe::http {

// What all sessions share. Owned by the server; outlives every session.
struct ServerState {
  explicit ServerState(ServerOptions o) : options(std::move(o)), metrics(std::make_shared<Metrics>()) {}

  const ServerOptions options;
  const std::shared_ptr<Metrics> metrics;   // shared with engine sinks
  std::atomic<const Backend*> backend{nullptr};  // null while the model loads
  std::atomic<bool> stopping{false};
  std::atomic<uint64_t> shard_restarts{0};  // seen in engine stats
  std::atomic<uint64_t> failed_requests{0}; // engine requests that ended "unavailable" (a shard died under them)
};

struct HttpRequest {
  std::string method;         // "GET", "POST", ...
  std::string target;         // as sent: origin-form ("/v1/models?x") or absolute-form ("http://h/v1/models")
  std::string body;
  std::string authorization;  // header values, "" when absent
  std::string origin;
  std::string request_headers;  // Access-Control-Request-Headers
};

struct HttpResponse {
  int status = 200;
  std::string content_type = "application/json";
  std::string body;
  std::vector<std::pair<std::string, std::string>> headers;  // besides Content-Type and Content-Length
};

// What to do with a request: one of the three.
struct Action {
  HttpResponse response;                       // answer now
  std::function<HttpResponse()> work;          // compute the answer off the io threads (tokenizing, engine stats)
  std::shared_ptr<Generation> generation;      // submit to the engine and stream or gather the answer
};

Action route(const HttpRequest& request, ServerState& state);

HttpResponse error_response(const ApiError& error);
// Access-Control-Allow-Origin (and Vary) when the request's Origin is one of --cors-origin; nothing otherwise.
std::vector<std::pair<std::string, std::string>> cors_headers(const std::string& origin, const ServerOptions& options);
// The request path without query string or scheme and authority.
std::string route_path(const std::string& target);
// Equal strings, in time that does not depend on where they differ.
bool same_secret(const std::string& a, const std::string& b);

}  // namespace troupe::http
