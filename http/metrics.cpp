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

// The _bucket, _sum and _count lines of one histogram series. `labels` is "" or `k="v",...` (no braces); `counts`
// holds (bounds + 1) per-bucket counts, the last +Inf.
void histogram_series(std::string& out, const std::string& name, const std::string& labels,
                      const double* bounds, size_t n_bounds, const uint64_t* counts, double sum) {
  const std::string sep = labels.empty() ? "" : ",";
  uint64_t cumulative = 0;
  for (size_t i = 0; i < n_bounds; ++i) {
    cumulative += counts[i];
    out += name + "_bucket{" + labels + sep + "le=\"" + number(bounds[i]) + "\"} " + std::to_string(cumulative) + "\n";
  }
  cumulative += counts[n_bounds];
  out += name + "_bucket{" + labels + sep + "le=\"+Inf\"} " + std::to_string(cumulative) + "\n";
  const std::string braced = labels.empty() ? "" : "{" + labels + "}";
  out += name + "_sum" + braced + " " + number(sum) + "\n";
  out += name + "_count" + braced + " " + std::to_string(cumulative) + "\n";
}

// Per shard: how many messages wait in its mailbox, and a histogram of its compute time per step.
void shard_metrics(std::string& out, const std::vector<ShardStats>& shards) {
  if (shards.empty()) return;
  auto labels = [](const ShardStats& s) {
    return "replica=\"" + std::to_string(s.replica) + "\",stage=\"" + std::to_string(s.stage) + "\",group=\"" +
           std::to_string(s.group) + "\"";
  };
  out += "# HELP troupe_shard_mailbox_depth Messages sent to a shard actor that it has not yet taken from its "
         "mailbox.\n# TYPE troupe_shard_mailbox_depth gauge\n";
  for (const auto& s : shards) out += "troupe_shard_mailbox_depth{" + labels(s) + "} " + std::to_string(s.mailbox_depth) + "\n";
  out += "# HELP troupe_shard_step_seconds Compute time of a shard's part of one step (attention and FFN of its "
         "layers).\n# TYPE troupe_shard_step_seconds histogram\n";
  std::vector<uint64_t> counts(kShardStepBounds.size() + 1);
  for (const auto& s : shards) {
    std::fill(counts.begin(), counts.end(), 0);
    std::copy_n(s.step_buckets.begin(), std::min(s.step_buckets.size(), counts.size()), counts.begin());
    histogram_series(out, "troupe_shard_step_seconds", labels(s), kShardStepBounds.data(), kShardStepBounds.size(),
                     counts.data(), s.step_seconds);
  }
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
}

std::string Histogram::render(const std::string& name, const std::string& help) const {
  std::lock_guard lock(mutex_);
  std::string out = "# HELP " + name + " " + help + "\n# TYPE " + name + " histogram\n";
  histogram_series(out, name, "", bounds_.data(), bounds_.size(), counts_.data(), sum_);
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
  shard_metrics(out, s.shards);
  return out;
}

}  // namespace troupe::http
