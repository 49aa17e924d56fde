#include "apps/server/http_guard.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <cstring>
#include <deque>
#include <limits>
#include <mutex>
#include <thread>
#include <vector>

#include "apps/server/openai_api.h"
#include "util/check.h"

namespace dsmoe::server {
namespace {

using Clock = std::chrono::steady_clock;
using std::chrono::milliseconds;

// How often a wait looks whether the server stops.
constexpr milliseconds kStopCheckInterval{50};
// A connection that found every worker busy gets its 503 once its head is read, which may take
// this long (its body is not read).
constexpr double kOverflowReadTimeoutS = 1.0;
constexpr size_t kOverflowThreads = 2;
constexpr size_t kMaxOverflowWaiting = 64;  // beyond: the connection is closed at once
// Before closing a connection whose request was not read to its end, the server stops writing
// and discards what still comes, for a while, so that the client reads the answer rather than a
// reset (nginx's lingering close).
constexpr milliseconds kLingerTime{500};
constexpr size_t kLingerMaxBytes = size_t{1} << 20;
constexpr size_t kReadBufferBytes = 4096;
constexpr double kMaxTimeoutS = 1e6;  // beyond, the clock's arithmetic could overflow

// How a worker treats the connections it is given.
enum class ConnectionRole { kNone, kServe, kOverflow, kDrop };

thread_local ConnectionRole t_role = ConnectionRole::kNone;
thread_local RequestFault t_fault = RequestFault::kNone;  // of the request being served

Clock::duration to_duration(double seconds) {
  return std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(seconds));
}

// Waits until `sock` is ready for `events` (true; a hang-up or error counts, the read or write
// then reports it), or until `deadline` passes or the server stops (false).
bool wait_ready(socket_t sock, short events, Clock::time_point deadline,
                const std::atomic<socket_t>& listening) {
  for (;;) {
    const Clock::time_point now = Clock::now();
    if (listening == INVALID_SOCKET || now >= deadline) return false;
    const auto slice = std::min<Clock::duration>(deadline - now, kStopCheckInterval);
    pollfd poll_fd{sock, events, 0};
    const int n_ready =
        ::poll(&poll_fd, 1, static_cast<int>(std::chrono::ceil<milliseconds>(slice).count()));
    if (n_ready > 0) return true;
    if (n_ready < 0 && errno != EINTR) return false;
  }
}

void address_of(socket_t sock, bool peer, std::string& ip, int& port) {
  sockaddr_storage address{};
  socklen_t length = sizeof(address);
  auto* generic = reinterpret_cast<sockaddr*>(&address);
  if ((peer ? ::getpeername(sock, generic, &length) : ::getsockname(sock, generic, &length)) != 0)
    return;
  char text[INET6_ADDRSTRLEN] = "";
  if (address.ss_family == AF_INET) {
    const auto* v4 = reinterpret_cast<const sockaddr_in*>(&address);
    ::inet_ntop(AF_INET, &v4->sin_addr, text, sizeof(text));
    port = ntohs(v4->sin_port);
  } else if (address.ss_family == AF_INET6) {
    const auto* v6 = reinterpret_cast<const sockaddr_in6*>(&address);
    ::inet_ntop(AF_INET6, &v6->sin6_addr, text, sizeof(text));
    port = ntohs(v6->sin6_port);
  }
  ip = text;
}

const char* reason_phrase(int status) {
  switch (status) {
    case 408:
      return "Request Timeout";
    case 414:
      return "URI Too Long";
    case 431:
      return "Request Header Fields Too Large";
    default:
      return "Bad Request";
  }
}

// Closes a connection; with `linger`, after reading what the client still sends (see kLingerTime).
void close_connection(socket_t sock, bool linger) {
  if (!linger) {
    ::shutdown(sock, SHUT_RDWR);
    ::close(sock);
    return;
  }
  ::shutdown(sock, SHUT_WR);
  const Clock::time_point deadline = Clock::now() + kLingerTime;
  char discarded[kReadBufferBytes];
  for (size_t n_discarded = 0; n_discarded < kLingerMaxBytes;) {
    const auto left = std::chrono::ceil<milliseconds>(deadline - Clock::now()).count();
    pollfd poll_fd{sock, POLLIN, 0};
    if (left <= 0 || ::poll(&poll_fd, 1, static_cast<int>(left)) <= 0) break;
    const ssize_t n = ::recv(sock, discarded, sizeof(discarded), MSG_DONTWAIT);
    if (n <= 0) break;  // the client read the answer and closed
    n_discarded += static_cast<size_t>(n);
  }
  ::close(sock);
}

// Threads that run connections' jobs, each job in the pool's role.
class WorkerPool {
 public:
  WorkerPool(size_t n_threads, ConnectionRole role, size_t max_waiting)
      : role_(role), max_waiting_(max_waiting) {
    for (size_t i = 0; i < n_threads; i++) threads_.emplace_back([this] { work(); });
    // Until every thread waits for work, connections would count them as busy.
    std::unique_lock<std::mutex> lock(mutex_);
    idle_.wait(lock, [&] { return n_idle_ == n_threads; });
  }
  ~WorkerPool() { shutdown(); }

  // Queues `job` (moved from) when it need not wait behind others: a thread is idle for it or,
  // with `queue_when_busy`, fewer than max_waiting jobs wait.
  bool try_enqueue(std::function<void()>& job, bool queue_when_busy) {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      const size_t limit = queue_when_busy ? n_idle_ + max_waiting_ : n_idle_;
      if (shutting_down_ || jobs_.size() >= limit) return false;
      jobs_.push_back(std::move(job));
    }
    ready_.notify_one();
    return true;
  }

  void shutdown() {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      shutting_down_ = true;
    }
    ready_.notify_all();
    for (std::thread& thread : threads_)
      if (thread.joinable()) thread.join();
  }

 private:
  void work() {
    t_role = role_;
    for (;;) {
      std::function<void()> job;
      {
        std::unique_lock<std::mutex> lock(mutex_);
        n_idle_++;
        idle_.notify_all();
        ready_.wait(lock, [&] { return shutting_down_ || !jobs_.empty(); });
        n_idle_--;
        if (jobs_.empty()) return;  // shutting down with nothing left
        job = std::move(jobs_.front());
        jobs_.pop_front();
      }
      job();
    }
  }

  const ConnectionRole role_;
  const size_t max_waiting_;
  std::mutex mutex_;
  std::condition_variable ready_, idle_;
  std::deque<std::function<void()>> jobs_;
  size_t n_idle_ = 0;
  bool shutting_down_ = false;
  std::vector<std::thread> threads_;
};

// httplib's task queue: a connection goes to an idle serving thread; when none is idle, to a
// small pool that answers 503; when that is full too, it is closed at once.
class GuardedTaskQueue final : public httplib::TaskQueue {
 public:
  explicit GuardedTaskQueue(size_t n_threads)
      : serving_(n_threads, ConnectionRole::kServe, 0),
        overflow_(kOverflowThreads, ConnectionRole::kOverflow, kMaxOverflowWaiting) {}

  void enqueue(std::function<void()> job) override {
    if (serving_.try_enqueue(job, false) || overflow_.try_enqueue(job, true)) return;
    t_role = ConnectionRole::kDrop;  // on the accepting thread: closes the socket, no more
    job();
    t_role = ConnectionRole::kNone;
  }
  void shutdown() override {
    serving_.shutdown();
    overflow_.shutdown();
  }

 private:
  WorkerPool serving_, overflow_;
};

}  // namespace

// One connection's socket and what was read from it but not yet consumed (it outlives each
// request's stream: a pipelined next request may already be in the buffer).
class Connection {
 public:
  Connection(socket_t sock, const std::atomic<socket_t>& listening)
      : sock(sock), listening(listening), buffer(kReadBufferBytes) {}
  bool buffered() const { return begin < end; }

  const socket_t sock;
  const std::atomic<socket_t>& listening;
  std::vector<char> buffer;
  size_t begin = 0, end = 0;  // the unconsumed bytes of `buffer`
};

namespace {

// httplib's view of one request on a connection: reads must deliver the head and body before a
// deadline and the head within its caps (else the read fails and the fault is recorded for the
// handlers); a write fails when the client takes no byte for the write timeout.
class GuardedStream final : public httplib::Stream {
 public:
  GuardedStream(Connection& connection, const HttpLimits& limits, Clock::time_point deadline)
      : connection_(connection), limits_(limits), deadline_(deadline) {
    t_fault = RequestFault::kNone;
  }

  bool is_readable() const override {
    return connection_.buffered() ||
           wait_ready(connection_.sock, POLLIN, deadline_, connection_.listening);
  }
  bool is_writable() const override {
    return wait_ready(connection_.sock, POLLOUT,
                      Clock::now() + to_duration(limits_.write_timeout_s), connection_.listening);
  }
  ssize_t read(char* ptr, size_t size) override;
  ssize_t write(const char* ptr, size_t size) override;
  void get_remote_ip_and_port(std::string& ip, int& port) const override {
    address_of(connection_.sock, true, ip, port);
  }
  void get_local_ip_and_port(std::string& ip, int& port) const override {
    address_of(connection_.sock, false, ip, port);
  }
  socket_t socket() const override { return connection_.sock; }

  RequestFault fault() const { return fault_; }
  size_t bytes_written() const { return bytes_written_; }

 private:
  bool fill_buffer();
  size_t admit_head_bytes(const char* data, size_t n);
  void set_fault(RequestFault fault) { fault_ = t_fault = fault; }

  Connection& connection_;
  const HttpLimits& limits_;
  const Clock::time_point deadline_;
  RequestFault fault_ = RequestFault::kNone;
  size_t bytes_written_ = 0;
  // The head as read so far: its bytes, its complete lines (the request line first), the
  // current line's bytes and the byte before.
  bool head_done_ = false;
  int64_t head_bytes_ = 0, n_lines_ = 0, line_bytes_ = 0;
  char previous_byte_ = 0;
};

// Reads into the empty buffer; false at the end of the stream, on an error, at the deadline
// (recorded as the fault) or when the server stops.
bool GuardedStream::fill_buffer() {
  for (;;) {
    if (!wait_ready(connection_.sock, POLLIN, deadline_, connection_.listening)) {
      if (Clock::now() >= deadline_) set_fault(RequestFault::kTimedOut);
      return false;
    }
    const ssize_t n = ::recv(connection_.sock, connection_.buffer.data(), connection_.buffer.size(),
                             MSG_DONTWAIT);
    if (n > 0) {
      connection_.begin = 0;
      connection_.end = static_cast<size_t>(n);
      return true;
    }
    if (n == 0 || (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)) return false;
  }
}

ssize_t GuardedStream::read(char* ptr, size_t size) {
  if (fault_ != RequestFault::kNone) return -1;
  if (!connection_.buffered() && !fill_buffer()) return fault_ == RequestFault::kNone ? 0 : -1;
  size_t n = std::min(size, connection_.end - connection_.begin);
  const char* data = connection_.buffer.data() + connection_.begin;
  if (!head_done_) n = admit_head_bytes(data, n);
  if (n == 0) return -1;  // over a cap
  std::memcpy(ptr, data, n);
  connection_.begin += n;
  return static_cast<ssize_t>(n);
}

// How many of the next `n` bytes of the head the caps admit; at a cap, the fault is recorded.
// A line ends at '\n'; the head at an empty line ("\r\n", as httplib reads it) after the request
// line.
size_t GuardedStream::admit_head_bytes(const char* data, size_t n) {
  for (size_t i = 0; i < n; i++) {
    if (++head_bytes_ > limits_.max_header_bytes) {
      set_fault(n_lines_ == 0 ? RequestFault::kUriTooLong : RequestFault::kHeadTooLarge);
      return i;
    }
    const char byte = data[i], before = previous_byte_;
    previous_byte_ = byte;
    line_bytes_++;
    if (byte != '\n') continue;
    const bool empty_line = line_bytes_ == 2 && before == '\r';
    line_bytes_ = 0;
    if (empty_line && n_lines_ > 0) {
      head_done_ = true;
      return i + 1;
    }
    if (++n_lines_ - 1 > limits_.max_header_lines) {
      set_fault(RequestFault::kTooManyHeaders);
      return i;
    }
  }
  return n;
}

ssize_t GuardedStream::write(const char* ptr, size_t size) {
  const Clock::time_point deadline = Clock::now() + to_duration(limits_.write_timeout_s);
  for (;;) {
    const ssize_t n = ::send(connection_.sock, ptr, size, MSG_NOSIGNAL | MSG_DONTWAIT);
    if (n >= 0) {
      bytes_written_ += static_cast<size_t>(n);
      return n;
    }
    if (errno == EINTR) continue;
    if (errno != EAGAIN && errno != EWOULDBLOCK) return -1;
    if (!wait_ready(connection_.sock, POLLOUT, deadline, connection_.listening)) return -1;
  }
}

}  // namespace

RequestFault current_request_fault() { return t_fault; }

bool serving_overflow() { return t_role == ConnectionRole::kOverflow; }

ApiError fault_error(RequestFault fault, const HttpLimits& limits) {
  switch (fault) {
    case RequestFault::kUriTooLong:
      return {414, fmt::format("The request line is longer than {} bytes", limits.max_header_bytes),
              "invalid_request_error", "", "uri_too_long"};
    case RequestFault::kHeadTooLarge:
      return {431,
              fmt::format("The request line and headers are larger than {} bytes",
                          limits.max_header_bytes),
              "invalid_request_error", "", "request_header_fields_too_large"};
    case RequestFault::kTooManyHeaders:
      return {431,
              fmt::format("The request has more than {} header lines", limits.max_header_lines),
              "invalid_request_error", "", "request_header_fields_too_large"};
    case RequestFault::kTimedOut:
      return {408,
              fmt::format("The request's headers and body did not arrive within {} s",
                          limits.read_timeout_s),
              "invalid_request_error", "", "request_timeout"};
    case RequestFault::kNone:
      break;
  }
  return {400, "Malformed HTTP request"};
}

GuardedHttpServer::GuardedHttpServer(const HttpLimits& limits) : limits_(limits) {
  const auto valid_timeout = [](double seconds) { return seconds > 0 && seconds <= kMaxTimeoutS; };
  DSMOE_CHECK(limits.n_threads > 0 && valid_timeout(limits.read_timeout_s) &&
                  valid_timeout(limits.write_timeout_s) && valid_timeout(limits.idle_timeout_s) &&
                  limits.max_header_bytes > 0 && limits.max_header_lines > 0 &&
                  limits.send_buffer_bytes >= 0 &&
                  limits.send_buffer_bytes <= std::numeric_limits<int>::max(),
              "HTTP limits must be positive, timeouts at most {} s (threads {}, timeouts {} / {} / "
              "{} s, header bytes {}, header lines {}, send buffer {})",
              kMaxTimeoutS, limits.n_threads, limits.read_timeout_s, limits.write_timeout_s,
              limits.idle_timeout_s, limits.max_header_bytes, limits.max_header_lines,
              limits.send_buffer_bytes);
  const auto n_threads = static_cast<size_t>(limits.n_threads);
  new_task_queue = [n_threads] { return new GuardedTaskQueue(n_threads); };
  // What the Keep-Alive header httplib writes announces.
  set_keep_alive_timeout(static_cast<time_t>(std::ceil(limits.idle_timeout_s)));
}

// httplib's own loop (process_server_socket) with the guarded stream, the idle timeout between
// requests, and a lingering close after a request that was cut short.
bool GuardedHttpServer::process_and_close_socket(socket_t sock) {
  if (limits_.send_buffer_bytes > 0) {
    const int bytes = static_cast<int>(limits_.send_buffer_bytes);
    ::setsockopt(sock, SOL_SOCKET, SO_SNDBUF, &bytes, sizeof(bytes));
  }
  Connection connection(sock, svr_sock_);
  const bool overflow = t_role == ConnectionRole::kOverflow;
  bool ok = false, linger = false;
  for (size_t count = keep_alive_max_count_; t_role != ConnectionRole::kDrop && count > 0;
       count--) {
    if (!wait_for_request(connection)) break;
    const double read_timeout_s =
        overflow ? std::min(limits_.read_timeout_s, kOverflowReadTimeoutS) : limits_.read_timeout_s;
    GuardedStream stream(connection, limits_, Clock::now() + to_duration(read_timeout_s));
    bool connection_closed = false;
    ok = process_request(stream, count == 1 || overflow, connection_closed, nullptr);
    const RequestFault fault = stream.fault();
    if (fault != RequestFault::kNone && stream.bytes_written() == 0) answer_fault(stream, fault);
    t_fault = RequestFault::kNone;
    linger = fault != RequestFault::kNone || overflow;
    if (!ok || connection_closed || linger) break;
  }
  close_connection(sock, linger);
  return ok;
}

bool GuardedHttpServer::wait_for_request(Connection& connection) const {
  if (connection.buffered()) return true;
  const double idle_timeout_s = t_role == ConnectionRole::kOverflow
                                    ? std::min(limits_.idle_timeout_s, kOverflowReadTimeoutS)
                                    : limits_.idle_timeout_s;
  return wait_ready(connection.sock, POLLIN, Clock::now() + to_duration(idle_timeout_s),
                    connection.listening);
}

// The answer to a request cut short before httplib parsed its request line (so it wrote none).
void GuardedHttpServer::answer_fault(httplib::Stream& stream, RequestFault fault) {
  const ApiError error = fault_error(fault, limits_);
  const std::string body = dump(error_body(error));
  const std::string out = fmt::format(
      "HTTP/1.1 {} {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: "
      "close\r\n\r\n{}",
      error.status, reason_phrase(error.status), body.size(), body);
  for (size_t offset = 0; offset < out.size();) {
    const ssize_t n = stream.write(out.data() + offset, out.size() - offset);
    if (n <= 0) break;
    offset += static_cast<size_t>(n);
  }
  if (on_own_answer) {
    httplib::Request req;
    req.method = req.path = std::string(1, '-');  // unknown (and GCC 12 mis-warns on "-")
    httplib::Response res;
    res.status = error.status;
    on_own_answer(req, res);
  }
}

}  // namespace dsmoe::server
