// metrics.hpp: what /metrics reports that the engine does not count itself: latency histograms measured in http/
// from the events each request sees, and responses by status. Thread-safe: engine threads observe, io threads render.
//   Histogram   Prometheus-style cumulative buckets with _sum and _count
//   Metrics     the four latency histograms and the response counter; render() writes the Prometheus text, with
//               the engine's stats (per shard: troupe_shard_mailbox_depth, troupe_shard_step_seconds, labelled
//               replica, stage, group)
#pragma once

#include <cstdint>
#include <map>
#include <mutex>
#include <string>
#include <vector>

#include "engine.hpp"

namespace troupe::http {

class Histogram {
 public:
  explicit Histogram(std::vector<double> bounds);  // upper bounds, increasing; +Inf is implied
  void observe(double seconds);
  // The _bucket, _sum and _count lines (HELP and TYPE included) under `name`.
  std::string render(const std::string& name, const std::string& help) const;

 private:
  mutable std::mutex mutex_;
  std::vector<double> bounds_;
  std::vector<uint64_t> counts_;  // (bounds + 1): per bucket, not cumulative; the last is +Inf
  double sum_ = 0;
};

class Metrics {
 public:
  Metrics();

  Histogram ttft;           // submit -> first token, per engine request
  Histogram itl;            // between consecutive tokens of a request
  Histogram e2e;            // submit -> finish
  Histogram queue;          // FinishEvent::queue_seconds

  void count_response(int status);

  // The whole /metrics page: engine gauges and counters from `stats`, then the histograms and responses.
  std::string render(const EngineStats& stats) const;

 private:
  mutable std::mutex mutex_;
  std::map<int, uint64_t> responses_;  // HTTP status -> responses sent
};

}  // namespace troupe::http
