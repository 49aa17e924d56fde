// test_server.cpp: `dsmoe serve`'s server (apps/server) in-process on a free port, driven by
// httplib's client and raw sockets: every endpoint, every error code in OpenAI's shape, SSE
// framing, concurrent clients, clients that disconnect (their sequences freed), malformed HTTP.
#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <httplib.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <nlohmann/json.hpp>
#include <string>
#include <thread>
#include <vector>

#include "apps/server/server.h"
#include "model/config.h"
#include "model/transformer.h"
#include "model/weights.h"
#include "runtime/text_codec.h"
#include "test_util.h"

namespace dsmoe {
namespace {

using json = nlohmann::json;
constexpr const char* kKey = "test-key";
constexpr const char* kModelName = "tiny";
constexpr int64_t kMaxBodyBytes = 64 * 1024;

// The v3-tiny fixture (context 256), or a larger random model whose generations last seconds.
const Model& fixture_model() {
  static const Model model = Model::load(std::string(DSMOE_TEST_DATA) + "/v3-tiny/model");
  return model;
}

const Model& slow_model() {
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

// A server on a free port of 127.0.0.1, running on its own thread for the test's lifetime.
class RunningServer {
 public:
  explicit RunningServer(const Model& model, int64_t max_concurrent = 4)
      : codec_(model.config()), server_(model, codec_, options(max_concurrent)) {
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
  static server::ServerOptions options(int64_t max_concurrent) {
    server::ServerOptions o;
    o.port = 0;
    o.api_key = kKey;
    o.model_name = kModelName;
    o.max_body_bytes = kMaxBodyBytes;
    o.heartbeat_ms = 50;
    o.scheduler.max_concurrent = max_concurrent;
    o.scheduler.max_queue = 64;
    o.scheduler.prefill_chunk = 16;
    return o;
  }

  ByteCodec codec_;
  server::Server server_;
  int port_ = 0;
  std::thread thread_;
};

httplib::Headers auth() { return {{"Authorization", std::string("Bearer ") + kKey}}; }

// POST with the key; the body parsed (a non-streaming answer may start with probe spaces).
std::pair<int, json> post(const RunningServer& server, const std::string& path, const json& body,
                          const httplib::Headers& headers = auth()) {
  httplib::Result result =
      server.client().Post(path.c_str(), headers, body.dump(), "application/json");
  EXPECT_TRUE(result) << "no answer from " << path;
  if (!result) return {0, json()};
  return {result->status, json::parse(result->body, nullptr, false)};
}

// The data events of an SSE body (comments skipped); "[DONE]" kept as a string.
std::vector<std::string> sse_events(const std::string& body) {
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

void expect_error_shape(const json& body, const std::string& param = "") {
  ASSERT_TRUE(body.is_object() && body.contains("error")) << body.dump();
  const json& error = body["error"];
  for (const char* key : {"message", "type", "param", "code"})
    EXPECT_TRUE(error.contains(key)) << key << " missing in " << body.dump();
  EXPECT_TRUE(error["message"].is_string());
  if (!param.empty()) {
    EXPECT_EQ(error["param"], param) << body.dump();
  }
}

json completion_body(const std::string& prompt, int max_tokens, bool stream = false) {
  return {{"model", kModelName},
          {"prompt", prompt},
          {"max_tokens", max_tokens},
          {"temperature", 0},
          {"stream", stream}};
}

TEST(Server, HealthModelsMetricsAndAuth) {
  RunningServer server(fixture_model());
  httplib::Client client = server.client();
  auto health = client.Get("/health");
  ASSERT_TRUE(health);
  EXPECT_EQ(health->status, 200);
  EXPECT_EQ(json::parse(health->body)["status"], "ok");

  auto models = client.Get("/v1/models", auth());
  ASSERT_TRUE(models);
  EXPECT_EQ(models->status, 200);
  const json list = json::parse(models->body);
  EXPECT_EQ(list["object"], "list");
  EXPECT_EQ(list["data"][0]["id"], kModelName);
  EXPECT_EQ(list["data"][0]["max_model_len"], 256);
  auto one = client.Get("/v1/models/tiny", auth());
  EXPECT_EQ(one->status, 200);
  auto other = client.Get("/v1/models/gpt-4", auth());
  EXPECT_EQ(other->status, 404);
  expect_error_shape(json::parse(other->body), "model");

  for (const httplib::Headers& bad :
       {httplib::Headers{}, httplib::Headers{{"Authorization", "Bearer wrong"}}}) {
    auto denied = client.Get("/v1/models", bad);
    ASSERT_TRUE(denied);
    EXPECT_EQ(denied->status, 401);
    expect_error_shape(json::parse(denied->body));
    EXPECT_EQ(json::parse(denied->body)["error"]["code"], "invalid_api_key");
  }
  EXPECT_EQ(post(server, "/v1/completions", completion_body("hi", 2), {}).first, 401);

  EXPECT_EQ(post(server, "/v1/completions", completion_body("hi", 3)).first, 200);
  // The response can reach the client a moment before the server books the request (its
  // sequence leaves the running set at the end of the step, its counts once the response is
  // written): wait for the numbers to settle.
  const std::vector<std::string> lines = {
      "dsmoe_requests_total{endpoint=\"/v1/completions\",status=\"200\"} 1",
      "dsmoe_requests_total{endpoint=\"/v1/completions\",status=\"401\"} 1",
      "dsmoe_requests_total{endpoint=\"/v1/models\",status=\"401\"} 2",
      "dsmoe_prompt_tokens_total 2",
      "dsmoe_completion_tokens_total 3",
      "dsmoe_queue_length 0",
      "dsmoe_running_sequences 0",
      "dsmoe_time_to_first_token_seconds_count 1",
      "dsmoe_inter_token_latency_seconds_count 2",
      "dsmoe_request_duration_seconds_bucket{le=\"+Inf\"} 1"};
  std::string metrics;
  for (int attempt = 0; attempt < 500; attempt++) {
    auto answer = client.Get("/metrics");
    ASSERT_TRUE(answer);
    EXPECT_EQ(answer->status, 200);
    metrics = answer->body;
    if (std::all_of(lines.begin(), lines.end(), [&](const std::string& line) {
          return metrics.find(line) != std::string::npos;
        }))
      break;
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  for (const std::string& line : lines)
    EXPECT_NE(metrics.find(line), std::string::npos) << line << "\n" << metrics;
}

TEST(Server, CompletionsAndChatStreamingAndNot) {
  RunningServer server(fixture_model());
  auto [status, answer] = post(server, "/v1/completions", completion_body("Hello", 6));
  ASSERT_EQ(status, 200) << answer.dump();
  EXPECT_EQ(answer["object"], "text_completion");
  EXPECT_EQ(answer["model"], kModelName);
  EXPECT_EQ(answer["choices"][0]["finish_reason"], "length");
  EXPECT_EQ(answer["usage"],
            json({{"prompt_tokens", 5}, {"completion_tokens", 6}, {"total_tokens", 11}}));
  const std::string text = answer["choices"][0]["text"];
  EXPECT_EQ(
      post(server, "/v1/completions", completion_body("Hello", 6)).second["choices"][0]["text"],
      text);  // greedy: the same again

  // The same request streamed: chunks that add up to the same text, then [DONE].
  auto streamed = server.client().Post(
      "/v1/completions", auth(), completion_body("Hello", 6, true).dump(), "application/json");
  ASSERT_TRUE(streamed);
  EXPECT_EQ(streamed->status, 200);
  EXPECT_EQ(streamed->get_header_value("Content-Type"), "text/event-stream");
  std::vector<std::string> events = sse_events(streamed->body);
  ASSERT_GE(events.size(), 2u);
  EXPECT_EQ(events.back(), "[DONE]");
  std::string joined;
  for (size_t i = 0; i + 1 < events.size(); i++) {
    const json chunk = json::parse(events[i]);
    EXPECT_EQ(chunk["object"], "text_completion");
    joined += chunk["choices"][0]["text"].get<std::string>();
    const bool last = i + 2 == events.size();
    EXPECT_EQ(chunk["choices"][0]["finish_reason"], last ? json("length") : json()) << i;
  }
  EXPECT_EQ(joined, text);

  // Chat, not streamed and streamed with the usage chunk.
  const json chat = {
      {"model", kModelName},
      {"messages",
       {{{"role", "system"}, {"content", "Be brief."}}, {{"role", "user"}, {"content", "Hi"}}}},
      {"max_tokens", 5},
      {"temperature", 0},
      {"seed", 3}};
  auto [chat_status, chat_answer] = post(server, "/v1/chat/completions", chat);
  ASSERT_EQ(chat_status, 200) << chat_answer.dump();
  EXPECT_EQ(chat_answer["object"], "chat.completion");
  EXPECT_EQ(chat_answer["choices"][0]["message"]["role"], "assistant");
  // "<|system|>\nBe brief.\n<|user|>\nHi\n<|assistant|>\n"
  EXPECT_EQ(chat_answer["usage"]["prompt_tokens"], 47);
  json chat_stream = chat;
  chat_stream["stream"] = true;
  chat_stream["stream_options"] = {{"include_usage", true}};
  auto chat_streamed =
      server.client().Post("/v1/chat/completions", auth(), chat_stream.dump(), "application/json");
  ASSERT_TRUE(chat_streamed);
  events = sse_events(chat_streamed->body);
  ASSERT_GE(events.size(), 4u);
  EXPECT_EQ(json::parse(events[0])["choices"][0]["delta"]["role"], "assistant");
  std::string chat_text;
  for (size_t i = 0; i + 2 < events.size(); i++) {
    const json delta = json::parse(events[i])["choices"][0]["delta"];
    if (delta.contains("content")) chat_text += delta["content"].get<std::string>();
  }
  EXPECT_EQ(chat_text, chat_answer["choices"][0]["message"]["content"]);
  const json finish = json::parse(events[events.size() - 3]);
  EXPECT_EQ(finish["choices"][0]["finish_reason"], "length");
  const json usage = json::parse(events[events.size() - 2]);
  EXPECT_TRUE(usage["choices"].empty());
  EXPECT_EQ(usage["usage"], chat_answer["usage"]);
  EXPECT_EQ(events.back(), "[DONE]");
}

TEST(Server, StopStringsAndTokenIdPrompts) {
  RunningServer server(fixture_model());
  const json full = post(server, "/v1/completions", completion_body("Once", 30)).second;
  const std::string text = full["choices"][0]["text"];
  ASSERT_GE(text.size(), 12u);
  // Stop at the third character (U+FFFD is 3 bytes; cut at a character boundary).
  size_t at = 0;
  for (int i = 0; i < 3; i++) at += (static_cast<unsigned char>(text[at]) >= 0xE0) ? 3 : 1;
  json body = completion_body("Once", 30);
  body["stop"] = text.substr(at, 1 + (static_cast<unsigned char>(text[at]) >= 0xE0 ? 2 : 0));
  const json stopped = post(server, "/v1/completions", body).second;
  EXPECT_EQ(stopped["choices"][0]["finish_reason"], "stop");
  EXPECT_EQ(stopped["choices"][0]["text"],
            text.substr(0, text.find(body["stop"].get<std::string>())));
  // The prompt as token ids gives the same answer as its text.
  body = completion_body("", 30);
  body["prompt"] = {'O', 'n', 'c', 'e'};
  EXPECT_EQ(post(server, "/v1/completions", body).second["choices"][0]["text"], text);
}

TEST(Server, ErrorsInOpenAiShapeAndTheServerGoesOn) {
  RunningServer server(fixture_model());
  struct Case {
    const char* what;
    const char* path;
    std::string body;
    int status;
    const char* param;
  };
  const std::string long_prompt(300, 'a');
  const std::vector<Case> cases = {
      {"malformed JSON", "/v1/completions", R"({"prompt": "a",)", 400, ""},
      {"not an object", "/v1/completions", R"(["prompt"])", 400, ""},
      {"invalid UTF-8", "/v1/completions", "{\"prompt\": \"a\xff\"}", 400, ""},
      {"deep nesting", "/v1/completions", std::string(1000, '[') + std::string(1000, ']'), 400, ""},
      {"max_tokens a string", "/v1/completions", R"({"prompt":"a","max_tokens":"5"})", 400,
       "max_tokens"},
      {"max_tokens negative", "/v1/completions", R"({"prompt":"a","max_tokens":-1})", 400,
       "max_tokens"},
      {"max_tokens huge", "/v1/completions", R"({"prompt":"a","max_tokens":1e300})", 400,
       "max_tokens"},
      {"max_tokens beyond int64", "/v1/completions",
       R"({"prompt":"a","max_tokens":99999999999999999999})", 400, "max_tokens"},
      {"temperature a string", "/v1/completions", R"({"prompt":"a","temperature":"hot"})", 400,
       "temperature"},
      {"top_p zero", "/v1/completions", R"({"prompt":"a","top_p":0})", 400, "top_p"},
      {"stream not a bool", "/v1/completions", R"({"prompt":"a","stream":"yes"})", 400, "stream"},
      {"stop a number", "/v1/completions", R"({"prompt":"a","stop":5})", 400, "stop"},
      {"n = 2", "/v1/completions", R"({"prompt":"a","n":2})", 400, "n"},
      {"prompt missing", "/v1/completions", R"({"max_tokens":3})", 400, "prompt"},
      {"prompt empty", "/v1/completions", R"({"prompt":""})", 400, "prompt"},
      {"prompt id outside the vocabulary", "/v1/completions", R"({"prompt":[1,2,512]})", 400,
       "prompt"},
      {"prompt beyond the context", "/v1/completions", json({{"prompt", long_prompt}}).dump(), 400,
       "prompt"},
      {"messages missing", "/v1/chat/completions", R"({"max_tokens":3})", 400, "messages"},
      {"messages empty", "/v1/chat/completions", R"({"messages":[]})", 400, "messages"},
      {"role unknown", "/v1/chat/completions", R"({"messages":[{"role":"x","content":"a"}]})", 400,
       "messages[0].role"},
      {"content a number", "/v1/chat/completions", R"({"messages":[{"role":"user","content":5}]})",
       400, "messages[0].content"},
      {"unknown model", "/v1/completions", R"({"model":"gpt-4","prompt":"a"})", 404, "model"},
      {"body over the limit", "/v1/completions", std::string(kMaxBodyBytes + 1, ' '), 413, ""},
  };
  httplib::Client client = server.client();
  for (const Case& c : cases) {
    auto result = client.Post(c.path, auth(), c.body, "application/json");
    ASSERT_TRUE(result) << c.what;
    EXPECT_EQ(result->status, c.status) << c.what << ": " << result->body;
    expect_error_shape(json::parse(result->body, nullptr, false), c.param);
  }
  const json context_error =
      post(server, "/v1/completions", {{"prompt", long_prompt}, {"max_tokens", 1}}).second;
  EXPECT_EQ(context_error["error"]["code"], "context_length_exceeded");
  EXPECT_NE(context_error["error"]["message"].get<std::string>().find(
                "maximum context length is 256 tokens. However, you requested 301 tokens (300 "
                "in the prompt, 1 for the completion)"),
            std::string::npos)
      << context_error.dump();
  auto unknown = client.Get("/v2/anything");
  ASSERT_TRUE(unknown);
  EXPECT_EQ(unknown->status, 404);
  expect_error_shape(json::parse(unknown->body));
  EXPECT_EQ(post(server, "/v1/completions", completion_body("still here", 2)).first, 200);
}

// Sends raw bytes and returns the answer's head (up to its blank line; empty when the server
// closes first or 2 s pass).
std::string raw_exchange(int port, const std::string& bytes) {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in address{};
  address.sin_family = AF_INET;
  address.sin_port = htons(static_cast<uint16_t>(port));
  address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  EXPECT_EQ(::connect(fd, reinterpret_cast<sockaddr*>(&address), sizeof(address)), 0);
  timeval timeout{2, 0};
  ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, sizeof(timeout));
  EXPECT_EQ(::send(fd, bytes.data(), bytes.size(), MSG_NOSIGNAL),
            static_cast<ssize_t>(bytes.size()));
  std::string answer;
  char buffer[4096];
  for (ssize_t n; answer.find("\r\n\r\n") == std::string::npos &&
                  (n = ::recv(fd, buffer, sizeof(buffer), 0)) > 0;)
    answer.append(buffer, n);
  ::close(fd);
  return answer;
}

TEST(Server, MalformedHttpGets4xx) {
  RunningServer server(fixture_model());
  EXPECT_EQ(raw_exchange(server.port(), "GARBAGE\r\n\r\n").rfind("HTTP/1.1 400", 0), 0u);
  const std::string long_header =
      "GET /health HTTP/1.1\r\nX-Long: " + std::string(20000, 'x') + "\r\n\r\n";
  EXPECT_EQ(raw_exchange(server.port(), long_header).rfind("HTTP/1.1 4", 0), 0u);
  // A body cut short: the server waits for the rest, then gives up; nothing is generated.
  EXPECT_EQ(raw_exchange(server.port(),
                         "POST /v1/completions HTTP/1.1\r\nContent-Length: "
                         "100\r\nAuthorization: Bearer " +
                             std::string(kKey) + "\r\n\r\n{\"prompt\":"),
            "");
  EXPECT_EQ(post(server, "/v1/completions", completion_body("fine", 2)).first, 200);
}

TEST(Server, ConcurrentClientsGetTheirOwnAnswers) {
  RunningServer server(fixture_model(), 4);
  const std::string reference =
      post(server, "/v1/completions", completion_body("shared", 12)).second["choices"][0]["text"];
  constexpr int kClients = 16;
  std::vector<std::string> texts(kClients);
  std::vector<int> statuses(kClients);
  std::vector<std::thread> clients;
  for (int i = 0; i < kClients; i++)
    clients.emplace_back([&, i] {
      const bool stream = i % 2 == 1;
      auto result =
          server.client().Post("/v1/completions", auth(),
                               completion_body("shared", 12, stream).dump(), "application/json");
      if (!result) {
        ADD_FAILURE() << "client " << i << ": " << httplib::to_string(result.error());
        return;
      }
      statuses[i] = result->status;
      if (!stream) {
        texts[i] = json::parse(result->body)["choices"][0]["text"];
        return;
      }
      const std::vector<std::string> events = sse_events(result->body);
      for (size_t e = 0; e + 1 < events.size(); e++)
        texts[i] += json::parse(events[e])["choices"][0]["text"].get<std::string>();
    });
  for (std::thread& client : clients) client.join();
  for (int i = 0; i < kClients; i++) {
    EXPECT_EQ(statuses[i], 200) << i;
    EXPECT_EQ(texts[i], reference) << i;
  }
}

// Waits until no sequence runs; false after 10 s.
bool sequences_freed(RunningServer& server) {
  for (int i = 0; i < 1000; i++) {
    if (server.server().scheduler().n_running() == 0 &&
        server.server().scheduler().n_waiting() == 0)
      return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  return false;
}

int64_t completion_tokens_total(RunningServer& server) {
  const std::string metrics = server.client().Get("/metrics")->body;
  const std::string name = "\ndsmoe_completion_tokens_total ";
  return std::stoll(metrics.substr(metrics.find(name) + name.size()));
}

// Sends a request and hangs up once `leave(body so far)` says so.
void post_and_leave(RunningServer& server, const json& body,
                    const std::function<bool(const std::string&)>& leave) {
  httplib::Client client = server.client();
  httplib::Request request;
  request.method = "POST";
  request.path = "/v1/completions";
  request.headers = auth();
  request.body = body.dump();
  request.set_header("Content-Type", "application/json");
  std::string received;
  request.content_receiver = [&](const char* data, size_t size, uint64_t, uint64_t) {
    received.append(data, size);
    return !leave(received);
  };
  EXPECT_FALSE(client.send(request));  // cancelled by the receiver
}

TEST(Server, ClientsThatDisconnectFreeTheirSequences) {
  RunningServer server(slow_model(), 2);
  constexpr int kMaxTokens = 2000;  // seconds of decoding for this model
  // A streaming client that reads its first token and hangs up.
  post_and_leave(
      server, completion_body("stream then leave", kMaxTokens, true),
      [](const std::string& received) { return received.find("data: ") != std::string::npos; });
  EXPECT_TRUE(sequences_freed(server));
  // A non-streaming client that gives up after 0.3 s (the server's probes are spaces).
  const auto start = std::chrono::steady_clock::now();
  post_and_leave(server, completion_body("wait then leave", kMaxTokens), [&](const std::string&) {
    return std::chrono::steady_clock::now() - start > std::chrono::milliseconds(300);
  });
  EXPECT_TRUE(sequences_freed(server));
  EXPECT_LT(completion_tokens_total(server), kMaxTokens);
}

}  // namespace
}  // namespace dsmoe
