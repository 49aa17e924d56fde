#include "runtime/speculative.h"

#include <algorithm>
#include <vector>

#include "runtime/kv_cache.h"
#include "runtime/sampling.h"
#include "util/check.h"
#include "util/log.h"

namespace dsmoe {
namespace {

// The MTP modules' state (DeepSeek-V3 sec. 2.2): module d (depth d = 1 .. D) at row i reads
// h^{d-1}_i (the main stack's last hidden state for d = 1, module d - 1's output otherwise) and
// token t_{i+d}, and predicts t_{i+d+1}. With tokens known through m (the newest, not yet in the
// main cache), draft j <= D is module j's prediction at row m - 1; its row reads the drafts
// before it as tokens. Module d's rows below its n_past are final (their tokens known: i + d <=
// m); `inputs` holds h^{d-1} of the rows from n_past on that the next catch-up reads (module 1:
// main hidden states, added as the main model verifies; module d >= 2: the one final row of
// module d - 1 past its own final rows, then that module's new outputs). Drafts past D chain the
// last module on its own output, one row further per draft; such rows are provisional.
class Drafter {
 public:
  Drafter(const Model& model, int64_t capacity, int64_t depths)
      : model_(model), hidden_(model.config().hidden_size), modules_(depths) {
    for (Module& module : modules_) {
      module.storage.assign(static_cast<size_t>(capacity * model.config().kv_cache_row()), 0.0f);
      module.view.layers = {module.storage.data()};
      module.view.capacity = capacity;
    }
  }

  int64_t depths() const { return static_cast<int64_t>(modules_.size()); }

  // New main hidden states [n, H] for the positions after those already pending.
  void add_hidden(const float* rows, int64_t n) {
    std::vector<float>& inputs = modules_[0].inputs;
    inputs.insert(inputs.end(), rows, rows + n * hidden_);
  }

  // Runs module d (1-based) over its rows from n_past to m - 1, the token of row i being
  // t_{i+d}: tokens[i + d] through m, then this step's drafts (step_ids[j] is draft j, step_ids[0]
  // = tokens[m]); returns the logits of row m - 1 (draft d's distribution). Its outputs become
  // module d + 1's inputs; afterwards rows up to m - d are final.
  Tensor draft_at_depth(const std::vector<int64_t>& tokens, const std::vector<int64_t>& step_ids,
                        int64_t m, int64_t d) {
    Module& module = modules_[d - 1];
    const int64_t first = module.view.n_past, n = m - first;
    DSMOE_ASSERT(n >= 1 && static_cast<int64_t>(module.inputs.size()) == n * hidden_);
    std::vector<int64_t> ids(n);
    for (int64_t i = first; i < m; i++)
      ids[i - first] = i + d <= m ? tokens[i + d] : step_ids[i + d - m];
    std::vector<float> h_out(n * hidden_);
    Tensor logits = model_.mtp_forward_cached(d - 1, module.inputs.data(), ids.data(), n,
                                              module.view, h_out.data());
    const int64_t final_end = std::max(first, m - d + 1);  // rows < final_end are final
    if (d < depths()) {
      std::vector<float>& next = modules_[d].inputs;  // rows from module d + 1's n_past on
      next.insert(next.end(), h_out.begin(), h_out.end());
    }
    // Keep the inputs of the rows from final_end on that stay valid: module 1's (main hidden
    // states) all; a deeper module's only where the module before it is final (one row).
    const int64_t keep_end = d == 1 ? m : modules_[d - 2].view.n_past;
    module.inputs.erase(module.inputs.begin(),
                        module.inputs.begin() + (final_end - first) * hidden_);
    module.inputs.resize(static_cast<size_t>((keep_end - final_end) * hidden_));
    module.view.n_past = final_end;
    last_.assign(h_out.end() - hidden_, h_out.end());
    return logits;
  }

  // Draft j > D: the last module again, on its own last output and the draft before, at row
  // m + j - D - 1 (provisional: its n_past does not move).
  Tensor draft_further(int64_t m, int64_t token, int64_t j) {
    Module& module = modules_.back();
    const int64_t final_end = module.view.n_past;
    module.view.n_past = m + j - depths() - 1;
    std::vector<float> h_out(hidden_);
    Tensor logits =
        model_.mtp_forward_cached(depths() - 1, last_.data(), &token, 1, module.view, h_out.data());
    module.view.n_past = final_end;
    last_ = std::move(h_out);
    return logits;
  }

 private:
  struct Module {
    std::vector<float> storage;  // (capacity, kv_cache_row) the module's one layer
    KvCacheView view;
    std::vector<float> inputs;  // (rows, H) h^{d-1} of rows n_past ..
  };
  const Model& model_;
  int64_t hidden_;
  std::vector<Module> modules_;
  std::vector<float> last_;  // (H) the last module run's output at its last row
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
  const auto n_modules = static_cast<int64_t>(model.weights().mtp.size());
  Drafter drafter(model, capacity, std::min(n_modules, draft_tokens));
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
    // Every module runs each step (its rows stay caught up), even where fewer drafts are left
    // than modules; drafts past the modules chain the last one.
    const int64_t n_drafts = std::max(K, drafter.depths());
    for (int64_t j = 1; j <= n_drafts; j++) {
      const Tensor draft_logits = j <= drafter.depths()
                                      ? drafter.draft_at_depth(tokens, step_ids, m, j)
                                      : drafter.draft_further(m, step_ids.back(), j);
      sampling_distribution(draft_logits.data, V, options.sampling, q[j - 1]);
      const int64_t draft = options.sampling.temperature == 0.0f
                                ? sample_token(draft_logits.data, V, options.sampling, rng)
                                : sample_from(q[j - 1], rng);
      step_ids.push_back(draft);
    }
    step_ids.resize(static_cast<size_t>(K + 1));
    if (local.main_forwards == 0)
      local.first_step_drafts.assign(step_ids.begin() + 1, step_ids.end());
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
