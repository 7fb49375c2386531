// server.cpp: the listener, the io threads, the blocking pool and the shutdown order (see server.hpp).
//
// Shutdown, in this order (STACK.md: a callback that outlives the io_context and touches a strand is a
// use-after-free):
//   1. stop accepting; every session is told: generations end (503 / error event, engine requests cancelled),
//      idle connections close
//   2. wait (up to kDrainWait) for the sessions to finish; engine events still flow meanwhile
//   3. close the gate: from now on no engine thread posts into Asio or touches the metrics
//   4. join the blocking pool (its tasks post through the gate, which drops them, and cancel what they submitted)
//   5. stop the io threads, destroy the io context (with it any session left, whose destructor cancels its engine
//      requests: the engine is still alive), then release the backend
#include "server.hpp"

#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/strand.hpp>
#include <boost/asio/thread_pool.hpp>
#include <spdlog/spdlog.h>

#include <future>
#include <mutex>
#include <optional>
#include <thread>

#include "session.hpp"

namespace troupe::http {

namespace {
constexpr auto kDrainWait = std::chrono::seconds(5);
constexpr int kBlockingThreads = 2;
constexpr int kSendBuffer = 256 << 10;
}  // namespace

struct Server::Impl {
  explicit Impl(const ServerOptions& options)
      : state(options), pool(kBlockingThreads), gate(std::make_shared<Gate>()), ctx(state, pool, gate),
        ioc(std::make_unique<net::io_context>(std::max(1, options.io_threads))),
        work(net::make_work_guard(*ioc)) {}

  void accept();
  void on_accept(beast::error_code ec, tcp::socket socket);
  void stop();

  ServerState state;
  net::thread_pool pool;
  std::shared_ptr<Gate> gate;
  SessionContext ctx;
  std::unique_ptr<net::io_context> ioc;
  std::optional<net::executor_work_guard<net::io_context::executor_type>> work;
  std::optional<tcp::acceptor> acceptor;
  std::optional<net::steady_timer> retry_timer;  // accept failed (out of file descriptors): try again shortly
  std::vector<std::thread> threads;
  std::mutex backend_mutex;  // set_backend (the loading thread) against stop
  std::shared_ptr<const Backend> backend;
  std::string host;
  int port = 0;
  bool stopped = false;
};

void Server::Impl::accept() {
  acceptor->async_accept(net::make_strand(*ioc), [this](beast::error_code ec, tcp::socket socket) {
    on_accept(ec, std::move(socket));
  });
}

void Server::Impl::on_accept(beast::error_code ec, tcp::socket socket) {
  if (ec == net::error::operation_aborted || !acceptor->is_open()) return;  // stopping
  if (ec) {
    spdlog::warn("accept: {}", ec.message());
    retry_timer->expires_after(std::chrono::milliseconds(50));
    retry_timer->async_wait([this](beast::error_code e) {
      if (!e && acceptor->is_open()) accept();
    });
    return;
  }
  beast::error_code ignored;
  socket.set_option(tcp::no_delay(true), ignored);  // SSE pieces go out as they come
  // A fixed kernel send buffer (no autotuning up to megabytes): a reader that stops reading blocks the writes soon,
  // and engine credit pauses its request, instead of the kernel queueing megabytes for it.
  socket.set_option(net::socket_base::send_buffer_size(kSendBuffer), ignored);
  auto session = std::make_shared<Session>(std::move(socket), ctx);
  {
    std::lock_guard lock(ctx.mutex);
    ctx.sessions.remove_if([](const std::weak_ptr<Session>& w) { return w.expired(); });
    ctx.sessions.push_back(session);
  }
  session->start();
  accept();
}

void Server::Impl::stop() {
  {
    std::lock_guard guard(backend_mutex);
    if (stopped) return;
    stopped = true;
  }
  state.stopping = true;
  // 1. stop accepting (on the acceptor's strand), tell every session
  std::promise<void> closed;
  net::post(acceptor->get_executor(), [this, &closed] {
    beast::error_code ec;
    acceptor->close(ec);
    retry_timer->cancel();
    closed.set_value();
  });
  closed.get_future().wait();
  std::vector<std::shared_ptr<Session>> live;
  {
    std::lock_guard lock(ctx.mutex);
    for (auto& w : ctx.sessions) {
      if (auto s = w.lock()) live.push_back(std::move(s));
    }
  }
  for (auto& s : live) s->shutdown();
  live.clear();  // outside the lock: the last reference runs ~Session, which takes the lock
  // 2. let them finish
  std::unique_lock lock(ctx.mutex);
  if (!ctx.drained.wait_for(lock, kDrainWait, [this] { return ctx.n_live == 0; })) {
    spdlog::warn("{} connections still open after {} s; closing them", ctx.n_live, kDrainWait.count());
  }
  lock.unlock();
  // 3.-5.
  gate->close();
  pool.join();
  work.reset();
  ioc->stop();
  for (auto& t : threads) t.join();
  threads.clear();
  retry_timer.reset();
  acceptor.reset();
  ioc.reset();
  state.backend.store(nullptr);
  std::lock_guard guard(backend_mutex);
  backend.reset();
}

Server::Server(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

Server::~Server() { stop(); }

Expected<std::unique_ptr<Server>> Server::start(const ServerOptions& options) {
  auto impl = std::make_unique<Impl>(options);
  beast::error_code ec;
  tcp::endpoint endpoint(net::ip::make_address(options.host, ec), static_cast<unsigned short>(options.port));
  if (ec) {  // a name ("localhost"): its first address
    tcp::resolver resolver(*impl->ioc);
    auto found = resolver.resolve(options.host, std::to_string(options.port), ec);
    if (ec || found.empty()) return Error{ErrorKind::invalid_argument, "--host '" + options.host + "': " + ec.message()};
    endpoint = found.begin()->endpoint();
  }
  impl->acceptor.emplace(net::make_strand(*impl->ioc));
  impl->retry_timer.emplace(impl->acceptor->get_executor());
  auto& a = *impl->acceptor;
  a.open(endpoint.protocol(), ec);
  if (!ec) a.set_option(net::socket_base::reuse_address(true), ec);
  if (!ec) a.bind(endpoint, ec);
  if (!ec) a.listen(net::socket_base::max_listen_connections, ec);
  if (ec) {
    return Error{ErrorKind::io, "cannot listen on " + options.host + ":" + std::to_string(options.port) + ": " +
                                    ec.message()};
  }
  impl->port = a.local_endpoint().port();
  impl->host = options.host;
  impl->accept();
  for (int i = 0; i < std::max(1, options.io_threads); ++i) {
    impl->threads.emplace_back([ioc = impl->ioc.get()] {
      for (;;) {  // a handler that throws is a bug; it must not take the io thread with it
        try {
          ioc->run();
          return;
        } catch (const std::exception& e) {
          spdlog::error("io thread: {}", e.what());
        }
      }
    });
  }
  return std::unique_ptr<Server>(new Server(std::move(impl)));
}

const std::string& Server::host() const { return impl_->host; }

int Server::port() const { return impl_->port; }

void Server::set_backend(std::shared_ptr<const Backend> backend) {
  std::lock_guard guard(impl_->backend_mutex);
  if (impl_->stopped) return;
  impl_->backend = std::move(backend);
  impl_->state.backend.store(impl_->backend.get());
}

void Server::stop() { impl_->stop(); }

}  // namespace troupe::http
