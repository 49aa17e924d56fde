#include "runtime/scheduler.h"

#include <algorithm>

#include "runtime/kv_cache.h"
#include "util/check.h"
#include "util/threads.h"

namespace dsmoe {
namespace {

using Clock = SequenceStream::Clock;

double seconds_between(Clock::time_point from, Clock::time_point to) {
  return std::chrono::duration<double>(to - from).count();
}

// Length of the longest suffix of text[from..] that is a proper prefix of a stop string: text
// that a later token may turn into a stop string, held back until that is decided.
size_t stop_prefix_length(const std::string& text, size_t from,
                          const std::vector<std::string>& stops) {
  const size_t available = text.size() - from;
  size_t longest = 0;
  for (const std::string& stop : stops)
    for (size_t k = std::min(stop.size() - 1, available); k > longest; k--)
      if (text.compare(text.size() - k, k, stop, 0, k) == 0) {
        longest = k;
        break;
      }
  return longest;
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// SequenceStream

bool SequenceStream::wait_update(StreamUpdate* update, std::chrono::milliseconds timeout) {
  std::unique_lock<std::mutex> lock(mutex_);
  const auto ready = [&] {
    return !pending_tokens_.empty() || !pending_text_.empty() ||
           (finish_ != FinishReason::kNone && !finish_delivered_);
  };
  if (!changed_.wait_for(lock, timeout, ready)) return false;
  update->text = std::move(pending_text_);
  pending_text_.clear();
  update->tokens = std::move(pending_tokens_);
  pending_tokens_.clear();
  update->finish = finish_;
  update->error = error_;
  if (finish_ != FinishReason::kNone) finish_delivered_ = true;
  return true;
}

bool SequenceStream::finished() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return finish_ != FinishReason::kNone;
}

int64_t SequenceStream::completion_tokens() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return completion_tokens_;
}

double SequenceStream::seconds_to_first_token() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return completion_tokens_ > 0 ? seconds_between(submitted_, first_token_) : -1.0;
}

double SequenceStream::seconds_total() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return seconds_between(submitted_, finish_ != FinishReason::kNone ? finished_ : Clock::now());
}

void SequenceStream::append(const std::string& text, int64_t token) {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    if (finish_ != FinishReason::kNone) return;
    if (completion_tokens_ == 0) first_token_ = Clock::now();
    pending_text_ += text;
    pending_tokens_.push_back(token);
    completion_tokens_++;
  }
  changed_.notify_all();
}

void SequenceStream::finish(FinishReason reason, const std::string& error) {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    if (finish_ != FinishReason::kNone) return;
    finish_ = reason;
    error_ = error;
    finished_ = Clock::now();
  }
  changed_.notify_all();
}

// ---------------------------------------------------------------------------------------------
// Scheduler

struct Scheduler::Sequence {
  explicit Sequence(GenerationRequest r)
      : request(std::move(r)),
        stream(std::make_shared<SequenceStream>(static_cast<int64_t>(request.prompt.size()))),
        rng(request.sampling.seed) {}

  GenerationRequest request;
  std::shared_ptr<SequenceStream> stream;
  Rng rng;
  std::unique_ptr<KvCache> cache;  // made at admission: prompt + max_tokens rows
  std::unique_ptr<TokenDecoder> decoder;
  int64_t n_prefilled = 0;         // prompt tokens in the cache
  std::vector<int64_t> generated;  // sampled tokens
  std::string text;                // their text (cut at a stop string)
  size_t n_sent = 0;               // bytes of text handed to the stream
  Clock::time_point submitted = Clock::now(), last_token;
};

Scheduler::Scheduler(const Model& model, const TextCodec& codec, SchedulerOptions options,
                     SchedulerObserver* observer)
    : model_(model), codec_(codec), options_(options), observer_(observer) {
  const int64_t max_positions = model.config().max_position_embeddings;
  if (options_.ctx_size <= 0) options_.ctx_size = std::min(max_positions, kDefaultMaxCtxSize);
  DSMOE_CHECK(options_.ctx_size <= max_positions,
              "the context of {} tokens exceeds the model's max_position_embeddings ({})",
              options_.ctx_size, max_positions);
  DSMOE_CHECK(options_.max_concurrent >= 1, "max concurrent sequences must be >= 1, got {}",
              options_.max_concurrent);
  DSMOE_CHECK(options_.max_queue >= 0, "max queue must be >= 0, got {}", options_.max_queue);
  DSMOE_CHECK(options_.prefill_chunk >= 1, "prefill chunk must be >= 1, got {}",
              options_.prefill_chunk);
}

Scheduler::~Scheduler() { stop(); }

std::shared_ptr<SequenceStream> Scheduler::submit(GenerationRequest request) {
  const int64_t n_prompt = static_cast<int64_t>(request.prompt.size());
  const int64_t vocab_size = model_.config().vocab_size;
  DSMOE_CHECK(n_prompt > 0, "the prompt is empty");
  for (int64_t id : request.prompt)
    DSMOE_CHECK(id >= 0 && id < vocab_size, "prompt token {} is outside the vocabulary [0, {})", id,
                vocab_size);
  DSMOE_CHECK(request.max_tokens >= 1, "max_tokens must be >= 1, got {}", request.max_tokens);
  DSMOE_CHECK(n_prompt + request.max_tokens <= options_.ctx_size,
              "{} prompt tokens + {} max_tokens exceed the context of {} tokens", n_prompt,
              request.max_tokens, options_.ctx_size);
  const SamplingParams& sampling = request.sampling;
  DSMOE_CHECK(sampling.temperature >= 0.0f && sampling.top_p > 0.0f && sampling.top_p <= 1.0f &&
                  sampling.top_k >= 0,
              "sampling needs temperature >= 0, top_p in (0, 1], top_k >= 0");
  for (const std::string& stop : request.stop) DSMOE_CHECK(!stop.empty(), "empty stop string");
  auto sequence = std::make_unique<Sequence>(std::move(request));
  std::shared_ptr<SequenceStream> stream = sequence->stream;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    if (stopping_ || static_cast<int64_t>(waiting_.size()) >= options_.max_queue) return nullptr;
    waiting_.push_back(std::move(sequence));
  }
  work_.notify_one();
  return stream;
}

void Scheduler::admit() {
  std::vector<std::unique_ptr<Sequence>> admitted;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    std::erase_if(waiting_, [](const std::unique_ptr<Sequence>& sequence) {
      if (!sequence->stream->cancelled()) return false;
      sequence->stream->finish(FinishReason::kCancelled);
      return true;
    });
    while (!waiting_.empty() &&
           static_cast<int64_t>(running_.size() + admitted.size()) < options_.max_concurrent) {
      admitted.push_back(std::move(waiting_.front()));
      waiting_.pop_front();
    }
    n_running_ = static_cast<int64_t>(running_.size() + admitted.size());
  }
  for (std::unique_ptr<Sequence>& sequence : admitted) {
    const int64_t capacity =
        static_cast<int64_t>(sequence->request.prompt.size()) + sequence->request.max_tokens;
    try {
      sequence->cache = std::make_unique<KvCache>(model_.config(), capacity);
    } catch (const std::exception& e) {  // std::bad_alloc: this request fails, the server lives
      sequence->stream->finish(FinishReason::kError,
                               fmt::format("no memory for a KV cache of {} tokens", capacity));
      continue;
    }
    sequence->decoder = codec_.decoder();
    running_.push_back(std::move(sequence));
  }
  n_running_ = static_cast<int64_t>(running_.size());
}

void Scheduler::drop_cancelled() {
  std::erase_if(running_, [](const std::unique_ptr<Sequence>& sequence) {
    if (!sequence->stream->cancelled()) return false;
    sequence->stream->finish(FinishReason::kCancelled);
    return true;  // its KV cache is freed here
  });
  n_running_ = static_cast<int64_t>(running_.size());
}

bool Scheduler::step() {
  drop_cancelled();  // first: a freed slot takes a waiting request in this very step
  admit();
  if (running_.empty()) return false;
  // One CachedStep per sequence: its next prefill chunk (a fixed size, so that the chunks of a
  // prompt do not depend on what else runs) or its last sampled token.
  std::vector<CachedStep> steps(running_.size());
  for (size_t i = 0; i < running_.size(); i++) {
    Sequence& sequence = *running_[i];
    const int64_t n_prompt = static_cast<int64_t>(sequence.request.prompt.size());
    CachedStep& step = steps[i];
    step.cache = &sequence.cache->view();
    if (sequence.n_prefilled < n_prompt) {
      step.ids = sequence.request.prompt.data() + sequence.n_prefilled;
      step.n_tokens = std::min(options_.prefill_chunk, n_prompt - sequence.n_prefilled);
    } else {
      step.ids = &sequence.generated.back();
      step.n_tokens = 1;
    }
  }
  Tensor logits;  // [running, V]: each step's last token
  try {
    logits = model_.forward_cached_batch(steps);
  } catch (const std::exception& e) {
    for (std::unique_ptr<Sequence>& sequence : running_)
      sequence->stream->finish(FinishReason::kError, e.what());
    running_.clear();
    n_running_ = 0;
    return true;
  }
  const int64_t vocab_size = model_.config().vocab_size;
  for (size_t i = 0; i < running_.size(); i++) {
    Sequence& sequence = *running_[i];
    sequence.cache->advance(steps[i].n_tokens);
    const int64_t n_prompt = static_cast<int64_t>(sequence.request.prompt.size());
    if (sequence.n_prefilled < n_prompt) {
      sequence.n_prefilled += steps[i].n_tokens;
      if (sequence.n_prefilled < n_prompt) continue;
    }
    const float* row = logits.data + static_cast<int64_t>(i) * vocab_size;
    emit_token(sequence, sample_token(row, vocab_size, sequence.request.sampling, sequence.rng));
  }
  std::erase_if(running_, [](const std::unique_ptr<Sequence>& sequence) {
    return sequence->stream->finished();
  });
  n_running_ = static_cast<int64_t>(running_.size());
  return true;
}

void Scheduler::emit_token(Sequence& sequence, int64_t token) {
  const Clock::time_point now = Clock::now();
  if (observer_ != nullptr) {
    if (sequence.generated.empty())
      observer_->on_first_token(seconds_between(sequence.submitted, now));
    else
      observer_->on_next_token(seconds_between(sequence.last_token, now));
  }
  sequence.last_token = now;
  sequence.generated.push_back(token);
  const GenerationRequest& request = sequence.request;
  const std::vector<int64_t>& stop_ids = codec_.stop_ids();
  const bool is_stop_id =
      !request.ignore_eos && std::find(stop_ids.begin(), stop_ids.end(), token) != stop_ids.end();
  FinishReason finish = is_stop_id ? FinishReason::kStop : FinishReason::kNone;
  if (!is_stop_id) sequence.text += sequence.decoder->push(token);
  const bool cache_full = sequence.cache->n_past() >= sequence.cache->capacity();
  if (finish == FinishReason::kNone &&
      (static_cast<int64_t>(sequence.generated.size()) >= request.max_tokens || cache_full))
    finish = FinishReason::kLength;
  if (finish != FinishReason::kNone) sequence.text += sequence.decoder->flush();
  // A stop string ends the text before it (it cannot start before n_sent: text that could
  // begin one is held back).
  size_t stop_at = std::string::npos;
  for (const std::string& stop : request.stop)
    stop_at = std::min(stop_at, sequence.text.find(stop, sequence.n_sent));
  if (stop_at != std::string::npos) {
    sequence.text.resize(stop_at);
    finish = FinishReason::kStop;
  }
  const size_t safe =
      finish != FinishReason::kNone
          ? sequence.text.size()
          : sequence.text.size() - stop_prefix_length(sequence.text, sequence.n_sent, request.stop);
  sequence.stream->append(sequence.text.substr(sequence.n_sent, safe - sequence.n_sent), token);
  sequence.n_sent = safe;
  if (finish != FinishReason::kNone) sequence.stream->finish(finish);
}

void Scheduler::start() {
  std::lock_guard<std::mutex> lock(mutex_);
  DSMOE_CHECK(!loop_.joinable(), "the scheduler is already running");
  stopping_ = false;
  // OpenMP's thread count is per thread: the loop's thread takes the caller's.
  loop_ = std::thread([this, n_threads = num_threads()] { run_loop(n_threads); });
}

void Scheduler::run_loop(int n_threads) {
  set_num_threads(n_threads);
  while (true) {
    {
      std::unique_lock<std::mutex> lock(mutex_);
      work_.wait(lock, [&] { return stopping_ || !waiting_.empty() || n_running_ > 0; });
      if (stopping_) return;
    }
    step();
  }
}

void Scheduler::stop() {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    stopping_ = true;
  }
  work_.notify_all();
  if (loop_.joinable()) loop_.join();
  std::lock_guard<std::mutex> lock(mutex_);
  for (std::unique_ptr<Sequence>& sequence : waiting_)
    sequence->stream->finish(FinishReason::kCancelled);
  for (std::unique_ptr<Sequence>& sequence : running_)
    sequence->stream->finish(FinishReason::kCancelled);
  waiting_.clear();
  running_.clear();
  n_running_ = 0;
}

int64_t Scheduler::n_waiting() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return static_cast<int64_t>(waiting_.size());
}

int64_t Scheduler::n_running() const { return n_running_; }

}  // namespace dsmoe
