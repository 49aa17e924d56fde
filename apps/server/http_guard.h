// http_guard.h: GuardedHttpServer, cpp-httplib's server with the limits it lacks against slow and
// abusive clients. cpp-httplib 0.11 (Debian's, a compiled library, so its macros cannot be
// changed) reads a request with a timeout per recv() only, so a client sending a byte every few
// seconds holds a thread for ever; it caps each header line's length but neither the number of
// lines nor their total; and its thread pool queues connections without bound. Here each
// connection is read through a stream that enforces one deadline for a request's head and body,
// caps the head by bytes and lines, and gives up a write the client does not take; a bounded pool
// answers connections beyond its threads with a fast 503 instead of queueing them.
#pragma once
#include <httplib.h>

#include <functional>

#include "apps/server/openai_api.h"
#include "apps/server/server.h"

namespace dsmoe::server {

// Why the request being served was cut short.
enum class RequestFault {
  kNone,
  kUriTooLong,      // the request line alone is over max_header_bytes: 414
  kHeadTooLarge,    // request line and headers over max_header_bytes: 431
  kTooManyHeaders,  // more than max_header_lines header lines: 431
  kTimedOut,        // the head and body did not arrive within read_timeout_s: 408
};

// The fault of the request this thread serves (kNone outside a guarded connection).
RequestFault current_request_fault();
// Whether this thread answers connections that found every worker busy (with 503).
bool serving_overflow();
// The answer to a faulty request in OpenAI's error shape (a status in 400..499).
ApiError fault_error(RequestFault fault, const HttpLimits& limits);

class Connection;  // http_guard.cpp

class GuardedHttpServer : public httplib::Server {
 public:
  explicit GuardedHttpServer(const HttpLimits& limits);

  // Called for an answer the guard writes itself (httplib had not parsed the request line), so
  // that it is logged and counted like the others.
  std::function<void(const httplib::Request&, const httplib::Response&)> on_own_answer;

 private:
  bool process_and_close_socket(socket_t sock) override;
  bool wait_for_request(Connection& connection) const;
  void answer_fault(httplib::Stream& stream, RequestFault fault);

  HttpLimits limits_;
};

}  // namespace dsmoe::server
