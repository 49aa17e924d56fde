#include "apps/server/metrics.h"

#include <fmt/format.h>

#include <algorithm>

namespace dsmoe::server {
namespace {

const std::vector<double> kFirstTokenBounds = {0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
                                               1.0,  2.5,   5.0,  10., 30.,  60.};
const std::vector<double> kTokenBounds = {0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
                                          0.1,   0.25,   0.5,   1.0,  2.5};
const std::vector<double> kRequestBounds = {0.05, 0.1, 0.25, 0.5, 1.0,  2.5,
                                            5.0,  10., 30.,  60., 120., 300.};

std::string counter(const std::string& name, const std::string& help, int64_t value) {
  return fmt::format("# HELP {0} {1}\n# TYPE {0} counter\n{0} {2}\n", name, help, value);
}

std::string gauge(const std::string& name, const std::string& help, int64_t value) {
  return fmt::format("# HELP {0} {1}\n# TYPE {0} gauge\n{0} {2}\n", name, help, value);
}

}  // namespace

Histogram::Histogram(std::vector<double> bounds)
    : bounds_(std::move(bounds)), counts_(bounds_.size() + 1, 0) {}

void Histogram::observe(double value) {
  const size_t bucket = std::lower_bound(bounds_.begin(), bounds_.end(), value) - bounds_.begin();
  counts_[bucket]++;
  sum_ += value;
  count_++;
}

std::string Histogram::render(const std::string& name, const std::string& help) const {
  std::string text = fmt::format("# HELP {0} {1}\n# TYPE {0} histogram\n", name, help);
  int64_t cumulative = 0;
  for (size_t i = 0; i < bounds_.size(); i++) {
    cumulative += counts_[i];
    text += fmt::format("{}_bucket{{le=\"{}\"}} {}\n", name, bounds_[i], cumulative);
  }
  text += fmt::format("{}_bucket{{le=\"+Inf\"}} {}\n", name, count_);
  text += fmt::format("{}_sum {}\n{}_count {}\n", name, sum_, name, count_);
  return text;
}

Metrics::Metrics()
    : time_to_first_token_(kFirstTokenBounds),
      inter_token_latency_(kTokenBounds),
      request_duration_(kRequestBounds) {}

void Metrics::on_first_token(double seconds_since_submit) {
  std::lock_guard<std::mutex> lock(mutex_);
  time_to_first_token_.observe(seconds_since_submit);
}

void Metrics::on_next_token(double seconds_since_previous) {
  std::lock_guard<std::mutex> lock(mutex_);
  inter_token_latency_.observe(seconds_since_previous);
}

void Metrics::count_request(const std::string& endpoint, int status) {
  std::lock_guard<std::mutex> lock(mutex_);
  requests_[{endpoint, status}]++;
}

void Metrics::count_generation(int64_t prompt_tokens, int64_t completion_tokens, double seconds) {
  std::lock_guard<std::mutex> lock(mutex_);
  prompt_tokens_ += prompt_tokens;
  completion_tokens_ += completion_tokens;
  request_duration_.observe(seconds);
}

std::string Metrics::render(int64_t queue_length, int64_t running_sequences) const {
  std::lock_guard<std::mutex> lock(mutex_);
  std::string text =
      "# HELP dsmoe_requests_total HTTP requests by endpoint and status\n"
      "# TYPE dsmoe_requests_total counter\n";
  for (const auto& [key, count] : requests_)
    text += fmt::format("dsmoe_requests_total{{endpoint=\"{}\",status=\"{}\"}} {}\n", key.first,
                        key.second, count);
  text +=
      counter("dsmoe_prompt_tokens_total", "Prompt tokens of finished requests", prompt_tokens_);
  text += counter("dsmoe_completion_tokens_total", "Generated tokens of finished requests",
                  completion_tokens_);
  text += gauge("dsmoe_queue_length", "Requests waiting for a sequence slot", queue_length);
  text += gauge("dsmoe_running_sequences", "Sequences being decoded", running_sequences);
  text += time_to_first_token_.render("dsmoe_time_to_first_token_seconds",
                                      "Time from a request's arrival to its first token");
  text += inter_token_latency_.render("dsmoe_inter_token_latency_seconds",
                                      "Time between consecutive tokens of a request");
  text += request_duration_.render("dsmoe_request_duration_seconds",
                                   "Time from arrival to the last token of generation requests");
  return text;
}

}  // namespace dsmoe::server
