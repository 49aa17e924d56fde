// log.h: leveled logging to stderr and a wall-clock timer.
#pragma once
#include <fmt/format.h>

#include <chrono>
#include <cstdio>

namespace dsmoe {

enum class LogLevel { kQuiet = 0, kInfo = 1, kDebug = 2 };
inline LogLevel& log_level() {
  static LogLevel level = LogLevel::kInfo;
  return level;
}

template <typename... Args>
void log_info(fmt::format_string<Args...> format, Args&&... args) {
  if (log_level() >= LogLevel::kInfo)
    fmt::print(stderr, "{}\n", fmt::format(format, std::forward<Args>(args)...));
}

template <typename... Args>
void log_debug(fmt::format_string<Args...> format, Args&&... args) {
  if (log_level() >= LogLevel::kDebug)
    fmt::print(stderr, "{}\n", fmt::format(format, std::forward<Args>(args)...));
}

class Timer {
 public:
  Timer() : start_(std::chrono::steady_clock::now()) {}
  double seconds() const {
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
  }
  void reset() { start_ = std::chrono::steady_clock::now(); }

 private:
  std::chrono::steady_clock::time_point start_;
};

}  // namespace dsmoe
