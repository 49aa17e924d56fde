#include "runtime/speculative.h"

#include <algorithm>
#include <vector>

#include "runtime/kv_cache.h"
#include "runtime/sampling.h"
#include "util/check.h"
#include "util/log.h"

namespace dsmoe {
namespace {

// The first MTP module's state. Its row i (RoPE position i, as in training) reads the main
// stack's last hidden state at position i and token i + 1; rows below view.n_past are final,
// `pending` holds the main hidden states of the rows from view.n_past on that the next catch-up
// reads. Rows past the known tokens are drafts, overwritten by the next catch-up.
class Drafter {
 public:
  Drafter(const Model& model, int64_t capacity)
      : model_(model),
        hidden_(model.config().hidden_size),
        storage_(static_cast<size_t>(capacity * model.config().kv_cache_row()), 0.0f) {
    view_.layers = {storage_.data()};
    view_.capacity = capacity;
  }

  // New main hidden states [n, H] for the positions after those already pending.
  void add_hidden(const float* rows, int64_t n) {
    pending_.insert(pending_.end(), rows, rows + n * hidden_);
  }

  // Runs the pending rows (positions n_past .. m - 1, tokens[n_past + 1 .. m]); returns the
  // logits of row m - 1 (the draft of token m + 1) and keeps its output for further drafts.
  Tensor catch_up(const std::vector<int64_t>& tokens, int64_t m) {
    const int64_t n = m - view_.n_past;
    DSMOE_ASSERT(n >= 1 && static_cast<int64_t>(pending_.size()) == n * hidden_);
    std::vector<float> h_out(n * hidden_);
    Tensor logits = model_.mtp_forward_cached(0, pending_.data(), tokens.data() + view_.n_past + 1,
                                              n, view_, h_out.data());
    view_.n_past = m;
    last_.assign(h_out.end() - hidden_, h_out.end());
    pending_.clear();
    return logits;
  }

  // Draft j >= 2: the module again at position m + j - 2 on its own last output and the draft
  // before; the row is provisional (n_past stays at m).
  Tensor draft_further(int64_t token, int64_t j) {
    const int64_t m = view_.n_past;
    view_.n_past = m + j - 2;
    std::vector<float> h_out(hidden_);
    Tensor logits = model_.mtp_forward_cached(0, last_.data(), &token, 1, view_, h_out.data());
    view_.n_past = m;
    last_ = std::move(h_out);
    return logits;
  }

 private:
  const Model& model_;
  int64_t hidden_;
  std::vector<float> storage_;  // (capacity, kv_cache_row) the module's one layer
  KvCacheView view_;
  std::vector<float> pending_;  // (rows, H)
  std::vector<float> last_;     // (H) the last row's output
};

// Whether the verifier keeps draft d: greedy, when it is the verifier's own choice; sampling,
// with probability min(1, p(d) / q(d)), else *replacement is drawn from norm(max(0, p - q)).
bool accept_draft(const float* logits, int64_t vocab, const SamplingParams& params, int64_t draft,
                  const std::vector<double>& q, Rng& rng, int64_t* replacement) {
  if (params.temperature == 0.0f) {
    *replacement = sample_token(logits, vocab, params, rng);
    return *replacement == draft;
  }
  std::vector<double> p;
  sampling_distribution(logits, vocab, params, p);
  if (rng.uniform() * q[draft] < p[draft]) return true;
  std::vector<double> residual(vocab);
  double total = 0.0;
  for (int64_t v = 0; v < vocab; v++) total += residual[v] = std::max(0.0, p[v] - q[v]);
  *replacement = sample_from(total > 0.0 ? residual : p, rng);
  return false;
}

}  // namespace

std::vector<int64_t> generate_speculative(const Model& model, const std::vector<int64_t>& prompt,
                                          const GenerateOptions& options, int64_t draft_tokens,
                                          SpeculativeStats* stats) {
  const ModelConfig& c = model.config();
  const int64_t V = c.vocab_size;
  DSMOE_CHECK(!prompt.empty(), "the prompt is empty");
  DSMOE_CHECK(options.max_new_tokens >= 0, "max new tokens must be >= 0");
  DSMOE_CHECK(draft_tokens >= 1, "--draft-tokens must be at least 1, got {}", draft_tokens);
  DSMOE_CHECK(!model.weights().mtp.empty(),
              "--speculative mtp needs a model with MTP modules (num_nextn_predict_layers and "
              "model.layers.{}.eh_proj.weight in the checkpoint)",
              c.num_hidden_layers);
  const auto P = static_cast<int64_t>(prompt.size());
  const int64_t capacity = P + std::max<int64_t>(options.max_new_tokens, 1) + draft_tokens + 1;
  KvCache cache(c, capacity);
  Drafter drafter(model, capacity);
  Rng rng(options.sampling.seed);
  SpeculativeStats local;
  local.generate.prompt_tokens = P;
  local.generate.cache_bytes_per_token = cache.bytes_per_token();
  std::vector<int64_t> tokens = prompt;
  bool done = options.max_new_tokens == 0;
  auto emit = [&](int64_t token) {  // false once generation is over
    tokens.push_back(token);
    local.generate.new_tokens++;
    if (options.on_token) options.on_token(token);
    done = local.generate.new_tokens >= options.max_new_tokens || is_stop_token(options, c, token);
    return !done;
  };

  Timer timer;
  ForwardRecord record;
  record.keep_last_hidden = true;
  Tensor logits = model.forward_cached(prompt.data(), P, cache.view(), &record);
  cache.advance(P);
  drafter.add_hidden(record.last_hidden.data, P);
  local.generate.prefill_seconds = timer.seconds();
  timer.reset();
  if (!done) emit(sample_token(logits.data, V, options.sampling, rng));
  std::vector<std::vector<double>> q(draft_tokens);  // the drafts' distributions
  std::vector<int64_t> step_ids;
  while (!done) {
    const int64_t m = cache.n_past();  // tokens[m] is the newest token, not yet in the cache
    const int64_t left = options.max_new_tokens - local.generate.new_tokens;
    const int64_t K = std::min(draft_tokens, std::max<int64_t>(left - 1, 1));
    step_ids.assign(1, tokens[m]);
    Timer part;
    Tensor draft_logits = drafter.catch_up(tokens, m);
    for (int64_t j = 1; j <= K; j++) {
      if (j > 1) draft_logits = drafter.draft_further(step_ids.back(), j);
      sampling_distribution(draft_logits.data, V, options.sampling, q[j - 1]);
      const int64_t draft = options.sampling.temperature == 0.0f
                                ? sample_token(draft_logits.data, V, options.sampling, rng)
                                : sample_from(q[j - 1], rng);
      step_ids.push_back(draft);
    }
    local.draft_seconds += part.seconds();
    part.reset();
    // One main forward over the newest token and the drafts, every row's logits (each as
    // decoding it alone would give: Model::forward_cached_batch).
    const Tensor verified =
        model.forward_cached_batch({{step_ids.data(), K + 1, &cache.view(), true}}, &record);
    local.verify_seconds += part.seconds();
    local.main_forwards++;
    local.drafted += K;
    int64_t n_accepted = 0, next = -1;
    while (n_accepted < K && accept_draft(verified.data + n_accepted * V, V, options.sampling,
                                          step_ids[n_accepted + 1], q[n_accepted], rng, &next))
      n_accepted++;
    if (n_accepted == K) next = sample_token(verified.data + K * V, V, options.sampling, rng);
    local.accepted += n_accepted;
    // Keep the newest token and the accepted drafts in the cache; the rest is rolled back.
    cache.view().n_past = m + n_accepted + 1;
    drafter.add_hidden(record.last_hidden.data, n_accepted + 1);
    const int64_t before = local.generate.new_tokens;
    for (int64_t j = 1; j <= n_accepted && !done; j++) emit(step_ids[j]);
    if (!done) emit(next);
    local.decode_tokens += local.generate.new_tokens - before;
  }
  local.generate.decode_seconds = timer.seconds();
  if (stats != nullptr) *stats = local;
  return tokens;
}

}  // namespace dsmoe
