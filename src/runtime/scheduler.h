// scheduler.h: Scheduler, the one loop that owns the model when serving (vLLM's engine loop,
// llama-server's slots): requests are queued from any thread; each step admits waiting
// sequences up to max_concurrent, runs one prefill chunk of every prefilling sequence and one
// decode token of every other one in a single Model::forward_cached_batch call, samples each
// sequence's next token and hands the new text to its SequenceStream.
#pragma once
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "model/transformer.h"
#include "runtime/sampling.h"
#include "runtime/text_codec.h"

namespace dsmoe {

struct GenerationRequest {
  std::vector<int64_t> prompt;    // token ids, not empty
  int64_t max_tokens = 16;        // tokens to generate at most (>= 1)
  SamplingParams sampling;        // its seed seeds this request's own generator
  std::vector<std::string> stop;  // the text ends before the first of these (not included)
  bool ignore_eos = false;        // keep going past the codec's stop ids
};

enum class FinishReason { kNone, kStop, kLength, kCancelled, kError };
// "stop", "length", "cancelled", "error" (OpenAI's finish_reason for the first two).
inline const char* finish_reason_name(FinishReason reason) {
  switch (reason) {
    case FinishReason::kStop:
      return "stop";
    case FinishReason::kLength:
      return "length";
    case FinishReason::kCancelled:
      return "cancelled";
    case FinishReason::kError:
      return "error";
    case FinishReason::kNone:
      break;
  }
  return "none";
}

// New output of one sequence since the consumer last looked.
struct StreamUpdate {
  std::string text;
  std::vector<int64_t> tokens;                // the sampled ids (a stop id included)
  FinishReason finish = FinishReason::kNone;  // set once, in the last update
  std::string error;                          // when finish is kError
};

// What the scheduler (producer) and one request's consumer (an HTTP handler) share.
class SequenceStream {
 public:
  using Clock = std::chrono::steady_clock;

  // Consumer: waits up to `timeout` for output; false when nothing new came (and nothing is
  // left: the end was already handed over).
  bool wait_update(StreamUpdate* update, std::chrono::milliseconds timeout);
  // Consumer: the client went away; the scheduler frees the sequence at its next step.
  void cancel() { cancelled_ = true; }
  bool cancelled() const { return cancelled_; }
  bool finished() const;

  // Counts and timings (complete once finished).
  int64_t prompt_tokens() const { return prompt_tokens_; }
  int64_t completion_tokens() const;
  double seconds_to_first_token() const;  // -1 before the first token
  double seconds_total() const;           // submission to finish (or now)

  // Producer side (the scheduler).
  explicit SequenceStream(int64_t prompt_tokens) : prompt_tokens_(prompt_tokens) {}
  void append(const std::string& text, int64_t token);
  void finish(FinishReason reason, const std::string& error = "");

 private:
  mutable std::mutex mutex_;
  std::condition_variable changed_;
  std::string pending_text_;
  std::vector<int64_t> pending_tokens_;
  int64_t completion_tokens_ = 0;
  FinishReason finish_ = FinishReason::kNone;
  bool finish_delivered_ = false;
  std::string error_;
  std::atomic<bool> cancelled_{false};
  const int64_t prompt_tokens_;
  const Clock::time_point submitted_ = Clock::now();
  Clock::time_point first_token_{}, finished_{};
};

// Receives the scheduler's timings (server metrics); called on the scheduler's thread.
class SchedulerObserver {
 public:
  virtual ~SchedulerObserver() = default;
  virtual void on_first_token(double seconds_since_submit) = 0;
  virtual void on_next_token(double seconds_since_previous) = 0;
};

// The default context per sequence when the model allows more (llama-server's default): each
// running sequence may hold a KV cache this long.
constexpr int64_t kDefaultMaxCtxSize = 4096;

struct SchedulerOptions {
  int64_t max_concurrent = 8;   // sequences decoded together (each holds a KV cache)
  int64_t max_queue = 256;      // waiting requests beyond the running ones; then submit refuses
  int64_t ctx_size = 0;         // prompt + completion tokens per sequence; 0: the model's
                                // max_position_embeddings
  int64_t prefill_chunk = 256;  // prompt tokens per sequence and step
};

class Scheduler {
 public:
  Scheduler(const Model& model, const TextCodec& codec, SchedulerOptions options,
            SchedulerObserver* observer = nullptr);
  ~Scheduler();  // stops the loop; unfinished sequences end as cancelled

  // Any thread. The request must fit: prompt not empty, ids in the vocabulary, prompt +
  // max_tokens <= ctx_size() (an Error otherwise). nullptr when the queue is full.
  std::shared_ptr<SequenceStream> submit(GenerationRequest request);

  // Runs the loop on its own thread until stop() (or the destructor).
  void start();
  void stop();
  // One step on the calling thread (tests, without start()); false when there was nothing to do.
  bool step();

  int64_t n_waiting() const;
  int64_t n_running() const;
  int64_t ctx_size() const { return options_.ctx_size; }
  const SchedulerOptions& options() const { return options_; }

 private:
  struct Sequence;
  void admit();
  void drop_cancelled();
  void emit_token(Sequence& sequence, int64_t token);
  void run_loop(int n_threads);

  const Model& model_;
  const TextCodec& codec_;
  SchedulerOptions options_;
  SchedulerObserver* observer_;
  mutable std::mutex mutex_;  // guards waiting_, the counts and stopping_
  std::condition_variable work_;
  std::deque<std::unique_ptr<Sequence>> waiting_;
  std::vector<std::unique_ptr<Sequence>> running_;  // the step's thread only
  std::atomic<int64_t> n_running_{0};
  bool stopping_ = false;
  std::thread loop_;
};

}  // namespace dsmoe
