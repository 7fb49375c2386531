// fuzz_http.cpp: libFuzzer target for the HTTP layer: raw bytes from a client, as `troupe serve` receives them.
//
// Each input is used twice:
//   1. without sockets, deterministically: read as the session reads it (Beast's request_parser with the server's
//      header and body limits, 16 KiB reads, pipelined requests one after another on the same buffer), and each
//      request run through route() (http/routes.cpp) as the session's dispatch does: every Action is carried out
//      (tokenize work, /metrics, Generation::prepare with the model's own chat template), its answer checked;
//   2. on the wire: written to a real Server (http/server.cpp, its sessions and their state machine) over loopback,
//      reading the answers as they come; once every request that was whole has its answer the client half-closes,
//      and reads to the end.
// Both serve the default model's vocabulary and chat template (fuzz_model.hpp) with an Engine that generates up to
// three tokens per request on its own thread (the prompt's first tokens: any bytes, partial characters included),
// so generations, streams, n > 1 and logprobs run through the real session code.
//
// Checked, besides no crash, leak, hang or sanitizer report, and no error logged by the server (an exception that
// reached an io thread, say):
//   - every answer is well-formed HTTP/1.1 (status line, framing by Content-Length or chunks, HEAD without a body);
//     JSON bodies parse; error bodies have the OpenAI error shape and never carry the API key; streams are SSE
//     events of JSON chunks ending in [DONE] or an error event
//   - the server answers exactly the requests step 1 found: one answer per whole request up to a
//     `Connection: close` (or an HTTP/1.0 stream, which ends at the close), one more for a malformed request (400,
//     413, 431), none for a request the input cut short until the client half-closes (then a 400)
//   - a prepared generation's engine requests are within the vocabulary and the context
//
// The server runs with its defaults (docs/http-contract.md) except: an API key (inputs must find "Bearer fuzz-key"),
// one CORS origin, and a 16 KiB body limit instead of 1 MiB so that 413 is reachable within -max_len.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <nlohmann/json.hpp>
#include <spdlog/sinks/base_sink.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <limits>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "fuzz_model.hpp"
#include "prompt.hpp"
#include "routes.hpp"
#include "server.hpp"

namespace {

using namespace troupe;
using namespace troupe::http;
namespace beast = boost::beast;
namespace bhttp = boost::beast::http;
namespace net = boost::asio;
using json = nlohmann::json;

constexpr const char* kApiKey = "fuzz-key";
constexpr size_t kReadChunk = 16 << 10;               // as the session reads
constexpr auto kDeadline = std::chrono::seconds(8);   // for one exchange on the wire (libFuzzer's -timeout is 10)

void require(bool ok, const std::string& what) {
  if (!ok) {
    std::fprintf(stderr, "fuzz_http: %s\n", what.c_str());
    std::abort();
  }
}

// An error logged by the server is a bug here (e.g. "io thread: <exception>"): stop at once.
class AbortOnError final : public spdlog::sinks::base_sink<std::mutex> {
 protected:
  void sink_it_(const spdlog::details::log_msg& m) override {
    if (m.level < spdlog::level::err) return;
    std::fprintf(stderr, "fuzz_http: the server logged an error: %.*s\n", static_cast<int>(m.payload.size()),
                 m.payload.data());
    std::abort();
  }
  void flush_() override {}
};

// ---- an engine that answers every request with up to three tokens, from its own thread ----

class FakeEngine final : public Engine {
 public:
  explicit FakeEngine(const Tokenizer& tokenizer) : tokenizer_(tokenizer), worker_([this] { run(); }) {}
  ~FakeEngine() override {
    {
      std::lock_guard lock(mutex_);
      stop_ = true;
    }
    cv_.notify_all();
    worker_.join();
  }

  Expected<RequestId> submit(Request request, std::shared_ptr<Sink> sink) override {
    require(!request.prompt.empty(), "an empty prompt reached the engine");
    require(request.params.max_tokens >= 1, "max_tokens below 1 reached the engine");
    for (const TokenId id : request.prompt) require(id >= 0 && id < tokenizer_.n_vocab(), "a token id outside the vocabulary reached the engine");
    std::lock_guard lock(mutex_);
    const RequestId id = ++next_id_;
    jobs_.push_back({id, std::move(request), std::move(sink)});
    cv_.notify_one();
    return id;
  }
  void ack(RequestId, int) override {}
  void cancel(RequestId id) override {
    std::lock_guard lock(mutex_);
    cancelled_.insert(id);
  }
  EngineStats stats() override {
    EngineStats s;
    s.shards.resize(1);
    s.shards[0].step_buckets.assign(kShardStepBounds.size() + 1, 0);
    return s;
  }
  const Plan& plan() const override { return plan_; }
  double retry_after() override { return 1; }
  void inject_fault(int, int, int) override {}

 private:
  struct Job {
    RequestId id;
    Request request;
    std::shared_ptr<Sink> sink;
  };

  bool cancelled(RequestId id) {
    std::lock_guard lock(mutex_);
    return cancelled_.erase(id) > 0;
  }

  void run() {
    for (;;) {
      Job job;
      {
        std::unique_lock lock(mutex_);
        cv_.wait(lock, [&] { return stop_ || !jobs_.empty(); });
        if (jobs_.empty()) return;
        job = std::move(jobs_.front());
        jobs_.pop_front();
      }
      const Request& r = job.request;
      const int n = std::min({r.params.max_tokens, 3, static_cast<int>(r.prompt.size())});
      FinishEvent finish;
      finish.n_prompt = static_cast<int>(r.prompt.size());
      finish.reason = n == r.params.max_tokens ? FinishReason::length : FinishReason::stop;
      for (int i = 0; i < n; ++i) {
        if (cancelled(job.id)) {
          finish.reason = FinishReason::cancelled;
          break;
        }
        TokenEvent e;
        e.token = r.prompt[i];
        e.text = tokenizer_.token_to_piece(e.token);
        e.logprob = -0.25f * static_cast<float>(i);
        for (int k = 0; k < std::max(r.logprobs, 0); ++k) {
          e.top.emplace_back((e.token + k) % tokenizer_.n_vocab(), -1.0f - static_cast<float>(k));
        }
        job.sink->on_token(e);
        ++finish.n_generated;
      }
      job.sink->on_finished(finish);
      cancelled(job.id);
    }
  }

  const Tokenizer& tokenizer_;
  Plan plan_;
  std::mutex mutex_;
  std::condition_variable cv_;
  std::deque<Job> jobs_;
  std::set<RequestId> cancelled_;
  RequestId next_id_ = 0;
  bool stop_ = false;
  std::thread worker_;  // last: starts once the rest is built
};

// ---- the world both steps share ----

ServerOptions fuzz_options() {
  ServerOptions o;
  o.host = "127.0.0.1";
  o.port = 0;
  o.api_key = kApiKey;
  o.cors_origins = {"http://ok.example"};
  o.max_body_bytes = 16 << 10;
  return o;
}

struct World {
  ServerOptions options = fuzz_options();
  std::shared_ptr<Backend> backend;
  std::unique_ptr<ServerState> state;  // step 1's routes
  std::unique_ptr<Server> server;      // step 2
};

World& world() {
  static World* w = [] {
    auto* w = new World;  // never destroyed: the server's threads run until the process exits
    spdlog::set_default_logger(std::make_shared<spdlog::logger>("fuzz", std::make_shared<AbortOnError>()));
    spdlog::set_level(spdlog::level::warn);
    const auto file = troupe::fuzz::model_file();
    const Tokenizer& tok = troupe::fuzz::model_tokenizer();
    auto backend = std::make_shared<Backend>(tok);
    backend->model_id = "fuzz-model";
    backend->created = 1700000000;
    backend->n_ctx = 512;
    backend->engine = std::make_unique<FakeEngine>(backend->tokenizer);
    auto tmpl = cli::load_chat_template(*file);
    require(tmpl.has_value(), "the model has no usable chat template");
    backend->encode_chat = [tmpl = *tmpl, tok](const std::vector<ChatMessage>& messages) {
      return cli::encode_chat(tmpl, tok, messages);
    };
    backend->encode_text = [tok](const std::string& text) { return cli::encode_text(tok, text); };
    w->backend = backend;
    w->state = std::make_unique<ServerState>(w->options);
    w->state->backend.store(backend.get());
    auto server = Server::start(w->options);
    require(server.has_value(), "the server does not start");
    w->server = std::move(*server);
    w->server->set_backend(backend);
    return w;
  }();
  return *w;
}

// ---- checks on an answer ----

void check_error_body(const json& j, int status) {
  require(j.is_object() && j.contains("error") && j["error"].is_object(), "an error body without \"error\"");
  const json& e = j["error"];
  require(e.contains("message") && e["message"].is_string() && !e["message"].get<std::string>().empty(),
          "an error without a message (status " + std::to_string(status) + ")");
  require(e.contains("type") && e["type"].is_string(), "an error without a type");
  require(e.contains("param") && (e["param"].is_null() || e["param"].is_string()), "an error's param");
  require(e.contains("code") && (e["code"].is_null() || e["code"].is_string()), "an error's code");
}

// A body with its status and content type, as the session sends it (head: a HEAD request, no body).
void check_body(int status, const std::string& content_type, const std::string& body, bool head) {
  require(status >= 200 && status <= 599, "status " + std::to_string(status));
  if (head) return;
  if (content_type.rfind("application/json", 0) == 0) {
    const json j = json::parse(body, nullptr, /*allow_exceptions=*/false);
    require(!j.is_discarded(), "a JSON answer that is not JSON (status " + std::to_string(status) + ")");
    if (status >= 400) {
      check_error_body(j, status);
      require(body.find(kApiKey) == std::string::npos, "an error body carries the API key");
    }
  } else if (content_type == "text/event-stream") {
    // data: {...}\n\n events, ": ping" comments; the last event is [DONE] or an error
    size_t at = 0;
    std::string last;
    while (at < body.size()) {
      const size_t end = body.find("\n\n", at);
      require(end != std::string::npos, "an SSE event without its blank line");
      const std::string event = body.substr(at, end - at);
      at = end + 2;
      if (event.rfind(": ping", 0) == 0) continue;
      require(event.rfind("data: ", 0) == 0, "an SSE event that is not data");
      last = event.substr(6);
      if (last == "[DONE]") continue;
      const json j = json::parse(last, nullptr, false);
      require(!j.is_discarded() && j.is_object(), "an SSE data line that is not a JSON object");
      if (j.contains("error")) check_error_body(j, 0);
    }
    require(last == "[DONE]" || last.find("\"error\"") != std::string::npos, "a stream that does not end");
  }
}

// ---- step 1: the session's reading and dispatch, without sockets ----

// The input as a socket gives it: up to 16 KiB per read, then end of file.
class InputStream {
 public:
  using executor_type = net::any_io_executor;
  explicit InputStream(std::string_view data) : data_(data) {}
  bool exhausted() const { return data_.empty(); }

  template <class MutableBuffers>
  size_t read_some(const MutableBuffers& buffers, beast::error_code& ec) {
    ec = {};
    if (data_.empty()) {
      ec = net::error::eof;
      return 0;
    }
    const size_t n = net::buffer_copy(buffers, net::buffer(data_.data(), std::min(data_.size(), kReadChunk)));
    data_.remove_prefix(n);
    return n;
  }
  template <class MutableBuffers>
  size_t read_some(const MutableBuffers& buffers) {
    beast::error_code ec;
    const size_t n = read_some(buffers, ec);
    if (ec) throw beast::system_error(ec);
    return n;
  }

 private:
  std::string_view data_;
};

struct Owed {
  size_t answers_before_eof = 0;  // answers owed while the client still sends
  size_t answers = 0;             // in all, once the client half-closed
  std::vector<bool> head;         // by answer: to a HEAD request (no body)
};

HttpResponse run_action(Action action, const ServerOptions& options, const Backend& backend, bool& stream) {
  stream = false;
  if (action.work) return action.work();
  if (!action.generation) return action.response;
  Generation& gen = *action.generation;
  stream = gen.stream();
  if (auto error = gen.prepare()) {
    require(error->status == 400, "a prepare error that is not a 400");
    return error_response(*error);
  }
  require(!gen.requests().empty() && static_cast<int>(gen.requests().size()) == gen.n_choices(),
          "one engine request per choice");
  for (const Request& r : gen.requests()) {
    require(!r.prompt.empty() && r.params.max_tokens >= 1, "an empty prompt or no room to generate");
    require(static_cast<int64_t>(r.prompt.size()) + r.params.max_tokens <= backend.n_ctx, "past the context");
    require(!stream || r.credit == options.stream_credit, "a stream without credit");
  }
  HttpResponse ok;
  ok.body = "{}";
  return ok;
}

Owed read_as_the_session_does(std::string_view data, World& w) {
  Owed expected;
  InputStream in(data);
  beast::flat_buffer buffer;
  for (;;) {
    if (buffer.size() == 0 && in.exhausted()) break;  // the client closed between requests: no answer
    bhttp::request_parser<bhttp::string_body> parser;
    parser.header_limit(static_cast<std::uint32_t>(w.options.max_header_bytes));
    parser.body_limit(w.options.max_body_bytes);
    beast::error_code ec;
    bhttp::read_header(in, buffer, parser, ec);
    if (!ec && !parser.is_done()) bhttp::read(in, buffer, parser, ec);
    if (ec == bhttp::error::end_of_stream || ec == net::error::eof) break;
    if (ec) {  // 400, 413 or 431, then the connection closes
      if (ec != bhttp::error::partial_message) ++expected.answers_before_eof;
      ++expected.answers;
      expected.head.push_back(false);
      break;
    }
    auto msg = parser.release();
    HttpRequest req{std::string(msg.method_string()), std::string(msg.target()), std::move(msg.body()),
                    std::string(msg[bhttp::field::authorization]), std::string(msg[bhttp::field::origin]),
                    std::string(msg[bhttp::field::access_control_request_headers])};
    Action action = route(req, *w.state);
    const bool generation = action.generation != nullptr;
    bool stream = false;
    const HttpResponse r = run_action(std::move(action), w.options, *w.backend, stream);
    check_body(r.status, r.content_type, r.body, false);
    ++expected.answers_before_eof;
    ++expected.answers;
    expected.head.push_back(req.method == "HEAD");
    const bool http10 = msg.version() < 11;
    if (!msg.keep_alive() || (generation && stream && http10)) break;
  }
  return expected;
}

// ---- step 2: the real server ----

// Reads the answers off the wire, one response parser each; 1xx answers (100 Continue) are skipped.
class Answers {
 public:
  explicit Answers(const std::vector<bool>& head) : head_(head) { next(); }

  size_t finals() const { return finals_; }

  void feed(const char* data, size_t n) {
    pending_.append(data, n);
    while (!pending_.empty()) {
      beast::error_code ec;
      const size_t used = parser_->put(net::buffer(pending_), ec);
      pending_.erase(0, used);
      if (ec == bhttp::error::need_more) break;
      require(!ec, "a malformed answer: " + ec.message());
      if (parser_->is_done()) {
        done();
      } else if (used == 0) {
        break;
      }
    }
  }

  void eof() {
    if (parser_->got_some()) {
      beast::error_code ec;
      parser_->put_eof(ec);  // a body that ends at the close (an HTTP/1.0 stream)
      require(!ec && parser_->is_done(), "an answer cut short: " + ec.message());
      done();
    }
    require(pending_.empty(), "bytes after the last answer");
  }

 private:
  void next() {
    parser_.emplace();
    parser_->header_limit(1 << 20);
    parser_->body_limit(std::numeric_limits<std::uint64_t>::max());  // not boost::none: Beast 1.74 compares it as 0
    parser_->skip(finals_ < head_.size() && head_[finals_]);
  }

  void done() {
    const auto& res = parser_->get();
    const int status = static_cast<int>(res.result_int());
    require(res.version() == 11, "an answer that is not HTTP/1.1");
    if (status >= 100 && status < 200) {
      require(status == 100, "an unexpected 1xx answer");
    } else {
      require(finals_ < head_.size(), "more answers than requests");
      check_body(status, std::string(res[bhttp::field::content_type]), res.body(), head_[finals_]);
      ++finals_;
    }
    next();
  }

  const std::vector<bool>& head_;
  std::optional<bhttp::response_parser<bhttp::string_body>> parser_;
  std::string pending_;
  size_t finals_ = 0;
};

void talk_to_the_server(std::string_view data, const Owed& expected, World& w) {
  const int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  require(fd >= 0, std::string("socket: ") + std::strerror(errno));
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(w.server->port()));
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) {
    // interrupted (libFuzzer's alarm signal): the connection goes on being made
    require(errno == EINTR, std::string("connect: ") + std::strerror(errno));
    pollfd p{fd, POLLOUT, 0};
    while (poll(&p, 1, 5000) < 0 && errno == EINTR) {
    }
    int err = 0;
    socklen_t len = sizeof err;
    getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len);
    require(err == 0 && (p.revents & POLLOUT), std::string("connect: ") + std::strerror(err));
  }

  Answers answers(expected.head);
  const auto deadline = std::chrono::steady_clock::now() + kDeadline;
  size_t sent = 0;
  bool half_closed = false;
  char buf[1 << 16];
  for (;;) {
    if (!half_closed && sent == data.size() && answers.finals() >= expected.answers_before_eof) {
      shutdown(fd, SHUT_WR);
      half_closed = true;
    }
    pollfd p{fd, static_cast<short>(POLLIN | (sent < data.size() ? POLLOUT : 0)), 0};
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
    require(left.count() > 0, "the server did not finish within " + std::to_string(kDeadline.count()) + " s: " +
                                  std::to_string(answers.finals()) + " of " + std::to_string(expected.answers) +
                                  " answers, " + std::to_string(sent) + " of " + std::to_string(data.size()) +
                                  " bytes sent");
    if (poll(&p, 1, static_cast<int>(left.count())) <= 0) continue;
    if (p.revents & POLLOUT) {
      const ssize_t n = send(fd, data.data() + sent, data.size() - sent, MSG_NOSIGNAL);
      if (n > 0) sent += static_cast<size_t>(n);
      else if (n < 0 && errno != EAGAIN && errno != EINTR) sent = data.size();  // it closed: nothing more to send
    }
    if (p.revents & (POLLIN | POLLHUP | POLLERR)) {
      const ssize_t n = recv(fd, buf, sizeof buf, 0);
      if (n > 0) {
        answers.feed(buf, static_cast<size_t>(n));
      } else if (n == 0 || (errno != EAGAIN && errno != EINTR)) {
        break;  // closed (or reset)
      }
    }
  }
  close(fd);
  answers.eof();
  require(answers.finals() == expected.answers, "the server gave " + std::to_string(answers.finals()) +
                                                    " answers to " + std::to_string(expected.answers) + " requests");
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  world();
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  World& w = world();
  const std::string_view input(reinterpret_cast<const char*>(data), size);
  const Owed expected = read_as_the_session_does(input, w);
  talk_to_the_server(input, expected, w);
  return 0;
}
