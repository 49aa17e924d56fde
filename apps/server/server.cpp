#include "apps/server/server.h"

#include <httplib.h>
#include <sys/socket.h>

#include <algorithm>
#include <atomic>
#include <csignal>
#include <ctime>

#include "apps/server/http_guard.h"
#include "apps/server/metrics.h"
#include "apps/server/openai_api.h"
#include "util/check.h"
#include "util/log.h"

namespace dsmoe::server {
namespace {

using json = nlohmann::json;
using httplib::Request;
using httplib::Response;

constexpr int64_t kMinHttpThreads = 16, kMaxHttpThreads = 1024;
constexpr size_t kMaxLoggedPathBytes = 96;
constexpr int kClientClosedRequest = 499;  // nginx's status for a client that went away

void reply_error(Response& res, const ApiError& error) {
  res.status = error.status;
  res.set_content(dump(error_body(error)), "application/json");
}

// The answer httplib gives on its own (unknown path, malformed HTTP, body over the limit), in
// OpenAI's shape.
ApiError default_error(const Request& req, int status, int64_t max_body_bytes) {
  switch (status) {
    case 404:
      return {404, "Not found: " + req.method + " " + req.path, "invalid_request_error", "",
              "not_found"};
    case 413:
      return {413, fmt::format("The request body is larger than {} bytes", max_body_bytes),
              "invalid_request_error", "", "request_too_large"};
    case 414:
      return {414, "The request URI is too long", "invalid_request_error"};
    default:
      break;
  }
  if (status >= 500) return {status, fmt::format("Internal error ({})", status), "server_error"};
  return {status, fmt::format("Malformed HTTP request ({})", status)};
}

// The HTTP limits with the number of threads resolved: enough for every running and waiting
// generation (each holds its connection's thread) and a few more requests.
HttpLimits resolved_limits(const ServerOptions& o) {
  HttpLimits limits = o.http;
  if (limits.n_threads == 0)
    limits.n_threads = std::clamp<int64_t>(o.scheduler.max_concurrent + o.scheduler.max_queue + 8,
                                           kMinHttpThreads, kMaxHttpThreads);
  return limits;
}

// The metrics label of a path: the served endpoints by name, anything else "other".
std::string endpoint_label(const std::string& path) {
  for (const char* known :
       {"/health", "/metrics", "/v1/models", "/v1/completions", "/v1/chat/completions"})
    if (path == known) return known;
  if (path.rfind("/v1/models/", 0) == 0) return "/v1/models";
  return "other";
}

// A client-chosen string fit for one log line.
std::string printable(const std::string& text) {
  std::string out = text.substr(0, kMaxLoggedPathBytes);
  for (char& c : out)
    if (static_cast<unsigned char>(c) < 0x20 || static_cast<unsigned char>(c) >= 0x7F) c = '?';
  return out;
}

bool is_generation_path(const std::string& path) {
  return path == "/v1/completions" || path == "/v1/chat/completions";
}

// One generation request's response while it streams.
struct Generation {
  ResponseHeader header;
  bool stream = false;
  bool include_usage = false;
  std::shared_ptr<SequenceStream> sequence;
  std::string text;  // non-streaming: the answer so far
  bool first_chunk = true;
  FinishReason finish = FinishReason::kNone;
  std::atomic<bool> logged{false};
};

}  // namespace

struct Server::Impl {
  Impl(const Model& model, const TextCodec& codec, ServerOptions server_options)
      : codec(codec),
        options(std::move(server_options)),
        scheduler(model, codec, options.scheduler, &metrics),
        limits{options.model_name, scheduler.ctx_size(), model.config().vocab_size},
        started_at(std::time(nullptr)),
        http(resolved_limits(options)) {
    std::signal(SIGPIPE, SIG_IGN);  // a client that went away is a failed write, not a signal
    routes();
  }

  void routes();
  void authorized_then(const Request& req, Response& res,
                       const std::function<void(const Request&, Response&)>& handler);
  void generate(Endpoint endpoint, const Request& req, Response& res);
  bool pump(Generation& generation, httplib::DataSink& sink);
  std::string stream_events(Generation& generation, const StreamUpdate& update);
  void finish_request(Generation& generation);
  void log_request(const Request& req, const Response& res);

  const TextCodec& codec;
  ServerOptions options;
  Metrics metrics;  // before the scheduler, which reports to it
  Scheduler scheduler;
  ApiLimits limits;
  const int64_t started_at;
  GuardedHttpServer http;
  std::atomic<bool> stopping{false};
  std::atomic<uint64_t> n_requests{0};
  int listen_fd = -1;  // the listening socket, seen as httplib creates it
};

void Server::Impl::routes() {
  const ServerOptions& o = options;
  http.set_payload_max_length(static_cast<size_t>(o.max_body_bytes));
  // httplib's default sets SO_REUSEPORT, with which a second server binds the same port and the
  // kernel splits the connections between them; SO_REUSEADDR alone refuses a port in use.
  http.set_socket_options([this](socket_t socket) {
    const int yes = 1;
    ::setsockopt(socket, SOL_SOCKET, SO_REUSEADDR, &yes, sizeof(yes));
    listen_fd = socket;
  });
  http.Get("/health", [](const Request&, Response& res) {
    res.set_content(R"({"status":"ok"})", "application/json");
  });
  http.Get("/metrics", [this](const Request&, Response& res) {
    res.set_content(metrics.render(scheduler.n_waiting(), scheduler.n_running()),
                    "text/plain; version=0.0.4");
  });
  const auto model_json = [this] {
    return json{{"id", limits.model_name},
                {"object", "model"},
                {"created", started_at},
                {"owned_by", "dsmoe"},
                {"max_model_len", limits.ctx_size}};
  };
  http.Get("/v1/models", [this, model_json](const Request& req, Response& res) {
    authorized_then(req, res, [&](const Request&, Response& r) {
      r.set_content(dump({{"object", "list"}, {"data", json::array({model_json()})}}),
                    "application/json");
    });
  });
  http.Get(R"(/v1/models/(.+))", [this, model_json](const Request& req, Response& res) {
    authorized_then(req, res, [&](const Request& q, Response& r) {
      if (q.matches[1] == limits.model_name)
        r.set_content(dump(model_json()), "application/json");
      else
        reply_error(r, {404, "The model '" + q.matches[1].str() + "' does not exist",
                        "invalid_request_error", "model", "model_not_found"});
    });
  });
  http.Post("/v1/completions", [this](const Request& req, Response& res) {
    authorized_then(req, res,
                    [&](const Request& q, Response& r) { generate(Endpoint::kCompletions, q, r); });
  });
  http.Post("/v1/chat/completions", [this](const Request& req, Response& res) {
    authorized_then(req, res, [&](const Request& q, Response& r) {
      generate(Endpoint::kChatCompletions, q, r);
    });
  });
  // A connection that found every HTTP thread busy is answered at once, its body unread.
  http.set_pre_routing_handler([this](const Request&, Response& res) {
    if (!serving_overflow()) return httplib::Server::HandlerResponse::Unhandled;
    reply_error(res, {503,
                      fmt::format("The server is busy: all {} HTTP threads serve other "
                                  "connections. Retry later.",
                                  resolved_limits(options).n_threads),
                      "server_error", "", "overloaded"});
    res.set_header("Retry-After", "1");
    return httplib::Server::HandlerResponse::Handled;
  });
  http.set_error_handler([this](const Request& req, Response& res) {
    // httplib answers 400 to a head or body that the guard cut short: say why.
    const RequestFault fault = current_request_fault();
    if (fault != RequestFault::kNone && res.status == 400) {
      reply_error(res, fault_error(fault, options.http));
      res.set_header("Connection", "close");
    } else if (res.body.empty()) {
      reply_error(res, default_error(req, res.status, options.max_body_bytes));
    }
  });
  // httplib announces Keep-Alive unless it closes on its own; not when a handler closes.
  http.set_post_routing_handler([](const Request&, Response& res) {
    if (res.get_header_value("Connection") == "close") res.headers.erase("Keep-Alive");
  });
  http.on_own_answer = [this](const Request& req, const Response& res) {
    try {
      log_request(req, res);
    } catch (const std::exception&) {  // stderr gone: the server goes on
    }
  };
  http.set_exception_handler([](const Request&, Response& res, std::exception_ptr exception) {
    std::string what = "internal error";
    try {
      std::rethrow_exception(exception);
    } catch (const std::exception& e) {
      what = e.what();
    } catch (...) {
    }
    reply_error(res, {500, what, "server_error"});
  });
  http.set_logger([this](const Request& req, const Response& res) {
    try {
      log_request(req, res);
    } catch (const std::exception&) {  // stderr gone: the server goes on
    }
  });
}

void Server::Impl::authorized_then(const Request& req, Response& res,
                                   const std::function<void(const Request&, Response&)>& handler) {
  // Checked after the body was read, so that a keep-alive connection stays in step.
  if (!options.api_key.empty() &&
      req.get_header_value("Authorization") != "Bearer " + options.api_key)
    return reply_error(res, {401, "Incorrect or missing API key (Authorization: Bearer <key>)",
                             "invalid_request_error", "", "invalid_api_key"});
  handler(req, res);
}

void Server::Impl::generate(Endpoint endpoint, const Request& req, Response& res) {
  auto generation = std::make_shared<Generation>();
  generation->header = {
      endpoint,
      fmt::format("{}-{:08x}", endpoint == Endpoint::kChatCompletions ? "chatcmpl" : "cmpl",
                  ++n_requests),
      static_cast<int64_t>(std::time(nullptr)), limits.model_name};
  res.set_header("X-Request-Id", generation->header.id);
  try {
    ApiRequest request = parse_request(endpoint, req.body, limits, codec);
    generation->stream = request.stream;
    generation->include_usage = request.include_usage;
    generation->sequence = scheduler.submit(std::move(request.generation));
  } catch (const ApiError& error) {
    return reply_error(res, error);
  } catch (const Error& error) {  // the scheduler's own checks (parse_request makes them moot)
    return reply_error(res, {400, error.what()});
  }
  if (generation->sequence == nullptr)
    return reply_error(res, {503,
                             fmt::format("The server is busy: {} requests are waiting. Retry "
                                         "later.",
                                         scheduler.n_waiting()),
                             "server_error", "", "overloaded"});
  res.set_header("Cache-Control", "no-cache");
  // "; charset=utf-8": httplib compresses a plain "application/json", which would hold back the
  // probes that notice a client gone.
  res.set_chunked_content_provider(
      generation->stream ? "text/event-stream" : "application/json; charset=utf-8",
      [this, generation](size_t, httplib::DataSink& sink) {
        try {  // httplib does not catch what a content provider throws
          return pump(*generation, sink);
        } catch (const std::exception&) {
          generation->sequence->cancel();
          return false;
        }
      },
      [this, generation](bool) noexcept {
        generation->sequence->cancel();  // a no-op when it finished
        try {
          finish_request(*generation);
        } catch (const std::exception&) {  // stderr gone: the server goes on
        }
      });
}

// Writes the response as the scheduler produces it; returns false (and cancels the sequence)
// when the client is gone or the server stops.
bool Server::Impl::pump(Generation& generation, httplib::DataSink& sink) {
  const auto probe_interval = std::chrono::milliseconds(options.heartbeat_ms);
  const std::string probe = generation.stream ? ": ping\n\n" : " ";
  // A probe goes out whenever nothing was written for a probe interval, updates or not: a
  // non-streaming answer writes nothing until its end, and a client that left is noticed only
  // by a write that fails.
  auto last_write = std::chrono::steady_clock::now();
  StreamUpdate update;
  while (!stopping) {
    const bool updated = generation.sequence->wait_update(&update, probe_interval);
    if (std::chrono::steady_clock::now() - last_write >= probe_interval) {
      if (!sink.write(probe.data(), probe.size())) break;
      last_write = std::chrono::steady_clock::now();
    }
    if (!updated) continue;
    if (update.finish == FinishReason::kCancelled) break;
    generation.finish = update.finish;
    std::string out;
    if (generation.stream) {
      out = stream_events(generation, update);
    } else {
      generation.text += update.text;
      if (update.finish == FinishReason::kError)
        out = dump(error_body({500, update.error, "server_error"}));
      else if (update.finish != FinishReason::kNone)
        out = dump(completion_json(generation.header, generation.text, update.finish,
                                   generation.sequence->prompt_tokens(),
                                   generation.sequence->completion_tokens()));
    }
    if (!out.empty()) {
      if (!sink.write(out.data(), out.size())) break;
      last_write = std::chrono::steady_clock::now();
    }
    if (update.finish != FinishReason::kNone) {
      sink.done();
      return true;
    }
  }
  generation.sequence->cancel();
  return false;
}

std::string Server::Impl::stream_events(Generation& generation, const StreamUpdate& update) {
  const ResponseHeader& header = generation.header;
  std::string out;
  const bool chat = header.endpoint == Endpoint::kChatCompletions;
  if (!update.text.empty() || (chat && generation.first_chunk)) {
    out += sse_event(chunk_json(header, update.text, FinishReason::kNone, generation.first_chunk));
    generation.first_chunk = false;
  }
  if (update.finish == FinishReason::kNone) return out;
  if (update.finish == FinishReason::kError) {
    out += sse_event(error_body({500, update.error, "server_error"}));
  } else {
    out += sse_event(chunk_json(header, "", update.finish, generation.first_chunk));
    if (generation.include_usage)
      out += sse_event(usage_chunk_json(header, generation.sequence->prompt_tokens(),
                                        generation.sequence->completion_tokens()));
  }
  return out + "data: [DONE]\n\n";
}

// One log line and the metrics of a generation request, once its response is over.
void Server::Impl::finish_request(Generation& generation) {
  if (generation.logged.exchange(true)) return;
  const SequenceStream& sequence = *generation.sequence;
  const bool served = generation.finish != FinishReason::kNone;
  const int status = served ? 200 : kClientClosedRequest;
  const bool chat = generation.header.endpoint == Endpoint::kChatCompletions;
  metrics.count_request(chat ? "/v1/chat/completions" : "/v1/completions", status);
  metrics.count_generation(sequence.prompt_tokens(), sequence.completion_tokens(),
                           sequence.seconds_total());
  log_info(
      "request {} POST {} status={} tokens_in={} tokens_out={} ttft={:.3f}s total={:.3f}s "
      "finish={}{}",
      generation.header.id, chat ? "/v1/chat/completions" : "/v1/completions", status,
      sequence.prompt_tokens(), sequence.completion_tokens(), sequence.seconds_to_first_token(),
      sequence.seconds_total(), served ? finish_reason_name(generation.finish) : "cancelled",
      generation.stream ? " stream" : "");
}

void Server::Impl::log_request(const Request& req, const Response& res) {
  if (is_generation_path(req.path) && res.status == 200) return;  // finish_request logs those
  metrics.count_request(endpoint_label(req.path), res.status);
  const std::string id = res.get_header_value("X-Request-Id");
  log_info("request {} {} {} status={}", id.empty() ? "-" : id, printable(req.method),
           printable(req.path), res.status);
}

Server::Server(const Model& model, const TextCodec& codec, ServerOptions options)
    : impl_(std::make_unique<Impl>(model, codec, std::move(options))) {}

Server::~Server() { stop(); }

int Server::bind() {
  const ServerOptions& o = impl_->options;
  int port = o.port;
  if (port == 0)
    port = impl_->http.bind_to_any_port(o.host);
  else if (!impl_->http.bind_to_port(o.host, port))
    port = -1;
  DSMOE_CHECK(port > 0,
              "cannot listen on {}:{} (the port is in use, or the host is not an "
              "address of this machine)",
              o.host, o.port);
  // httplib listens with a backlog of 5: a burst of clients overflows it, and connections get
  // reset. Listening again on the bound socket raises the backlog.
  if (impl_->listen_fd >= 0) ::listen(impl_->listen_fd, SOMAXCONN);
  return port;
}

void Server::run() {
  if (impl_->stopping) return;  // stopped before it ran (a signal right after bind)
  impl_->scheduler.start();
  impl_->http.listen_after_bind();
}

void Server::stop() {
  impl_->stopping = true;
  impl_->scheduler.stop();  // ends every stream, so that the handlers return
  impl_->http.stop();
}

Scheduler& Server::scheduler() { return impl_->scheduler; }
const ServerOptions& Server::options() const { return impl_->options; }

}  // namespace dsmoe::server
