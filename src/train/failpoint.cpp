#include "train/failpoint.h"

#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <thread>
#include <vector>

#include "util/check.h"

namespace dsmoe {
namespace {

constexpr const char* kVariable = "DSMOE_FAILPOINT";

std::vector<std::string> split(const std::string& text, char separator) {
  std::vector<std::string> parts;
  size_t start = 0;
  for (size_t end; (end = text.find(separator, start)) != std::string::npos; start = end + 1)
    parts.push_back(text.substr(start, end - start));
  parts.push_back(text.substr(start));
  return parts;
}

int64_t parse_count(const std::string& text, const std::string& point) {
  char* end = nullptr;
  errno = 0;
  const long long value = std::strtoll(text.c_str(), &end, 10);
  DSMOE_CHECK(!text.empty() && *end == '\0' && errno == 0 && value >= 0,
              "{}: '{}': expected a non-negative number, got '{}'", kVariable, point, text);
  return value;
}

StepRange parse_steps(const std::string& text, const std::string& point) {
  const size_t dash = text.find('-');
  StepRange range;
  range.first = parse_count(text.substr(0, dash), point);
  range.last = dash == std::string::npos ? range.first
               : dash + 1 == text.size() ? INT64_MAX
                                         : parse_count(text.substr(dash + 1), point);
  return range;
}

int parse_errno(const std::string& name, const std::string& point) {
  if (name == "ENOSPC") return ENOSPC;
  if (name == "EIO") return EIO;
  if (name == "EDQUOT") return EDQUOT;
  fail(fmt::format("{}: '{}': expected ENOSPC, EIO or EDQUOT, got '{}'", kVariable, point, name));
}

bool ends_with(const std::string& text, const std::string& suffix) {
  return text.size() >= suffix.size() &&
         text.compare(text.size() - suffix.size(), suffix.size(), suffix) == 0;
}

}  // namespace

Failpoints read_failpoints() {
  Failpoints points;
  const char* value = std::getenv(kVariable);
  if (value == nullptr || *value == '\0') return points;
  for (const std::string& point : split(value, ',')) {
    const std::vector<std::string> f = split(point, ':');
    DSMOE_CHECK(f.size() >= 2 && f.size() <= 3, "{}: '{}': expected NAME:VALUE[:FILE]", kVariable,
                point);
    const bool has_file = f.size() == 3;
    if (f[0] == "checkpoint_write") {
      points.write_errno = parse_errno(f[1], point);
      if (has_file) points.write_file = f[2];
    } else if (f[0] == "checkpoint_pause") {
      points.pause_ms = parse_count(f[1], point);
      if (has_file) points.pause_file = f[2];
    } else if ((f[0] == "nan_loss" || f[0] == "nan_grad") && !has_file) {
      (f[0] == "nan_loss" ? points.nan_loss : points.nan_grad) = parse_steps(f[1], point);
    } else {
      fail(
          fmt::format("{}: unknown point '{}' (checkpoint_write, checkpoint_pause, nan_loss, "
                      "nan_grad)",
                      kVariable, point));
    }
  }
  return points;
}

void failpoint_before_write(const Failpoints& points, const std::string& path) {
  if (points.pause_ms > 0 && ends_with(path, points.pause_file)) {
    std::fprintf(stderr, "failpoint: checkpoint_pause %s\n", path.c_str());
    std::fflush(stderr);
    std::this_thread::sleep_for(std::chrono::milliseconds(points.pause_ms));
  }
  if (points.write_errno != 0 && ends_with(path, points.write_file))
    fail(fmt::format("{}.tmp: write failed: {} (injected by {})", path,
                     std::strerror(points.write_errno), kVariable));
}

}  // namespace dsmoe
