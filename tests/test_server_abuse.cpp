// test_server_abuse.cpp: the server under abuse. Over a thousand malformed requests of a dozen
// kinds (seeded, reproducible), interleaved with well-formed ones: each malformed one gets a 4xx
// in OpenAI's error shape, never a 5xx or a crash, the well-formed ones keep succeeding, and the
// resident memory does not grow across the run.
#include <fstream>
#include <random>
#include <string>

#include "server_fixture.h"
#include "test_util.h"

namespace dsmoe {
namespace {

using namespace server_test;  // NOLINT: the fixture of server_fixture.h

// Resident memory of this process (the server runs in it), in bytes.
int64_t resident_bytes() {
  std::ifstream status("/proc/self/status");
  std::string key;
  int64_t kib = 0;
  while (status >> key) {
    if (key == "VmRSS:") {
      status >> kib;
      return kib * 1024;
    }
    status.ignore(1 << 10, '\n');
  }
  return 0;
}

struct Abuse {
  std::string kind;
  std::string path = "/v1/completions";
  std::string body;
  httplib::Headers headers = auth();
};

// A malformed request of kind `n % 12`, its details drawn from `rng`.
Abuse malformed(int n, std::mt19937& rng) {
  const auto pick = [&](int k) { return static_cast<int>(rng() % k); };
  const json valid = completion_body("hello", 2);
  const std::string valid_text = valid.dump();
  const std::vector<std::string> fields = {"model", "prompt", "max_tokens", "temperature",
                                           "top_p", "stop",   "seed",       "stream"};
  Abuse a;
  switch (n % 12) {
    case 0: {
      a.kind = "random bytes";
      a.body.resize(pick(300));
      for (char& c : a.body) c = static_cast<char>(rng());
      a.body = "{" + a.body;  // never valid JSON: an object with no closing brace or a bad key
      break;
    }
    case 1:
      a.kind = "truncated JSON";
      a.body = valid_text.substr(0, 1 + pick(static_cast<int>(valid_text.size()) - 2));
      break;
    case 2: {
      json body = valid;
      const std::string& field = fields[pick(static_cast<int>(fields.size()))];
      body[field] = json::object({{"nested", json::array({1})}});
      a.kind = "wrong type for " + field;
      a.body = body.dump();
      break;
    }
    case 3: {
      json body = valid;
      const json bad[] = {json(-1 - pick(1000)), json(1.5), json(1e30), json(int64_t{1} << 62)};
      body["max_tokens"] = bad[pick(4)];
      a.kind = "max_tokens " + body["max_tokens"].dump();
      a.body = body.dump();
      break;
    }
    case 4: {
      json body = valid;
      if (pick(2) == 0)
        body["top_p"] = pick(2) == 0 ? 5.0 : -1.0;
      else
        body["temperature"] = -1.0 - pick(100);
      a.kind = "sampling out of range";
      a.body = body.dump();
      break;
    }
    case 5:
      a.kind = "invalid UTF-8";
      a.body = R"({"model": "tiny", "prompt": "ab\xff\xfe", "max_tokens": 2})";
      a.body[a.body.find("\\xff")] = '\xff';  // raw bytes, not an escape
      break;
    case 6:
      a.kind = "body over the limit";
      a.body = R"({"model": "tiny", "prompt": ")" + std::string(kMaxBodyBytes, 'a') + R"("})";
      break;
    case 7:
      a.kind = "unknown model";
      a.body = completion_body("hi", 2).dump();
      a.body.replace(a.body.find("tiny"), 4, "gpt-" + std::to_string(pick(10)));
      break;
    case 8:
      a.kind = "wrong key";
      a.body = valid_text;
      a.headers = {{"Authorization", "Bearer wrong-" + std::to_string(pick(100))}};
      break;
    case 9:
      a.kind = "deep nesting";
      a.body = R"({"model": "tiny", "prompt": )" + std::string(40 + pick(20000), '[');
      break;
    case 10:
      a.kind = "prompt beyond the context";
      a.body = completion_body(std::string(300 + pick(300), 'x'), 2).dump();
      break;
    default: {
      a.kind = "bad chat messages";
      a.path = "/v1/chat/completions";
      const json bad[] = {json::array(), json("hi"),
                          json::array({{{"role", "wizard"}, {"content", "hi"}}}),
                          json::array({{{"role", "user"}, {"content", 42}}})};
      a.body = json{{"model", kModelName}, {"messages", bad[pick(4)]}}.dump();
      break;
    }
  }
  return a;
}

TEST(ServerAbuse, MalformedRequestsGet4xxAndTheServerGoesOn) {
  RunningServer server(fixture_model());
  httplib::Client client = server.client();
  std::mt19937 rng(20261203);
  constexpr int kRequests = 1200, kWellFormedEvery = 40, kWarmUp = 240;
  int64_t rss_after_warm_up = 0;
  int n_malformed = 0, n_well_formed = 0;
  for (int i = 0; i < kRequests; i++) {
    if (i == kWarmUp) rss_after_warm_up = resident_bytes();
    if (i % kWellFormedEvery == 0) {
      EXPECT_EQ(post(server, "/v1/completions", completion_body("still fine", 2)).first, 200);
      n_well_formed++;
      continue;
    }
    const Abuse abuse = malformed(i, rng);
    httplib::Result result =
        client.Post(abuse.path.c_str(), abuse.headers, abuse.body, "application/json");
    ASSERT_TRUE(result) << "request " << i << " (" << abuse.kind << "): no answer";
    EXPECT_GE(result->status, 400) << i << ": " << abuse.kind;
    EXPECT_LT(result->status, 500) << i << ": " << abuse.kind << ": " << result->body;
    if (result->status != 413) expect_error_shape(json::parse(result->body, nullptr, false));
    n_malformed++;
  }
  const int64_t rss_end = resident_bytes();
  std::printf(
      "%d malformed requests (4xx each), %d well-formed (200 each); resident memory "
      "after the warm-up %.1f MiB, at the end %.1f MiB\n",
      n_malformed, n_well_formed, rss_after_warm_up / 1048576.0, rss_end / 1048576.0);
  EXPECT_GE(n_malformed, 1000);
#if !defined(__SANITIZE_ADDRESS__)  // ASan's quarantine holds freed memory on purpose
  EXPECT_LT(rss_end - rss_after_warm_up, int64_t{32} << 20) << "memory grew across the run";
#endif
}

// Broken HTTP framing: a 4xx, or the connection closed (as nginx and llama-server do), and the
// server goes on.
TEST(ServerAbuse, BrokenFramingAndTruncatedBodies) {
  RunningServer server(fixture_model());
  const std::vector<std::string> requests = {
      "GET\r\n\r\n", "POST /v1/completions HTTP/9.9\r\nContent-Length: 2\r\n\r\n{}",
      "POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: -5\r\n\r\n",
      "POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999999999999999\r\n\r\n",
      "GET /health HTTP/1.1\r\nHost: x\r\nX-Long: " + std::string(20000, 'a') + "\r\n\r\n",
      "GET /" + std::string(20000, 'a') + " HTTP/1.1\r\nHost: x\r\n\r\n",
      // Content-Length larger than what comes, then the client closes.
      "POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n{\"model\":"};
  for (const std::string& request : requests) {
    const std::string head = raw_exchange(server.port(), request);
    if (!head.empty()) {
      const int status = std::atoi(head.substr(9, 3).c_str());
      EXPECT_GE(status, 400) << request.substr(0, 60) << " -> " << head;
      EXPECT_LT(status, 500) << request.substr(0, 60) << " -> " << head;
    }
    EXPECT_EQ(post(server, "/v1/completions", completion_body("after", 2)).first, 200)
        << "after " << request.substr(0, 60);
  }
}

}  // namespace
}  // namespace dsmoe
