// server.hpp: the HTTP gateway, seen from the command that starts it. Plain C++ (Beast stays in http/*.cpp).
//
//   Server::start(options)     binds and listens at once, io threads running; every route but /health answers 503
//                              until set_backend() (the model loads meanwhile on the caller's thread)
//   set_backend(backend)       the model is ready: /health 200, the API routes work
//   stop()                     graceful: stop accepting, cancel in-flight engine requests (streams get an error event,
//                              others 503), wait a little for connections to finish, close the path from engine
//                              threads into Asio, then stop the io threads. The engine must outlive stop().
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "chat_template.hpp"
#include "engine.hpp"
#include "error.hpp"
#include "tokenizer.hpp"

namespace troupe::http {

struct ServerOptions {
  std::string host = "127.0.0.1";
  int port = 8080;                        // 0: any free port (port() tells which)
  int io_threads = 2;
  std::string api_key;                    // empty: no authentication
  std::vector<std::string> cors_origins;  // origins that get Access-Control-Allow-Origin
  size_t max_body_bytes = 1 << 20;        // larger bodies: 413
  size_t max_header_bytes = 16 << 10;     // larger request line + headers: 431
  int idle_timeout_s = 60;                // a keep-alive connection with no request (or a client reading nothing)
  int read_timeout_s = 30;                // a request's headers and body must arrive within this
  int max_n = 8;                          // "n" at most
  int max_top_logprobs = 20;              // "top_logprobs" / completions "logprobs" at most
  int stream_credit = 16;                 // tokens a stream may have unacknowledged (engine backpressure)
  bool log_requests = false;              // one log line per request: method, path, status (never a body)
};

// The loaded model as the routes need it. The server keeps its reference until stop() returns; the caller drops the
// last one (the engine's destructor waits for the actor system, so never on an io or engine thread).
struct Backend {
  explicit Backend(Tokenizer t) : tokenizer(std::move(t)) {}

  std::string model_id;                   // served name
  int64_t created = 0;                    // unix seconds the model was loaded
  int n_ctx = 0;                          // positions per sequence (the plan's context)
  std::unique_ptr<Engine> engine;
  Tokenizer tokenizer;
  // Prompt building, shared with the other commands: chat messages with the model's template, raw text.
  std::function<Expected<std::vector<TokenId>>(const std::vector<ChatMessage>&)> encode_chat;
  std::function<std::vector<TokenId>(const std::string&)> encode_text;
};

class Server {
 public:
  static Expected<std::unique_ptr<Server>> start(const ServerOptions& options);
  ~Server();  // stop() if still running

  const std::string& host() const;
  int port() const;  // the bound port
  void set_backend(std::shared_ptr<const Backend> backend);
  void stop();

  struct Impl;

 private:
  explicit Server(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace troupe::http
