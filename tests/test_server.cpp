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
#include "server_fixture.h"
#include "test_util.h"

namespace dsmoe {
namespace {

using namespace server_test;  // NOLINT: the fixture of server_fixture.h

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

int64_t completion_tokens_total(RunningServer& server) {
  const std::string metrics = server.client().Get("/metrics")->body;
  const std::string name = "\ndsmoe_completion_tokens_total ";
  return std::stoll(metrics.substr(metrics.find(name) + name.size()));
}

TEST(Server, MalformedHttpGets4xx) {
  RunningServer server(fixture_model());
  EXPECT_EQ(raw_exchange(server.port(), "GARBAGE\r\n\r\n").rfind("HTTP/1.1 400", 0), 0u);
  const std::string long_header =
      "GET /health HTTP/1.1\r\nX-Long: " + std::string(20000, 'x') + "\r\n\r\n";
  EXPECT_EQ(raw_exchange(server.port(), long_header).rfind("HTTP/1.1 4", 0), 0u);
  // A body cut short: the server waits for the rest up to the read timeout, then answers 408
  // and closes; nothing is generated.
  const std::string head = raw_exchange(server.port(),
                                        "POST /v1/completions HTTP/1.1\r\nContent-Length: "
                                        "100\r\nAuthorization: Bearer " +
                                            std::string(kKey) + "\r\n\r\n{\"prompt\":");
  EXPECT_EQ(head.rfind("HTTP/1.1 408", 0), 0u) << head;
  EXPECT_NE(head.find("Connection: close"), std::string::npos) << head;
  EXPECT_EQ(head.find("Keep-Alive"), std::string::npos) << head;
  EXPECT_EQ(completion_tokens_total(server), 0);
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
  // A non-streaming client that gives up after 0.3 s: the server's probes (spaces, written
  // whenever nothing else was for a heartbeat) reach it, and its hang-up is seen by the next.
  const auto start = std::chrono::steady_clock::now();
  post_and_leave(server, completion_body("wait then leave", kMaxTokens), [&](const std::string&) {
    return std::chrono::steady_clock::now() - start > std::chrono::milliseconds(300);
  });
  EXPECT_TRUE(sequences_freed(server));
  const int n_gone = 2;
  // Each was answered as gone (499; booked a moment after the sequence is freed) and cut short.
  const std::string gone =
      fmt::format("dsmoe_requests_total{{endpoint=\"/v1/completions\",status=\"499\"}} {}", n_gone);
  std::string metrics;
  for (int attempt = 0; attempt < 500 && metrics.find(gone) == std::string::npos; attempt++) {
    if (attempt > 0) std::this_thread::sleep_for(std::chrono::milliseconds(10));
    metrics = server.client().Get("/metrics")->body;
  }
  EXPECT_NE(metrics.find(gone), std::string::npos) << metrics;
  EXPECT_LT(completion_tokens_total(server), kMaxTokens);
}

}  // namespace
}  // namespace dsmoe
