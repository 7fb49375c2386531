// session.cpp: one client connection (see session.hpp). In the order a request goes through it:
//   ChoiceSink               engine thread -> Gate -> post onto the session's strand (and the latency histograms)
//   read_request ... dispatch
//   respond / run_work       plain answers
//   start_generation ... finish_generation / fail_generation
//   queue_* / write_next     one write at a time; acks for the tokens a write carried
//   watch / client_gone / close_after_drain
#include "session.hpp"

#include <boost/asio/dispatch.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/write.hpp>
#include <spdlog/spdlog.h>

#include <chrono>
#include <cstdio>

namespace troupe::http {

namespace {

namespace bhttp = beast::http;
using Clock = std::chrono::steady_clock;

constexpr size_t kReadChunk = 16 << 10;
constexpr auto kDrainTime = std::chrono::seconds(2);  // reading (and dropping) what a refused client still sends
constexpr size_t kDrainBytes = 64 << 20;

double seconds(Clock::duration d) { return std::chrono::duration<double>(d).count(); }

ApiError shutting_down() {
  ApiError e;
  e.status = 503;
  e.type = "service_unavailable";
  e.message = "the server is shutting down";
  return e;
}

ApiError refused(int status, std::string message, std::string code) {
  ApiError e;
  e.status = status;
  e.message = std::move(message);
  e.code = std::move(code);
  return e;
}

// Receives one engine request's events on engine threads; never blocks beyond the gate's shared lock.
class ChoiceSink final : public Sink {
 public:
  ChoiceSink(std::weak_ptr<Session> session, std::shared_ptr<Gate> gate, std::shared_ptr<Metrics> metrics,
             uint64_t serial, int choice)
      : session_(std::move(session)), gate_(std::move(gate)), metrics_(std::move(metrics)), serial_(serial),
        choice_(choice), t_submit_(Clock::now()) {}

  void on_token(const TokenEvent& event) override {
    const auto now = Clock::now();
    EngineEvent e = make(EngineEvent::Kind::token);
    e.token = event;
    gate_->run([&] {
      if (first_) metrics_->ttft.observe(seconds(now - t_submit_));
      else metrics_->itl.observe(seconds(now - t_last_));
      first_ = false;
      t_last_ = now;
      deliver(std::move(e));
    });
  }

  void on_finished(const FinishEvent& event) override {
    const auto now = Clock::now();
    EngineEvent e = make(EngineEvent::Kind::finished);
    e.finish = event;
    gate_->run([&] {
      if (event.reason != FinishReason::cancelled) {
        metrics_->e2e.observe(seconds(now - t_submit_));
        metrics_->queue.observe(event.queue_seconds);
      }
      deliver(std::move(e));
    });
  }

  void on_error(const Error& error) override {
    EngineEvent e = make(EngineEvent::Kind::error);
    e.error = error;
    gate_->run([&] { deliver(std::move(e)); });
  }

 private:
  EngineEvent make(EngineEvent::Kind kind) const {
    EngineEvent e;
    e.kind = kind;
    e.serial = serial_;
    e.choice = choice_;
    return e;
  }
  // Inside the gate: the session (if still alive) and its io context are.
  void deliver(EngineEvent e) {
    if (auto s = session_.lock()) s->post_event(std::move(e));
  }

  std::weak_ptr<Session> session_;
  std::shared_ptr<Gate> gate_;
  std::shared_ptr<Metrics> metrics_;
  uint64_t serial_;
  int choice_;
  Clock::time_point t_submit_, t_last_;
  bool first_ = true;
};

std::string chunk(const std::string& bytes) {
  char size[24];
  std::snprintf(size, sizeof size, "%zx\r\n", bytes.size());
  return size + bytes + "\r\n";
}

}  // namespace

Session::Session(tcp::socket socket, SessionContext& ctx)
    : stream_(std::move(socket)), ctx_(ctx), ping_timer_(stream_.get_executor()),
      read_deadline_(stream_.get_executor()) {
  std::lock_guard lock(ctx_.mutex);
  ++ctx_.n_live;
}

Session::~Session() {
  cancel_engine_requests();
  {
    std::lock_guard lock(ctx_.mutex);
    --ctx_.n_live;
  }
  ctx_.drained.notify_all();
}

void Session::start() {
  net::dispatch(stream_.get_executor(), [self = shared_from_this()] {
    if (self->ctx_.state.stopping) return self->client_gone();
    self->read_request();
  });
}

void Session::shutdown() {
  net::post(stream_.get_executor(), [self = shared_from_this()] {
    self->stopping_ = true;
    if (self->gone_) return;
    if (self->phase_ == Phase::reading) return self->client_gone();  // idle or mid-request: just close
    self->close_after_ = true;
    if (self->gen_ && self->submitted_ && !self->gen_->finished()) self->fail_generation(shutting_down());
    // not yet submitted: on_submitted answers 503; a plain answer in progress is written, then the socket closes
  });
}

void Session::post_event(EngineEvent e) {
  net::post(stream_.get_executor(), [self = shared_from_this(), e = std::move(e)]() mutable { self->on_event(e); });
}

// ---- reading a request ----

void Session::read_request() {
  phase_ = Phase::reading;
  if (stopping_) return client_gone();
  if (buffer_.size() > 0) return read_header();  // a pipelined request is already here
  if (peer_done_) return client_gone();          // and nothing more will come
  stream_.expires_after(std::chrono::seconds(ctx_.state.options.idle_timeout_s));
  stream_.async_read_some(buffer_.prepare(kReadChunk),
                          beast::bind_front_handler(&Session::on_first_bytes, shared_from_this()));
}

void Session::on_first_bytes(beast::error_code ec, size_t n) {
  if (ec) return client_gone();  // idle timeout, or the client closed its keep-alive connection
  buffer_.commit(n);
  read_header();
}

void Session::read_header() {
  const ServerOptions& o = ctx_.state.options;
  parser_.emplace();
  parser_->header_limit(static_cast<std::uint32_t>(std::min<size_t>(o.max_header_bytes, UINT32_MAX)));
  parser_->body_limit(o.max_body_bytes);
  if (peer_done_) return parse_buffered();
  start_read_deadline();
  bhttp::async_read_header(stream_, buffer_, *parser_, beast::bind_front_handler(&Session::on_header, shared_from_this()));
}

// --read-timeout for the request's header and body together, from its first byte. Not the stream's own timeout: that
// one closes the socket, and a request that is late gets a 408 first. When it expires the read is cancelled, and
// its handler (on_read_error) answers.
void Session::start_read_deadline() {
  stream_.expires_never();
  read_timed_out_ = false;
  read_deadline_.expires_after(std::chrono::seconds(ctx_.state.options.read_timeout_s));
  read_deadline_.async_wait([self = shared_from_this(), serial = ++read_serial_](beast::error_code ec) {
    if (ec || serial != self->read_serial_ || self->phase_ != Phase::reading || self->gone_) return;
    self->read_timed_out_ = true;
    beast::error_code ignored;
    self->stream_.socket().cancel(ignored);
  });
}

void Session::stop_read_deadline() {
  ++read_serial_;  // a deadline handler already queued sees it is stale
  read_deadline_.cancel();
}

// The client has sent its last byte: the request is parsed from what is buffered, with the end of stream after it.
// (No read may follow a read that returned the end of stream: Asio's reactor has seen the socket's last readiness
// edge, and such a read would wait until a timeout.)
void Session::parse_buffered() {
  beast::error_code ec;
  while (!parser_->is_done()) {
    const size_t n = parser_->put(buffer_.data(), ec);
    buffer_.consume(n);
    if (ec == bhttp::error::need_more || (!ec && n == 0)) {
      ec = {};
      parser_->put_eof(ec);  // complete, or cut short (400)
      break;
    }
    if (ec) break;
  }
  if (ec) return on_read_error(ec);
  dispatch();
}

void Session::on_header(beast::error_code ec, size_t) {
  if (ec) return on_read_error(ec);
  if (beast::iequals(parser_->get()[bhttp::field::expect], "100-continue") && !parser_->is_done()) {
    static const std::string kContinue = "HTTP/1.1 100 Continue\r\n\r\n";
    net::async_write(stream_, net::buffer(kContinue), [self = shared_from_this()](beast::error_code e, size_t) {
      if (e) return self->client_gone();
      self->read_body();
    });
    return;
  }
  read_body();
}

void Session::read_body() {
  if (parser_->is_done()) return dispatch();
  // the deadline fired after the header's read had completed, or during a 100 Continue
  if (read_timed_out_) return on_read_error(net::error::operation_aborted);
  bhttp::async_read(stream_, buffer_, *parser_, beast::bind_front_handler(&Session::on_body, shared_from_this()));
}

void Session::on_body(beast::error_code ec, size_t) {
  if (ec) return on_read_error(ec);
  dispatch();
}

void Session::on_read_error(beast::error_code ec) {
  if (ec == bhttp::error::partial_message || ec == bhttp::error::end_of_stream || ec == net::error::eof) {
    peer_done_ = true;
  }
  const bool timed_out = read_timed_out_ && ec == net::error::operation_aborted;
  stop_read_deadline();
  // Gone, or cancelled by a shutdown: close without an answer.
  if (gone_ || (!timed_out && (ec == bhttp::error::end_of_stream || ec == net::error::eof ||
                               ec == beast::error::timeout || ec == net::error::operation_aborted ||
                               ec == net::error::connection_reset))) {
    return client_gone();
  }
  const ServerOptions& o = ctx_.state.options;
  ApiError e;
  if (timed_out) {  // too slow (slowloris): 408, then the connection closes
    e = refused(408, "the request's headers and body did not arrive within " + std::to_string(o.read_timeout_s) +
                         " s", "request_timeout");
  } else if (ec == bhttp::error::header_limit) {
    e = refused(431, "the request line and headers are larger than " + std::to_string(o.max_header_bytes) + " bytes",
                "headers_too_large");
  } else if (ec == bhttp::error::body_limit) {
    e = refused(413, "the request body is larger than " + std::to_string(o.max_body_bytes) + " bytes",
                "body_too_large");
  } else {
    e = refused(400, "malformed HTTP request (" + ec.message() + ")", "bad_request");
  }
  phase_ = Phase::handling;
  stream_.expires_never();
  method_.clear();
  path_.clear();
  t_request_ = Clock::now();
  keep_alive_ = false;
  close_after_ = true;
  parser_.reset();
  respond(error_response(e));
}

void Session::dispatch() {
  stop_read_deadline();
  phase_ = Phase::handling;
  stream_.expires_never();
  auto msg = parser_->release();
  parser_.reset();
  keep_alive_ = msg.keep_alive();
  http10_ = msg.version() < 11;
  close_after_ = !keep_alive_ || stopping_;
  HttpRequest req{std::string(msg.method_string()), std::string(msg.target()), std::move(msg.body()),
                  std::string(msg[bhttp::field::authorization]), std::string(msg[bhttp::field::origin]),
                  std::string(msg[bhttp::field::access_control_request_headers])};
  origin_ = req.origin;
  method_ = req.method;
  path_ = route_path(req.target).substr(0, 100);  // logged: never the body or the query
  t_request_ = std::chrono::steady_clock::now();
  Action action = route(req, ctx_.state);
  if (action.generation) return start_generation(std::move(action.generation));
  if (action.work) return run_work(std::move(action.work));
  respond(std::move(action.response));
}

// ---- plain answers ----

std::string Session::head(int status, const std::string& content_type, size_t content_length,
                          const std::vector<std::pair<std::string, std::string>>& extra) {
  ctx_.state.metrics->count_response(status);
  if (ctx_.state.options.log_requests) {
    spdlog::info("{} {} {} ({:.1f} ms to the headers)", method_.empty() ? "-" : method_, path_.empty() ? "-" : path_,
                 status, seconds(Clock::now() - t_request_) * 1e3);
  }
  std::string h = "HTTP/1.1 " + std::to_string(status) + " " +
                  std::string(bhttp::obsolete_reason(bhttp::int_to_status(status))) + "\r\nServer: troupe\r\n";
  if (!content_type.empty()) h += "Content-Type: " + content_type + "\r\n";
  if (chunked_) h += "Transfer-Encoding: chunked\r\n";
  else if (content_length != std::string::npos && status != 204) h += "Content-Length: " + std::to_string(content_length) + "\r\n";
  for (const auto& [name, value] : extra) h += name + ": " + value + "\r\n";
  for (const auto& [name, value] : cors_headers(origin_, ctx_.state.options)) h += name + ": " + value + "\r\n";
  if (close_after_) h += "Connection: close\r\n";
  else if (http10_) h += "Connection: keep-alive\r\n";
  return h + "\r\n";
}

void Session::respond(HttpResponse r) {
  if (!keep_alive_ || stopping_) close_after_ = true;
  chunked_ = false;
  // HEAD: the GET's status and headers (its Content-Length too), never a body
  queue_raw(head(r.status, r.content_type, r.body.size(), r.headers) + (method_ == "HEAD" ? std::string() : r.body));
  queue_last();
}

void Session::run_work(std::function<HttpResponse()> work) {
  net::post(ctx_.pool, [self = shared_from_this(), work = std::move(work)] {
    HttpResponse r = work();
    self->ctx_.gate->run([&] {
      net::post(self->stream_.get_executor(), [self, r = std::move(r)]() mutable {
        if (!self->gone_) self->respond(std::move(r));
      });
    });
  });
}

// ---- generations ----

void Session::start_generation(std::shared_ptr<Generation> generation) {
  gen_ = std::move(generation);
  ++serial_;
  submitted_ = streaming_ = first_token_ = false;
  const int n = gen_->n_choices();
  ids_.assign(n, 0);
  ended_.assign(n, false);
  unacked_.assign(n, 0);
  pending_tokens_.assign(n, 0);
  out_tokens_.assign(n, 0);
  chunked_ = gen_->stream() && !http10_;
  if (gen_->stream() && http10_) close_after_ = true;  // no chunked encoding: the end of the stream is the close
  backend_ = ctx_.state.backend.load();
  // Off the io threads: tokenizing can take a while, and submit waits for the scheduler's answer.
  net::post(ctx_.pool, [self = shared_from_this(), gen = gen_, serial = serial_, backend = backend_] {
    SessionContext& ctx = self->ctx_;
    Engine& engine = *backend->engine;
    std::optional<ApiError> error = ctx.state.stopping ? std::optional<ApiError>(shutting_down()) : gen->prepare();
    std::vector<RequestId> ids;
    for (int i = 0; !error && i < gen->n_choices(); ++i) {
      auto sink = std::make_shared<ChoiceSink>(self, ctx.gate, ctx.state.metrics, serial, i);
      auto id = engine.submit(std::move(gen->requests()[i]), std::move(sink));
      if (!id) error = api_error(id.error());
      else ids.push_back(*id);
    }
    if (error) {
      for (RequestId id : ids) engine.cancel(id);
      ids.clear();
    }
    const bool posted = ctx.gate->run([&] {
      net::post(self->stream_.get_executor(), [self, serial, ids, error]() mutable {
        self->on_submitted(serial, std::move(ids), std::move(error));
      });
    });
    if (!posted) {
      for (RequestId id : ids) engine.cancel(id);
    }
  });
}

void Session::on_submitted(uint64_t serial, std::vector<RequestId> ids, std::optional<ApiError> error) {
  if (serial != serial_ || !gen_ || gone_) {
    for (RequestId id : ids) backend_->engine->cancel(id);
    return;
  }
  if (!error && stopping_) {
    for (RequestId id : ids) backend_->engine->cancel(id);
    error = shutting_down();
  }
  if (error) {
    gen_.reset();
    pending_.clear();
    early_.clear();
    respond(error_response(*error));
    return;
  }
  submitted_ = true;
  ids_ = std::move(ids);
  for (size_t c = 0; c < ids_.size(); ++c) {
    if (unacked_[c] > 0) backend_->engine->ack(ids_[c], std::exchange(unacked_[c], 0));
  }
  watch();
  if (gen_->stream()) {
    streaming_ = true;
    const std::string start = gen_->stream_start();
    queue_raw(head(200, "text/event-stream", std::string::npos,
                   {{"Cache-Control", "no-cache"}, {"X-Accel-Buffering", "no"}}));
    if (!start.empty()) queue_body(start);
    ping();
  }
  for (EngineEvent& e : std::exchange(early_, {})) on_event(e);
}

void Session::on_event(EngineEvent& e) {
  if (e.serial != serial_ || !gen_ || gone_ || ended_[e.choice]) return;
  if (!submitted_) {  // events can overtake the submit's answer: replayed by on_submitted
    early_.push_back(std::move(e));
    return;
  }
  const int c = e.choice;
  switch (e.kind) {
    case EngineEvent::Kind::token: {
      first_token_ = true;
      const std::string bytes = gen_->on_token(c, e.token);
      if (!gen_->stream()) return;  // gathered; the request has all the credit it needs
      if (bytes.empty()) return ack(c, 1);
      pending_tokens_[c] += 1;
      queue_body(bytes);
      return;
    }
    case EngineEvent::Kind::finished: {
      ended_[c] = true;
      if (e.finish.reason == FinishReason::cancelled) return fail_generation(stopping_ ? shutting_down() : api_error({ErrorKind::cancelled, ""}));
      const std::string bytes = gen_->on_finished(c, e.finish);
      if (!bytes.empty()) queue_body(bytes);
      if (gen_->finished()) finish_generation();
      return;
    }
    case EngineEvent::Kind::error:
      ended_[c] = true;
      if (e.error.kind == ErrorKind::unavailable) ctx_.state.failed_requests.fetch_add(1);
      return fail_generation(api_error(e.error));
  }
}

void Session::finish_generation() {
  ping_timer_.cancel();
  if (gen_->stream()) {
    queue_body(gen_->stream_end());
    queue_last();
    return;
  }
  HttpResponse r;
  r.body = gen_->response_body();
  gen_.reset();
  respond(std::move(r));
}

// Ends the generation with an error: the other choices are cancelled; a stream gets an error event and closes.
void Session::fail_generation(const ApiError& error) {
  cancel_engine_requests();
  ping_timer_.cancel();
  gen_.reset();
  if (streaming_) {
    close_after_ = true;
    queue_body(Generation::sse(format_error(error)));
    queue_last();
    return;
  }
  pending_.clear();
  respond(error_response(error));
}

void Session::cancel_engine_requests() {
  for (size_t c = 0; c < ids_.size(); ++c) {
    if (ids_[c] != 0 && !ended_[c]) backend_->engine->cancel(ids_[c]);
    ended_[c] = true;
  }
}

void Session::ack(int choice, int n_tokens) {
  if (ended_.empty() || ended_[choice]) return;
  if (ids_[choice] == 0) {
    unacked_[choice] += n_tokens;
    return;
  }
  backend_->engine->ack(ids_[choice], n_tokens);
}

void Session::ping() {
  ping_timer_.expires_after(std::chrono::seconds(1));
  ping_timer_.async_wait([self = shared_from_this(), serial = serial_](beast::error_code ec) {
    if (ec || serial != self->serial_ || !self->gen_ || self->first_token_ || self->gone_) return;
    self->queue_body(": ping\n\n");
    self->ping();
  });
}

// ---- writing ----

void Session::queue_raw(const std::string& bytes) {
  pending_ += bytes;
  write_next();
}

void Session::queue_body(const std::string& bytes) {
  pending_ += chunked_ ? chunk(bytes) : bytes;
  write_next();
}

void Session::queue_last() {
  if (chunked_) pending_ += "0\r\n\r\n";
  last_queued_ = true;
  write_next();
}

void Session::write_next() {
  if (writing_ || pending_.empty() || gone_) return;
  if (gen_ && !submitted_) return;  // the stream's headers go first
  out_.swap(pending_);
  pending_.clear();
  out_tokens_.swap(pending_tokens_);
  pending_tokens_.assign(out_tokens_.size(), 0);
  writing_ = true;
  // A client that takes nothing for the idle timeout is gone (with credit, the engine pauses its requests meanwhile).
  stream_.expires_after(std::chrono::seconds(ctx_.state.options.idle_timeout_s));
  net::async_write(stream_, net::buffer(out_), beast::bind_front_handler(&Session::on_write, shared_from_this()));
}

void Session::on_write(beast::error_code ec, size_t) {
  writing_ = false;
  if (ec) return client_gone();
  for (size_t c = 0; c < out_tokens_.size(); ++c) {
    if (out_tokens_[c] > 0) ack(static_cast<int>(c), std::exchange(out_tokens_[c], 0));
  }
  out_.clear();
  if (!pending_.empty()) return write_next();
  if (last_queued_) exchange_done();
}

void Session::exchange_done() {
  last_queued_ = chunked_ = streaming_ = submitted_ = false;
  gen_.reset();
  ids_.clear();
  ended_.clear();
  if (close_after_ || stopping_) return close_after_drain();
  phase_ = Phase::reading;
  if (watching_) {  // the watch read is cancelled; on_watch reads the next request
    after_watch_ = AfterWatch::read;
    beast::error_code ec;
    stream_.socket().cancel(ec);
    return;
  }
  read_request();
}

// ---- disconnects and closing ----

void Session::watch() {
  const ServerOptions& o = ctx_.state.options;
  if (watching_ || gone_ || peer_done_ || buffer_.size() >= o.max_header_bytes + o.max_body_bytes) return;
  watching_ = true;
  stream_.expires_never();  // the read only (a write in progress keeps its deadline)
  stream_.async_read_some(buffer_.prepare(kReadChunk), beast::bind_front_handler(&Session::on_watch, shared_from_this()));
}

void Session::on_watch(beast::error_code ec, size_t n) {
  watching_ = false;
  if (ec == net::error::eof) peer_done_ = true;
  buffer_.commit(n);  // a pipelined request, kept for later
  if (after_watch_ != AfterWatch::none) {
    const AfterWatch next = std::exchange(after_watch_, AfterWatch::none);
    if (gone_) return;
    if (next == AfterWatch::drain) return peer_done_ ? client_gone() : start_drain();
    if (ec && ec != net::error::operation_aborted && ec != net::error::eof) return client_gone();
    return read_request();  // the client's end of stream may have beaten the cancel: what it sent is answered
  }
  if (gone_ || phase_ != Phase::handling) return;
  // A half-close once the answer is whole (queued or being written): exchange_done answers what else was sent.
  if (ec == net::error::eof && (!gen_ || gen_->finished())) return;
  if (ec) return client_gone();  // EOF or reset: the client left
  if (gen_) watch();
}

void Session::client_gone() {
  if (gone_) return;
  gone_ = true;
  phase_ = Phase::closing;
  cancel_engine_requests();
  ping_timer_.cancel();
  read_deadline_.cancel();
  gen_.reset();
  early_.clear();
  stream_.close();
}

// Half-closes, then reads (and drops) what the client still sends for a moment, so that it reads the answer
// rather than a connection reset.
void Session::close_after_drain() {
  phase_ = Phase::closing;
  if (peer_done_) return client_gone();  // it sends nothing more: nothing to drain
  beast::error_code ec;
  stream_.socket().shutdown(tcp::socket::shutdown_send, ec);
  if (ec) return client_gone();
  if (watching_) {
    after_watch_ = AfterWatch::drain;
    stream_.socket().cancel(ec);
    return;
  }
  start_drain();
}

void Session::start_drain() {
  stream_.expires_after(kDrainTime);
  drain();
}

void Session::drain() {
  stream_.async_read_some(net::buffer(drain_buffer_), [self = shared_from_this()](beast::error_code ec, size_t n) {
    self->drained_ += n;
    if (ec || self->drained_ > kDrainBytes) return self->client_gone();
    self->drain();
  });
}

}  // namespace troupe::http
