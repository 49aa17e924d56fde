// server_fixture.h: what the server's test programs share: the fixture models, a server
// in-process on a free port of 127.0.0.1, and small HTTP helpers (httplib and raw sockets).
#pragma once
#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <httplib.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <functional>
#include <nlohmann/json.hpp>
#include <string>
#include <thread>
#include <vector>

#include "apps/server/server.h"
#include "model/config.h"
#include "model/transformer.h"
#include "model/weights.h"
#include "runtime/text_codec.h"

namespace dsmoe::server_test {

using json = nlohmann::json;
inline constexpr const char* kKey = "test-key";
inline constexpr const char* kModelName = "tiny";
inline constexpr int64_t kMaxBodyBytes = 64 * 1024;

// The v3-tiny fixture (context 256), or a larger random model whose generations last seconds.
inline const Model& fixture_model() {
  static const Model model = Model::load(std::string(DSMOE_TEST_DATA) + "/v3-tiny/model");
  return model;
}

inline const Model& slow_model() {
  static const Model model = [] {
    const json config = {{"model_type", "deepseek_v3"},
                         {"vocab_size", 512},
                         {"hidden_size", 256},
                         {"intermediate_size", 1024},
                         {"moe_intermediate_size", 256},
                         {"num_hidden_layers", 4},
                         {"first_k_dense_replace", 1},
                         {"num_attention_heads", 4},
                         {"q_lora_rank", 64},
                         {"kv_lora_rank", 64},
                         {"qk_nope_head_dim", 32},
                         {"qk_rope_head_dim", 16},
                         {"v_head_dim", 32},
                         {"n_routed_experts", 8},
                         {"num_experts_per_tok", 2},
                         {"n_shared_experts", 1},
                         {"n_group", 4},
                         {"topk_group", 2},
                         {"max_position_embeddings", 2048},
                         {"num_nextn_predict_layers", 0}};
    const ModelConfig c = parse_model_config(config, "slow test model");
    return Model(c, random_weights(c, 7));
  }();
  return model;
}

// The HTTP limits of the test servers: short, so that slow clients are cut off in a second.
inline constexpr double kReadTimeoutS = 1.0, kWriteTimeoutS = 1.0, kIdleTimeoutS = 1.0;
inline constexpr int64_t kMaxHeaderBytes = 16 * 1024, kMaxHeaderLines = 50;

using AdjustOptions = std::function<void(server::ServerOptions&)>;

// A server on a free port of 127.0.0.1, running on its own thread for the test's lifetime.
class RunningServer {
 public:
  explicit RunningServer(const Model& model, int64_t max_concurrent = 4,
                         const AdjustOptions& adjust = nullptr)
      : codec_(model.config()), server_(model, codec_, options(max_concurrent, adjust)) {
    port_ = server_.bind();
    thread_ = std::thread([this] { server_.run(); });
    httplib::Client probe("127.0.0.1", port_);
    for (int i = 0; i < 200 && !probe.Get("/health"); i++)
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  ~RunningServer() {
    server_.stop();
    thread_.join();
  }
  int port() const { return port_; }
  server::Server& server() { return server_; }
  httplib::Client client() const {
    httplib::Client client("127.0.0.1", port_);
    client.set_read_timeout(60, 0);
    return client;
  }

 private:
  static server::ServerOptions options(int64_t max_concurrent, const AdjustOptions& adjust) {
    server::ServerOptions o;
    o.port = 0;
    o.api_key = kKey;
    o.model_name = kModelName;
    o.max_body_bytes = kMaxBodyBytes;
    o.heartbeat_ms = 50;
    o.scheduler.max_concurrent = max_concurrent;
    o.scheduler.max_queue = 64;
    o.scheduler.prefill_chunk = 16;
    o.http.read_timeout_s = kReadTimeoutS;
    o.http.write_timeout_s = kWriteTimeoutS;
    o.http.idle_timeout_s = kIdleTimeoutS;
    o.http.max_header_bytes = kMaxHeaderBytes;
    o.http.max_header_lines = kMaxHeaderLines;
    if (adjust) adjust(o);
    return o;
  }

  ByteCodec codec_;
  server::Server server_;
  int port_ = 0;
  std::thread thread_;
};

inline httplib::Headers auth() { return {{"Authorization", std::string("Bearer ") + kKey}}; }

// POST with the key; the body parsed (a non-streaming answer may start with probe spaces).
inline std::pair<int, json> post(const RunningServer& server, const std::string& path,
                                 const json& body, const httplib::Headers& headers = auth()) {
  httplib::Result result =
      server.client().Post(path.c_str(), headers, body.dump(), "application/json");
  EXPECT_TRUE(result) << "no answer from " << path;
  if (!result) return {0, json()};
  return {result->status, json::parse(result->body, nullptr, false)};
}

// The data events of an SSE body (comments skipped); "[DONE]" kept as a string.
inline std::vector<std::string> sse_events(const std::string& body) {
  std::vector<std::string> events;
  size_t pos = 0;
  while (pos < body.size()) {
    const size_t end = body.find("\n\n", pos);
    EXPECT_NE(end, std::string::npos) << "an event without its blank line: " << body.substr(pos);
    if (end == std::string::npos) break;
    const std::string event = body.substr(pos, end - pos);
    pos = end + 2;
    if (event[0] == ':') continue;  // a probe
    EXPECT_EQ(event.rfind("data: ", 0), 0u) << event;
    events.push_back(event.substr(6));
  }
  return events;
}

inline void expect_error_shape(const json& body, const std::string& param = "") {
  ASSERT_TRUE(body.is_object() && body.contains("error")) << body.dump();
  const json& error = body["error"];
  for (const char* key : {"message", "type", "param", "code"})
    EXPECT_TRUE(error.contains(key)) << key << " missing in " << body.dump();
  EXPECT_TRUE(error["message"].is_string());
  if (!param.empty()) {
    EXPECT_EQ(error["param"], param) << body.dump();
  }
}

inline json completion_body(const std::string& prompt, int max_tokens, bool stream = false) {
  return {{"model", kModelName},
          {"prompt", prompt},
          {"max_tokens", max_tokens},
          {"temperature", 0},
          {"stream", stream}};
}

// A TCP connection to the server (its receive buffer set first when `receive_buffer_bytes`).
inline int connect_raw(int port, int receive_buffer_bytes = 0) {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  if (receive_buffer_bytes > 0)
    ::setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &receive_buffer_bytes, sizeof(receive_buffer_bytes));
  sockaddr_in address{};
  address.sin_family = AF_INET;
  address.sin_port = htons(static_cast<uint16_t>(port));
  address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  EXPECT_EQ(::connect(fd, reinterpret_cast<sockaddr*>(&address), sizeof(address)), 0);
  return fd;
}

// Sends all of `bytes` (false when the server closed first).
inline bool send_all(int fd, const std::string& bytes) {
  for (size_t sent = 0; sent < bytes.size();) {
    const ssize_t n = ::send(fd, bytes.data() + sent, bytes.size() - sent, MSG_NOSIGNAL);
    if (n <= 0) return false;
    sent += static_cast<size_t>(n);
  }
  return true;
}

// Whether an answer's head is complete in `answer`.
inline bool has_head(const std::string& answer) {
  return answer.find("\r\n\r\n") != std::string::npos;
}

// Reads what is there to `answer`, waiting up to `wait`; false when the server closed (or reset).
inline bool receive_some(int fd, std::string& answer, std::chrono::milliseconds wait) {
  pollfd poll_fd{fd, POLLIN, 0};
  if (::poll(&poll_fd, 1, static_cast<int>(wait.count())) <= 0) return true;
  char buffer[4096];
  const ssize_t n = ::recv(fd, buffer, sizeof(buffer), 0);
  if (n <= 0) return false;
  answer.append(buffer, static_cast<size_t>(n));
  return true;
}

// The status of an answer's head ("HTTP/1.1 431 ..."); 0 for none.
inline int status_of(const std::string& answer) {
  return has_head(answer) ? std::atoi(answer.substr(9, 3).c_str()) : 0;
}

// The JSON body of a whole answer (after its head).
inline json body_of(const std::string& answer) {
  const size_t head_end = answer.find("\r\n\r\n");
  if (head_end == std::string::npos) return json();
  return json::parse(answer.substr(head_end + 4), nullptr, false);
}

// Sends raw bytes and returns the answer's head (up to its blank line; empty when the server
// closes first or 2 s pass).
inline std::string raw_exchange(int port, const std::string& bytes) {
  const int fd = connect_raw(port);
  send_all(fd, bytes);
  std::string answer;
  const auto give_up = std::chrono::steady_clock::now() + std::chrono::seconds(2);
  while (!has_head(answer) && std::chrono::steady_clock::now() < give_up &&
         receive_some(fd, answer, std::chrono::milliseconds(100))) {
  }
  ::close(fd);
  return has_head(answer) ? answer : std::string();
}

}  // namespace dsmoe::server_test
