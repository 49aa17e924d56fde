// metrics.h: the server's Prometheus metrics (GET /metrics): requests by endpoint and status,
// prompt and completion tokens, queue length, running sequences, and histograms of the time to
// the first token, the time between tokens and the request duration.
#pragma once
#include <cstdint>
#include <map>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

#include "runtime/scheduler.h"

namespace dsmoe::server {

// A Prometheus histogram: cumulative counts per upper bound (seconds), their sum and count.
class Histogram {
 public:
  explicit Histogram(std::vector<double> bounds);
  void observe(double value);
  // The exposition lines of `name` (_bucket{le=...}, _sum, _count) after its HELP and TYPE.
  std::string render(const std::string& name, const std::string& help) const;

 private:
  std::vector<double> bounds_;
  std::vector<int64_t> counts_;  // per bound, not cumulative; the last one is +Inf
  double sum_ = 0.0;
  int64_t count_ = 0;
};

class Metrics : public SchedulerObserver {
 public:
  Metrics();
  // SchedulerObserver (the scheduler's thread).
  void on_first_token(double seconds_since_submit) override;
  void on_next_token(double seconds_since_previous) override;
  // HTTP threads. endpoint: one of the served paths or "other" (bounded label values).
  void count_request(const std::string& endpoint, int status);
  void count_generation(int64_t prompt_tokens, int64_t completion_tokens, double seconds);
  std::string render(int64_t queue_length, int64_t running_sequences) const;

 private:
  mutable std::mutex mutex_;
  std::map<std::pair<std::string, int>, int64_t> requests_;
  int64_t prompt_tokens_ = 0, completion_tokens_ = 0;
  Histogram time_to_first_token_, inter_token_latency_, request_duration_;
};

}  // namespace dsmoe::server
