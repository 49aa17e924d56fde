// server.h: Server, dsmoe's OpenAI-compatible HTTP front door (cpp-httplib): GET /health,
// GET /v1/models, POST /v1/completions and /v1/chat/completions (JSON or server-sent events),
// GET /metrics. HTTP threads only parse, validate and queue; the Scheduler's loop owns the model.
#pragma once
#include <cstdint>
#include <memory>
#include <string>

#include "model/transformer.h"
#include "runtime/scheduler.h"
#include "runtime/text_codec.h"

namespace dsmoe::server {

// The HTTP layer's limits against slow and abusive clients (docs/reliability.md, "Resource
// limits"); apps/server/http_guard.h enforces them.
struct HttpLimits {
  // A request's head and body must arrive within this, from its first byte (however steadily
  // they trickle in); else 408, or the connection closed when nothing was parsed yet.
  double read_timeout_s = 30;
  // A write the client takes no byte of for this long fails: the connection is closed and a
  // generation's sequence freed.
  double write_timeout_s = 30;
  // A connection with no request under way (new, or kept alive between requests) is closed.
  double idle_timeout_s = 5;
  int64_t max_header_bytes = 32 * 1024;  // request line + headers; more: 431 (414: the line)
  int64_t max_header_lines = 100;        // header lines; more: 431
  // Connections served at once (0: max-concurrent + max-queue + 8, within 16..1024); a
  // connection beyond them gets a fast 503.
  int64_t n_threads = 0;
  // SO_SNDBUF of each connection (0: the kernel's, which grows as needed). Small in tests, so
  // that a client that stops reading fills it at once.
  int64_t send_buffer_bytes = 0;
};

struct ServerOptions {
  std::string host = "127.0.0.1";
  int port = 8080;      // 0: any free port (bind() returns it)
  std::string api_key;  // when set, /v1/* needs "Authorization: Bearer <key>"
  std::string model_name = "dsmoe";
  int64_t max_body_bytes = 4 << 20;  // larger request bodies get 413
  // How often an idle response probes its client (an SSE comment, or a space before a JSON
  // body): a client that went away is noticed within about two probes and its sequence freed.
  int heartbeat_ms = 200;
  HttpLimits http;
  SchedulerOptions scheduler;
};

class Server {
 public:
  Server(const Model& model, const TextCodec& codec, ServerOptions options);
  ~Server();  // stops

  // Binds the socket (throws Error naming host and port when it cannot); returns the port.
  int bind();
  // Serves until stop() (from another thread or a signal handler's thread).
  void run();
  void stop();

  Scheduler& scheduler();
  const ServerOptions& options() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace dsmoe::server
