// test_server_abuse.cpp: the server under abuse. Over a thousand malformed requests of a dozen
// kinds (seeded, reproducible), interleaved with well-formed ones: each malformed one gets a 4xx
// in OpenAI's error shape, never a 5xx or a crash, the well-formed ones keep succeeding, and the
// resident memory does not grow across the run.
#include <atomic>
#include <fstream>
#include <random>
#include <string>
#include <thread>

#include "server_fixture.h"
#include "test_util.h"
#include "util/check.h"

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

// ---- Slow clients, header floods, a client that stops reading (the HTTP limits) ----

using Clock = std::chrono::steady_clock;
constexpr auto kTrickleInterval = std::chrono::milliseconds(50);
// What a cut-off may take beyond its timeout on a loaded machine (and under ASan).
constexpr double kCutOffSlackS = 3.0;

double seconds_since(Clock::time_point start) {
  return std::chrono::duration<double>(Clock::now() - start).count();
}

// How the server ended a slow client: the answer's status (0: closed without one) and when.
struct CutOff {
  int status = 0;
  double seconds = 0;
};

// A connection that has sent `head` (the start of a request, or nothing).
int open_slow_client(int port, const std::string& head) {
  const int fd = connect_raw(port);
  EXPECT_TRUE(head.empty() || send_all(fd, head));
  return fd;
}

// Sends `trickle` (unless 0) every kTrickleInterval until the server answers or closes; gives up
// `give_up_s` after `opened`. Closes `fd`.
CutOff trickle_until_cut_off(int fd, char trickle, Clock::time_point opened, double give_up_s) {
  std::string answer;
  bool open = true;
  while (open && !has_head(answer) && seconds_since(opened) < give_up_s) {
    open = receive_some(fd, answer, kTrickleInterval);
    if (open && trickle != 0 && answer.empty()) open = send_all(fd, std::string(1, trickle));
  }
  const CutOff cut_off{status_of(answer), seconds_since(opened)};
  ::close(fd);
  return cut_off;
}

// A slow client's kind: what it sends first, what it trickles, and the timeout that cuts it off.
struct SlowKind {
  std::string name, head;
  char trickle;
  double timeout_s;
};

const std::vector<SlowKind>& slow_kinds() {
  static const std::vector<SlowKind> kinds = {
      {"slow request line", "POST /v1/compl", 'e', kReadTimeoutS},
      {"slow headers", "POST /v1/completions HTTP/1.1\r\nHost: x\r\nX-Slow: ", 'a', kReadTimeoutS},
      {"slow body",
       "POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n"
       "Authorization: Bearer test-key\r\n\r\n{\"prompt\": \"",
       'a', kReadTimeoutS},
      {"idle connection", "", 0, kIdleTimeoutS},
  };
  return kinds;
}

// Each kind of slow client is cut off within its timeout (408, or closed) while well-formed
// requests on other connections get 200; resident memory stays flat across the rounds.
TEST(ServerAbuse, SlowClientsAreCutOffAndOthersServed) {
  RunningServer server(fixture_model());
  // Warmed up: the scheduler's first step may take a while on a loaded machine.
  EXPECT_EQ(post(server, "/v1/completions", completion_body("warm up", 2)).first, 200);
  constexpr int kRounds = 3;
  const size_t n_kinds = slow_kinds().size();
  int64_t rss_after_first_round = 0;
  int n_well_formed = 0;
  for (int round = 0; round < kRounds; round++) {
    std::vector<CutOff> cut_offs(n_kinds);
    std::atomic<size_t> n_held{n_kinds};  // slow clients not yet cut off
    std::vector<std::thread> clients;
    for (size_t k = 0; k < n_kinds; k++) {
      const SlowKind& kind = slow_kinds()[k];
      const Clock::time_point opened = Clock::now();
      const int fd = open_slow_client(server.port(), kind.head);
      clients.emplace_back([&, k, fd, opened] {
        cut_offs[k] = trickle_until_cut_off(fd, slow_kinds()[k].trickle, opened,
                                            slow_kinds()[k].timeout_s + 2 * kCutOffSlackS);
        n_held--;
      });
    }
    // Served meanwhile.
    int n_answered_while_held = 0;
    while (n_held == n_kinds) {
      EXPECT_EQ(post(server, "/v1/completions", completion_body("meanwhile", 2)).first, 200);
      n_well_formed++;
      if (n_held == n_kinds) n_answered_while_held++;
      std::this_thread::sleep_for(kTrickleInterval);  // a steady stream, not a flood
    }
    EXPECT_GE(n_answered_while_held, 1);
    for (std::thread& client : clients) client.join();
    for (size_t k = 0; k < slow_kinds().size(); k++) {
      const SlowKind& kind = slow_kinds()[k];
      EXPECT_TRUE(cut_offs[k].status == 408 || cut_offs[k].status == 0)
          << kind.name << ": " << cut_offs[k].status;
      EXPECT_GE(cut_offs[k].seconds, kind.timeout_s * 0.9) << kind.name;
      EXPECT_LT(cut_offs[k].seconds, kind.timeout_s + kCutOffSlackS) << kind.name;
      if (round == 0)
        std::printf("%s: %d after %.2f s\n", kind.name.c_str(), cut_offs[k].status,
                    cut_offs[k].seconds);
    }
    if (round == 0) rss_after_first_round = resident_bytes();
  }
  EXPECT_EQ(post(server, "/v1/completions", completion_body("after", 2)).first, 200);
  const int64_t rss_end = resident_bytes();
  std::printf(
      "%d well-formed requests (200 each) among %d rounds of slow clients; resident "
      "memory %.1f -> %.1f MiB\n",
      n_well_formed, kRounds, rss_after_first_round / 1048576.0, rss_end / 1048576.0);
#if !defined(__SANITIZE_ADDRESS__)
  EXPECT_LT(rss_end - rss_after_first_round, int64_t{8} << 20) << "memory grew across the run";
#endif
}

// The whole answer to raw bytes sent at once (until the server closes or 2 s pass); empty when
// the server reset the connection before it could be read.
std::string raw_answer(int port, const std::string& bytes) {
  const int fd = connect_raw(port);
  send_all(fd, bytes);  // may stop early: the server answers before reading a flood to its end
  std::string answer;
  const Clock::time_point start = Clock::now();
  while (seconds_since(start) < 2 && receive_some(fd, answer, std::chrono::milliseconds(100))) {
  }
  ::close(fd);
  return answer;
}

std::string request_with_headers(int n_headers, size_t value_bytes) {
  std::string request = "POST /v1/completions HTTP/1.1\r\nHost: x\r\n";
  for (int i = 0; i < n_headers; i++)
    request += "X-Flood-" + std::to_string(i) + ": " + std::string(value_bytes, 'v') + "\r\n";
  return request + "Content-Length: 2\r\n\r\n{}";
}

// Too many header lines, too many header bytes, a head that never ends, a request line over the
// cap: 431 (414 for the line) in OpenAI's shape, and the server goes on; memory flat.
TEST(ServerAbuse, HeaderFloodsGet431) {
  RunningServer server(fixture_model());
  struct Flood {
    std::string name, request;
    int status;
  };
  const std::vector<Flood> floods = {
      {"header lines", request_with_headers(kMaxHeaderLines + 1, 4), 431},
      {"many more header lines", request_with_headers(20 * kMaxHeaderLines, 1), 431},
      {"header bytes", request_with_headers(kMaxHeaderLines / 2, kMaxHeaderBytes / 20), 431},
      {"a head that never ends",
       request_with_headers(0, 0).substr(0, 40) + std::string(4 * kMaxHeaderBytes, 'h'), 431},
      {"request line", "GET /" + std::string(2 * kMaxHeaderBytes, 'a') + " HTTP/1.1\r\n\r\n", 414},
  };
  // Just within the caps: served (401: no key; the head was read).
  EXPECT_EQ(status_of(raw_answer(server.port(), request_with_headers(kMaxHeaderLines - 2, 100))),
            401);
  constexpr int kRounds = 20, kWarmUp = 5;
  int64_t rss_after_warm_up = 0;
  for (int round = 0; round < kRounds; round++) {
    if (round == kWarmUp) rss_after_warm_up = resident_bytes();
    for (const Flood& flood : floods) {
      const std::string answer = raw_answer(server.port(), flood.request);
      if (answer.empty()) continue;  // reset before the answer was read: allowed, not expected
      EXPECT_EQ(status_of(answer), flood.status) << flood.name << ": " << answer.substr(0, 200);
      expect_error_shape(body_of(answer));
    }
    EXPECT_EQ(post(server, "/v1/completions", completion_body("between floods", 2)).first, 200);
  }
  const int64_t rss_end = resident_bytes();
  std::printf("%d rounds of %zu header floods; resident memory %.1f -> %.1f MiB\n", kRounds,
              floods.size(), rss_after_warm_up / 1048576.0, rss_end / 1048576.0);
#if !defined(__SANITIZE_ADDRESS__)
  EXPECT_LT(rss_end - rss_after_warm_up, int64_t{8} << 20) << "memory grew across the run";
#endif
}

// While every HTTP thread is held by a slow client, a well-formed request gets a fast 503 (not a
// wait); once the slow clients are cut off, 200 again.
TEST(ServerAbuse, BusyThreadsGiveAFast503) {
  constexpr int64_t kThreads = 2;
  constexpr double kLongReadTimeoutS = 4.0;
  RunningServer server(fixture_model(), 4, [](server::ServerOptions& o) {
    o.http.n_threads = kThreads;
    o.http.read_timeout_s = kLongReadTimeoutS;
  });
  // Opened one after the other (the server accepts them in that order) once the fixture's
  // probe has left its thread.
  std::this_thread::sleep_for(std::chrono::milliseconds(200));
  std::vector<std::thread> slow;
  for (int i = 0; i < kThreads; i++) {
    const Clock::time_point opened = Clock::now();
    const int fd = open_slow_client(server.port(), slow_kinds()[1].head);
    slow.emplace_back([fd, opened] {
      const CutOff cut_off =
          trickle_until_cut_off(fd, 'a', opened, kLongReadTimeoutS + 2 * kCutOffSlackS);
      EXPECT_EQ(cut_off.status, 408);
      EXPECT_GE(cut_off.seconds, kLongReadTimeoutS * 0.9);
    });
  }
  // Until the server has accepted both (a loaded machine may take a while), a request may
  // still find a thread: 200. Then 503. Either comes at once.
  int status = 0;
  std::string retry_after, body;
  const Clock::time_point start = Clock::now();
  while (status != 503 && seconds_since(start) < kLongReadTimeoutS / 2) {
    const Clock::time_point sent = Clock::now();
    httplib::Result answer = server.client().Post(
        "/v1/completions", auth(), completion_body("busy", 2).dump(), "application/json");
    ASSERT_TRUE(answer);
    EXPECT_LT(seconds_since(sent), 1.0);
    status = answer->status;
    retry_after = answer->get_header_value("Retry-After");
    body = answer->body;
    if (status == 200) std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  EXPECT_EQ(status, 503);
  EXPECT_EQ(retry_after, "1");
  expect_error_shape(json::parse(body, nullptr, false));
  for (std::thread& client : slow) client.join();
  // A cut-off client has its 408 a moment before the server's thread is back in the pool (it
  // still closes the connection): a request sent at once may find every thread busy, a 503 with
  // Retry-After, as a client honouring it would retry. Within a second, 200 (seen on a loaded
  // 2-core machine, session 11: the first request after the joins got 503).
  int free_status = 0;
  const Clock::time_point joined = Clock::now();
  do {
    free_status = post(server, "/v1/completions", completion_body("free again", 2)).first;
    if (free_status == 503) std::this_thread::sleep_for(std::chrono::milliseconds(50));
  } while (free_status == 503 && seconds_since(joined) < 1.0);
  EXPECT_EQ(free_status, 200);
}

// A streaming client that never reads: once the socket buffers are full, the write timeout cuts
// it off, its sequence is freed (status 499) long before max_tokens.
TEST(ServerAbuse, AClientThatStopsReadingIsCutOffByTheWriteTimeout) {
  constexpr int kSmallBuffer = 1;  // the kernel's least, on both ends
  // Every event names the model: with a 4 KiB name, a few events fill the buffers.
  const std::string long_name(4096, 'm');
  RunningServer server(slow_model(), 2, [&](server::ServerOptions& o) {
    o.http.send_buffer_bytes = kSmallBuffer;
    o.model_name = long_name;
  });
  constexpr int kMaxTokens = 2000;  // a minute or more of decoding for this model
  json request = completion_body("never read", kMaxTokens, true);
  request["model"] = long_name;
  const std::string body = request.dump();
  const int fd = connect_raw(server.port(), kSmallBuffer);
  ASSERT_TRUE(send_all(fd, "POST /v1/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " +
                               std::string(kKey) +
                               "\r\nContent-Type: application/json\r\n"
                               "Content-Length: " +
                               std::to_string(body.size()) + "\r\n\r\n" + body));
  const Clock::time_point start = Clock::now();
  while (server.server().scheduler().n_running() == 0 && seconds_since(start) < 10)
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  ASSERT_EQ(server.server().scheduler().n_running(), 1);
  constexpr double kGiveUpS = 30;
  while ((server.server().scheduler().n_running() > 0 ||
          server.server().scheduler().n_waiting() > 0) &&
         seconds_since(start) < kGiveUpS)
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  const double freed_after = seconds_since(start);
  std::printf("a client that never reads: its sequence freed after %.2f s\n", freed_after);
  EXPECT_LT(freed_after, kGiveUpS);
  ::close(fd);
  const std::string gone = "dsmoe_requests_total{endpoint=\"/v1/completions\",status=\"499\"} 1";
  std::string metrics;
  for (int attempt = 0; attempt < 200 && metrics.find(gone) == std::string::npos; attempt++) {
    if (attempt > 0) std::this_thread::sleep_for(std::chrono::milliseconds(10));
    metrics = server.client().Get("/metrics")->body;
  }
  EXPECT_NE(metrics.find(gone), std::string::npos) << metrics;
  request["max_tokens"] = 2;
  EXPECT_EQ(post(server, "/v1/completions", request).first, 200);
}

// Limits that cannot hold are refused when the server is built, naming them.
TEST(ServerAbuse, InvalidHttpLimitsAreRefused) {
  const ByteCodec codec(fixture_model().config());
  const auto refused = [&](const AdjustOptions& adjust) {
    server::ServerOptions o;
    o.port = 0;
    adjust(o);
    try {
      server::Server server(fixture_model(), codec, o);
    } catch (const Error& error) {
      return std::string(error.what()).find("HTTP limits") != std::string::npos;
    }
    return false;
  };
  EXPECT_TRUE(refused([](server::ServerOptions& o) { o.http.read_timeout_s = 0; }));
  EXPECT_TRUE(refused([](server::ServerOptions& o) { o.http.write_timeout_s = 1e300; }));
  EXPECT_TRUE(refused([](server::ServerOptions& o) { o.http.max_header_lines = -1; }));
  EXPECT_TRUE(refused([](server::ServerOptions& o) { o.http.n_threads = -3; }));
  EXPECT_FALSE(refused([](server::ServerOptions&) {}));
}

}  // namespace
}  // namespace dsmoe
