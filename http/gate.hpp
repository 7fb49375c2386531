// gate.hpp: the one path from engine threads into Asio, and the switch that closes it. Engine sinks run their
// hand-over (posting an event onto a session's strand, recording a metric) inside run(); close() waits for those
// in progress and lets no more through, so nothing from an engine thread touches Asio or the server once the io
// context is being torn down (STACK.md: "Shutdown order matters").
#pragma once

#include <mutex>
#include <shared_mutex>

namespace troupe::http {

class Gate {
 public:
  // Runs f unless the gate is closed; whether it ran.
  template <class F>
  bool run(F&& f) {
    std::shared_lock lock(mutex_);
    if (!open_) return false;
    f();
    return true;
  }

  void close() {
    std::unique_lock lock(mutex_);
    open_ = false;
  }

 private:
  std::shared_mutex mutex_;
  bool open_ = true;
};

}  // namespace troupe::http
