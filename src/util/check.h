// check.h: the Error type and the CHECK macros that turn bad input into one clear message.
#pragma once
#include <fmt/format.h>
#include <fmt/ranges.h>

#include <stdexcept>
#include <string>

namespace dsmoe {

// Every user-facing failure (bad file, bad config, bad flag) is an Error whose what() is one line
// naming the file, tensor or field and what was expected. Kernels never throw.
class Error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

[[noreturn]] inline void fail(const std::string& message) { throw Error(message); }

}  // namespace dsmoe

// DSMOE_CHECK(cond, "fmt {}", args...): throws dsmoe::Error with the formatted message.
#define DSMOE_CHECK(cond, ...)                                 \
  do {                                                         \
    if (!(cond)) ::dsmoe::fail(::fmt::format(__VA_ARGS__));    \
  } while (0)

// DSMOE_ASSERT: an internal invariant (a bug if it fails), with file and line.
#define DSMOE_ASSERT(cond)                                                               \
  do {                                                                                   \
    if (!(cond))                                                                         \
      ::dsmoe::fail(::fmt::format("internal error: {} at {}:{}", #cond, __FILE__, __LINE__)); \
  } while (0)
