// metrics.cpp: histograms and the Prometheus text format (version 0.0.4).
#include "metrics.hpp"

#include <algorithm>
#include <cstdio>

namespace troupe::http {

namespace {

std::string number(double x) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.9g", x);
  return buf;
}

void metric(std::string& out, const char* name, const char* type, const char* help, double value) {
  out += std::string("# HELP ") + name + " " + help + "\n# TYPE " + name + " " + type + "\n" + name + " " +
         number(value) + "\n";
}

// Seconds from 1 ms to 10 minutes: token latencies sit at the low end, whole requests and queueing at the high end.
std::vector<double> latency_buckets() {
  return {0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0,
          40.0, 80.0, 160.0, 320.0, 640.0};
}

}  // namespace

Histogram::Histogram(std::vector<double> bounds) : bounds_(std::move(bounds)), counts_(bounds_.size() + 1, 0) {}

void Histogram::observe(double seconds) {
  const size_t i = std::lower_bound(bounds_.begin(), bounds_.end(), seconds) - bounds_.begin();  // first le >= x
  std::lock_guard lock(mutex_);
  counts_[i] += 1;
  sum_ += seconds;
  count_ += 1;
}

std::string Histogram::render(const std::string& name, const std::string& help) const {
  std::lock_guard lock(mutex_);
  std::string out = "# HELP " + name + " " + help + "\n# TYPE " + name + " histogram\n";
  uint64_t cumulative = 0;
  for (size_t i = 0; i < bounds_.size(); ++i) {
    cumulative += counts_[i];
    out += name + "_bucket{le=\"" + number(bounds_[i]) + "\"} " + std::to_string(cumulative) + "\n";
  }
  out += name + "_bucket{le=\"+Inf\"} " + std::to_string(count_) + "\n";
  out += name + "_sum " + number(sum_) + "\n";
  out += name + "_count " + std::to_string(count_) + "\n";
  return out;
}

Metrics::Metrics()
    : ttft(latency_buckets()), itl(latency_buckets()), e2e(latency_buckets()), queue(latency_buckets()) {
  responses_[200] = 0;  // the series exists from the start
}

void Metrics::count_response(int status) {
  std::lock_guard lock(mutex_);
  responses_[status] += 1;
}

std::string Metrics::render(const EngineStats& s) const {
  std::string out;
  metric(out, "troupe_requests_running", "gauge", "Engine requests being computed (decoding or prefilling).", s.running);
  metric(out, "troupe_requests_waiting", "gauge", "Engine requests queued for admission.", s.waiting);
  metric(out, "troupe_requests_paused", "gauge", "Engine requests paused by a slow reader (no credit).", s.paused);
  metric(out, "troupe_kv_blocks_used", "gauge", "Paged KV-cache blocks in use, all replicas.", s.blocks_used);
  metric(out, "troupe_kv_blocks_total", "gauge", "Paged KV-cache blocks, all replicas.", s.blocks_total);
  metric(out, "troupe_prompt_tokens_total", "counter", "Prompt tokens computed (prefill).", s.prompt_tokens);
  metric(out, "troupe_generation_tokens_total", "counter", "Tokens generated.", s.tokens_generated);
  metric(out, "troupe_preemptions_total", "counter", "Sequences preempted for KV blocks.", s.preemptions);
  metric(out, "troupe_shard_restarts_total", "counter", "Shard actors restarted after a failure.", s.shard_restarts);
  metric(out, "troupe_messages_total", "counter", "Actor messages sent for steps.", s.messages);
  metric(out, "troupe_steps_total", "counter", "Scheduler steps.", s.steps);
  {
    std::lock_guard lock(mutex_);
    out += "# HELP troupe_requests_total HTTP responses sent, by status code.\n# TYPE troupe_requests_total counter\n";
    for (const auto& [status, n] : responses_) {
      out += "troupe_requests_total{status=\"" + std::to_string(status) + "\"} " + std::to_string(n) + "\n";
    }
  }
  out += ttft.render("troupe_time_to_first_token_seconds", "Time from submit to the first token, per engine request.");
  out += itl.render("troupe_inter_token_latency_seconds", "Time between consecutive tokens of a request.");
  out += e2e.render("troupe_e2e_request_latency_seconds", "Time from submit to the end, per engine request.");
  out += queue.render("troupe_queue_time_seconds", "Time from submit to the first step that computed the request.");
  return out;
}

}  // namespace troupe::http
