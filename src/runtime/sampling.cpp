#include "runtime/sampling.h"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <vector>

#include "util/check.h"

namespace dsmoe {

namespace {

// What sampling draws from: the top-k tokens by logit, then the nucleus of them (the smallest
// prefix whose probability reaches top_p), with unnormalized weights exp((l - max) / T).
struct Nucleus {
  std::vector<int64_t> order;  // token ids, most likely first (the first `size` count)
  std::vector<double> weight;  // their weights
  int64_t size = 0;
  double total = 0.0;  // sum of the nucleus' weights
};

Nucleus nucleus(const float* logits, int64_t vocab_size, const SamplingParams& params) {
  Nucleus n;
  n.order.resize(vocab_size);
  std::iota(n.order.begin(), n.order.end(), 0);
  const int64_t keep = params.top_k > 0 ? std::min(params.top_k, vocab_size) : vocab_size;
  std::partial_sort(n.order.begin(), n.order.begin() + keep, n.order.end(),
                    [&](int64_t a, int64_t b) { return logits[a] > logits[b]; });
  n.weight.resize(keep);
  const double max_logit = logits[n.order[0]];
  double sum = 0.0;
  for (int64_t i = 0; i < keep; i++) {
    n.weight[i] = std::exp((logits[n.order[i]] - max_logit) / params.temperature);
    sum += n.weight[i];
  }
  double cumulative = 0.0;
  n.size = keep;
  for (int64_t i = 0; i < keep; i++) {
    cumulative += n.weight[i] / sum;
    if (cumulative >= params.top_p) {
      n.size = i + 1;
      break;
    }
  }
  for (int64_t i = 0; i < n.size; i++) n.total += n.weight[i];
  return n;
}

}  // namespace

int64_t sample_token(const float* logits, int64_t vocab_size, const SamplingParams& params,
                     Rng& rng) {
  DSMOE_CHECK(params.temperature >= 0.0f, "temperature must be >= 0, got {}", params.temperature);
  DSMOE_CHECK(params.top_p > 0.0f && params.top_p <= 1.0f, "top-p must be in (0, 1], got {}",
              params.top_p);
  DSMOE_CHECK(params.top_k >= 0, "top-k must be >= 0, got {}", params.top_k);
  if (params.temperature == 0.0f)  // greedy; ties go to the lowest id, as torch.argmax
    return std::max_element(logits, logits + vocab_size) - logits;
  const Nucleus n = nucleus(logits, vocab_size, params);
  double target = rng.uniform() * n.total;
  for (int64_t i = 0; i < n.size; i++) {
    target -= n.weight[i];
    if (target < 0.0) return n.order[i];
  }
  return n.order[n.size - 1];
}

void sampling_distribution(const float* logits, int64_t vocab_size, const SamplingParams& params,
                           std::vector<double>& probs) {
  probs.assign(vocab_size, 0.0);
  if (params.temperature == 0.0f) {
    Rng unused(0);
    probs[sample_token(logits, vocab_size, params, unused)] = 1.0;
    return;
  }
  const Nucleus n = nucleus(logits, vocab_size, params);
  for (int64_t i = 0; i < n.size; i++) probs[n.order[i]] = n.weight[i] / n.total;
}

int64_t sample_from(const std::vector<double>& probs, Rng& rng) {
  double total = 0.0;
  for (double p : probs) total += p;
  DSMOE_ASSERT(total > 0.0);
  double target = rng.uniform() * total;
  int64_t last = 0;
  for (size_t i = 0; i < probs.size(); i++) {
    if (probs[i] <= 0.0) continue;
    last = static_cast<int64_t>(i);
    target -= probs[i];
    if (target < 0.0) return last;
  }
  return last;
}

}  // namespace dsmoe
