// cmd_serve.cpp: dsmoe serve --model DIR [--host 127.0.0.1] [--port 8080] [--api-key KEY] ...
#include <csignal>
#include <filesystem>
#include <memory>
#include <thread>

#include "apps/cli/commands.h"
#include "apps/cli/common.h"
#include "apps/server/server.h"
#include "runtime/text_codec.h"
#include "runtime/tokenizer_codec.h"
#include "util/log.h"
#include "util/threads.h"

namespace dsmoe::cli {
namespace {

struct ServeArgs {
  std::string model_dir, weights = kWeightsAuto, model_name;
  server::ServerOptions server;
  int threads = 0;
};

// The name clients ask for: the checkpoint directory's name unless --served-model-name.
std::string default_model_name(const std::string& dir) {
  std::filesystem::path path(dir);
  if (path.filename().empty()) path = path.parent_path();
  return path.filename().string();
}

// The HTTP timeouts a user may set, in seconds (a day at most: beyond, a timeout is no limit).
constexpr double kMinTimeoutS = 0.001, kMaxTimeoutS = 86400;

// Set by SIGINT/SIGTERM; a watcher thread stops the server (httplib's stop is not
// async-signal-safe).
volatile std::sig_atomic_t g_stop_requested = 0;

int run_serve(ServeArgs& args) {
  set_num_threads(args.threads);
  Model model = load_inference_model(args.model_dir, args.weights);
  // The checkpoint's tokenizer.json and chat template, or byte-level text.
  const std::unique_ptr<TextCodec> codec_owner = load_text_codec(args.model_dir, model.config());
  const TextCodec& codec = *codec_owner;
  args.server.model_name =
      args.model_name.empty() ? default_model_name(args.model_dir) : args.model_name;
  server::Server server(model, codec, args.server);
  const int port = server.bind();
  const SchedulerOptions& scheduler = server.scheduler().options();
  log_info(
      "serving '{}' on http://{}:{} (context {} tokens, {} concurrent sequences, queue {}, "
      "body limit {} bytes, read / write / idle timeouts {} / {} / {} s{})",
      args.server.model_name, args.server.host, port, scheduler.ctx_size, scheduler.max_concurrent,
      scheduler.max_queue, args.server.max_body_bytes, args.server.http.read_timeout_s,
      args.server.http.write_timeout_s, args.server.http.idle_timeout_s,
      args.server.api_key.empty() ? "" : ", API key required");
  std::signal(SIGINT, [](int) { g_stop_requested = 1; });
  std::signal(SIGTERM, [](int) { g_stop_requested = 1; });
  std::thread watcher([&] {
    while (!g_stop_requested) std::this_thread::sleep_for(std::chrono::milliseconds(100));
    log_info("stopping");
    server.stop();
  });
  server.run();
  g_stop_requested = 1;
  watcher.join();
  return 0;
}

}  // namespace

Command add_serve(CLI::App& app) {
  auto args = std::make_shared<ServeArgs>();
  server::ServerOptions& o = args->server;
  app.add_option("--model", args->model_dir, "checkpoint directory")->required();
  app.add_option("--host", o.host, "address to listen on (default 127.0.0.1: this machine only)");
  app.add_option("--port", o.port, "port (default 8080; 0: any free port)")
      ->check(CLI::Range(0, 65535));
  app.add_option("--api-key", o.api_key, "require 'Authorization: Bearer KEY' on /v1/*");
  app.add_option("--served-model-name", args->model_name,
                 "the model's name in the API (default: the checkpoint directory's name)");
  app.add_option("--max-concurrent", o.scheduler.max_concurrent,
                 "sequences decoded together in one batch (default 8)")
      ->check(CLI::Range(int64_t{1}, int64_t{4096}));
  app.add_option("--max-queue", o.scheduler.max_queue,
                 "requests that may wait for a slot; more get 503 (default 256)")
      ->check(CLI::Range(int64_t{0}, int64_t{100000}));
  app.add_option("--ctx-size", o.scheduler.ctx_size,
                 "prompt + completion tokens per request (default: the model's "
                 "max_position_embeddings, at most 4096)")
      ->check(CLI::NonNegativeNumber);
  app.add_option("--prefill-chunk", o.scheduler.prefill_chunk,
                 "prompt tokens per sequence and step (default 256)")
      ->check(CLI::PositiveNumber);
  app.add_option("--max-body-bytes", o.max_body_bytes,
                 "largest request body; larger get 413 (default 4 MiB)")
      ->check(CLI::PositiveNumber);
  server::HttpLimits& http = o.http;
  app.add_option("--read-timeout", http.read_timeout_s,
                 "seconds for a request's headers and body, from its first byte; slower: 408 "
                 "(default 30)")
      ->check(CLI::Range(kMinTimeoutS, kMaxTimeoutS));
  app.add_option("--write-timeout", http.write_timeout_s,
                 "seconds a client may take no bytes of the answer before it is cut off and its "
                 "sequence freed (default 30)")
      ->check(CLI::Range(kMinTimeoutS, kMaxTimeoutS));
  app.add_option("--idle-timeout", http.idle_timeout_s,
                 "seconds a connection may wait without a request (new or kept alive) before "
                 "it is closed (default 5)")
      ->check(CLI::Range(kMinTimeoutS, kMaxTimeoutS));
  app.add_option("--max-header-bytes", http.max_header_bytes,
                 "largest request line + headers; larger get 431 (default 32 KiB)")
      ->check(CLI::Range(int64_t{1024}, int64_t{1} << 30));
  app.add_option("--max-header-lines", http.max_header_lines,
                 "most header lines per request; more get 431 (default 100)")
      ->check(CLI::Range(int64_t{1}, int64_t{100000}));
  app.add_option("--http-threads", http.n_threads,
                 "connections served at once; more get a fast 503 (default: max-concurrent + "
                 "max-queue + 8, within 16..1024)")
      ->check(CLI::Range(int64_t{1}, int64_t{4096}));
  app.add_option(
      "--weights", args->weights,
      "weight format for inference: auto (default: fp8 for an FP8 checkpoint, else f32), f32, "
      "bf16, q8_0, q4_0, fp8");
  app.add_option("--threads", args->threads, "threads of the model (default: all cores)");
  return [args] { return run_serve(*args); };
}

}  // namespace dsmoe::cli
