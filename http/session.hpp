// session.hpp: one client connection (Beast). Include only from http/*.cpp: it pulls in Beast.
//
// A session reads one request at a time (pipelined requests wait in the read buffer and are answered in order),
// answers it, then reads the next. Every handler runs on the connection's strand and holds shared_from_this().
//   read_request   idle timeout until the first byte (then a silent close), then --read-timeout for header and
//                  body together (then 408); header and body limits (431, 413); malformed requests get 400; the
//                  connection then closes after a short drain (so the client reads the answer instead of a reset)
//                  A HEAD request is answered as its GET without the body.
//   dispatch       route() (routes.hpp): an answer now, work on the blocking pool, or a Generation
//   generation     prepared and submitted on the blocking pool (engine.submit waits for the scheduler), then
//                  engine events arrive through ChoiceSink -> Gate -> post onto this strand; a stream is written one
//                  write at a time from a queue, and each token is acknowledged to the engine (credit) once its
//                  write completed; a stream sends ": ping" every second until its first token
//   watch          while a generation runs one async_read_some stays outstanding: EOF or an error means the client
//                  left, and its engine requests are cancelled (as they are by the destructor)
//   end of stream  once a read returned it (a half-close) nothing reads again: what is buffered is still answered,
//                  parsed as if the stream ended after it, then the connection closes
//   shutdown       from Server::stop: in-flight generations end with 503 / an error event, idle connections close
#pragma once

#include <boost/asio/steady_timer.hpp>
#include <boost/asio/thread_pool.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>

#include <chrono>
#include <condition_variable>
#include <list>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "gate.hpp"
#include "routes.hpp"

namespace troupe::http {

namespace beast = boost::beast;
namespace net = boost::asio;
using tcp = net::ip::tcp;

class Session;

// What the server gives every session. Owned by the server, outlives every session.
struct SessionContext {
  SessionContext(ServerState& s, net::thread_pool& p, std::shared_ptr<Gate> g) : state(s), pool(p), gate(std::move(g)) {}

  ServerState& state;
  net::thread_pool& pool;             // blocking work: engine submit and stats, tokenizing
  std::shared_ptr<Gate> gate;         // engine threads -> Asio

  // Live sessions, for shutdown.
  std::mutex mutex;
  std::condition_variable drained;
  std::list<std::weak_ptr<Session>> sessions;
  int n_live = 0;
};

// An engine event for choice `choice` of generation `serial`, carried onto the strand.
struct EngineEvent {
  enum class Kind { token, finished, error } kind = Kind::token;
  uint64_t serial = 0;
  int choice = 0;
  TokenEvent token;
  FinishEvent finish;
  Error error;
};

class Session : public std::enable_shared_from_this<Session> {
 public:
  Session(tcp::socket socket, SessionContext& ctx);
  ~Session();

  void start();
  void shutdown();                  // any thread
  void post_event(EngineEvent e);   // engine threads, inside the gate

 private:
  enum class Phase { reading, handling, closing };
  enum class AfterWatch { none, read, drain };  // what to do once a cancelled watch read returns

  // reading
  void read_request();
  void on_first_bytes(beast::error_code ec, size_t n);
  void read_header();
  void parse_buffered();
  void on_header(beast::error_code ec, size_t n);
  void read_body();
  void on_body(beast::error_code ec, size_t n);
  void on_read_error(beast::error_code ec);
  void start_read_deadline();
  void stop_read_deadline();
  void dispatch();

  // plain answers
  void respond(HttpResponse response);
  void run_work(std::function<HttpResponse()> work);

  // generations
  void start_generation(std::shared_ptr<Generation> generation);
  void on_submitted(uint64_t serial, std::vector<RequestId> ids, std::optional<ApiError> error);
  void on_event(EngineEvent& e);
  void fail_generation(const ApiError& error);
  void finish_generation();
  void cancel_engine_requests();
  void ack(int choice, int n_tokens);
  void ping();

  // writing
  void queue_raw(const std::string& bytes);
  void queue_body(const std::string& bytes);  // chunk-framed when the response is chunked
  void queue_last();                          // the exchange's last bytes are queued
  void write_next();
  void on_write(beast::error_code ec, size_t n);
  void exchange_done();

  // disconnects and closing
  void watch();
  void on_watch(beast::error_code ec, size_t n);
  void client_gone();
  void close_after_drain();
  void start_drain();
  void drain();

  std::string head(int status, const std::string& content_type, size_t content_length,
                   const std::vector<std::pair<std::string, std::string>>& extra);

  beast::tcp_stream stream_;
  beast::flat_buffer buffer_;
  std::optional<beast::http::request_parser<beast::http::string_body>> parser_;
  SessionContext& ctx_;
  const Backend* backend_ = nullptr;  // set when a generation starts; the server keeps it alive
  net::steady_timer ping_timer_;
  net::steady_timer read_deadline_;  // --read-timeout of the request being read
  uint64_t read_serial_ = 0;         // which request the deadline is for
  bool read_timed_out_ = false;      // the deadline cancelled the read: answer 408
  Phase phase_ = Phase::reading;

  // the exchange in progress
  bool keep_alive_ = true;
  bool http10_ = false;
  std::string origin_;
  std::string method_, path_;                           // for the request log line
  std::chrono::steady_clock::time_point t_request_;
  bool close_after_ = false;   // close once this answer is written
  bool last_queued_ = false;   // the answer's last bytes are in pending_ / out_
  bool chunked_ = false;       // the answer's body is chunk-framed (a stream on HTTP/1.1)
  bool stopping_ = false;      // shutdown() was called
  bool gone_ = false;          // the client left or the socket is closed
  bool watching_ = false;      // a watch read is outstanding
  bool peer_done_ = false;     // a read returned the client's end of stream: it sends nothing more, and nothing reads
  AfterWatch after_watch_ = AfterWatch::none;
  bool writing_ = false;

  // the generation in progress
  std::shared_ptr<Generation> gen_;
  uint64_t serial_ = 0;
  bool submitted_ = false;
  bool streaming_ = false;          // SSE headers are queued
  bool first_token_ = false;
  std::vector<RequestId> ids_;      // by choice, once submitted
  std::vector<bool> ended_;         // by choice: finished or failed
  std::vector<int> unacked_;        // by choice: tokens taken before the id was known
  std::vector<EngineEvent> early_;  // events that arrived before the submit's answer

  std::string pending_;             // bytes waiting for the next write
  std::vector<int> pending_tokens_; // by choice: tokens whose bytes are in pending_
  std::string out_;                 // the write in progress
  std::vector<int> out_tokens_;
  char drain_buffer_[4096];
  size_t drained_ = 0;
};

}  // namespace troupe::http
