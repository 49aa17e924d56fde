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

struct ServerOptions {
  std::string host = "127.0.0.1";
  int port = 8080;      // 0: any free port (bind() returns it)
  std::string api_key;  // when set, /v1/* needs "Authorization: Bearer <key>"
  std::string model_name = "dsmoe";
  int64_t max_body_bytes = 4 << 20;  // larger request bodies get 413
  // How often an idle response probes its client (an SSE comment, or a space before a JSON
  // body): a client that went away is noticed within about two probes and its sequence freed.
  int heartbeat_ms = 200;
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
