// worker.cpp: `troupe worker`: a process that runs pipeline stages for a coordinator (`troupe serve`, `batch` or
// `bench` with a placement; docs/distributed.md).
//   1. --listen HOST:PORT (default 127.0.0.1:9101); a secret (--secret or TROUPE_SECRET) is required for any address
//      that is not loopback: without one the worker refuses to start
//   2. load its own copy of the model and hash it (a coordinator whose model differs is refused)
//   3. publish the gate; log "worker listening on HOST:PORT"; wait for SIGINT/SIGTERM; exit 0
#include <spdlog/spdlog.h>

#include <chrono>
#include <csignal>
#include <cstdlib>
#include <filesystem>
#include <pthread.h>

#include "commands.hpp"
#include "gguf.hpp"
#include "remote.hpp"

namespace troupe::cli {

namespace {

int fail(const std::string& message) {
  spdlog::error("{}", message);
  return 1;
}

// 127.0.0.0/8, ::1 and localhost: addresses only this machine can reach.
bool is_loopback(const std::string& host) {
  return host == "localhost" || host == "::1" || host.rfind("127.", 0) == 0;
}

}  // namespace

int run_worker(WorkerOptions o) {
  auto address = parse_host_port(o.listen);
  if (!address) return fail("--listen " + address.error().message);
  const auto& [host, port] = *address;
  if (o.secret.empty()) {
    if (const char* s = std::getenv("TROUPE_SECRET")) o.secret = s;
  }
  if (o.secret.empty() && !is_loopback(host)) {
    return fail("refusing to listen on " + host + " without a shared secret: any host that can reach it could run "
                "stages here. Set --secret or TROUPE_SECRET (the coordinator needs the same), or listen on 127.0.0.1");
  }

  sigset_t signals;  // taken by sigwait below: blocked before any thread starts
  sigemptyset(&signals);
  sigaddset(&signals, SIGINT);
  sigaddset(&signals, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);
  std::signal(SIGPIPE, SIG_IGN);

  const auto t0 = std::chrono::steady_clock::now();
  auto file = GgufFile::open(o.model_path);
  if (!file) return fail(file.error().message);
  auto model = Model::load(*file);
  if (!model) return fail(model.error().message);
  auto digest = digest_file(o.model_path);
  if (!digest) return fail(digest.error().message);
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();

  WorkerInit init{*model, *digest, o.secret};
  auto worker = start_worker(std::move(init), host, port, o.threads);
  if (!worker) return fail(worker.error().message);
  const std::string name = std::filesystem::path(o.model_path).filename().string();
  spdlog::info("worker: model {} loaded and hashed in {:.2f} s ({} bytes, sha256 {}); secret {}", name, seconds,
               digest->size, digest->sha256, o.secret.empty() ? "none (loopback only)" : "required");
  spdlog::info("worker listening on {}:{}", host, (*worker)->port());

  int sig = 0;
  sigwait(&signals, &sig);
  spdlog::info("{}: stopping", sig == SIGINT ? "SIGINT" : "SIGTERM");
  worker->reset();
  spdlog::info("stopped");
  return 0;
}

}  // namespace troupe::cli
