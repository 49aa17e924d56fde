#include "runtime/sampling.h"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <vector>

#include "util/check.h"

namespace dsmoe {

int64_t sample_token(const float* logits, int64_t vocab_size, const SamplingParams& params,
                     Rng& rng) {
  DSMOE_CHECK(params.temperature >= 0.0f, "temperature must be >= 0, got {}", params.temperature);
  DSMOE_CHECK(params.top_p > 0.0f && params.top_p <= 1.0f, "top-p must be in (0, 1], got {}",
              params.top_p);
  DSMOE_CHECK(params.top_k >= 0, "top-k must be >= 0, got {}", params.top_k);
  if (params.temperature == 0.0f)  // greedy; ties go to the lowest id, as torch.argmax
    return std::max_element(logits, logits + vocab_size) - logits;

  std::vector<int64_t> order(vocab_size);
  std::iota(order.begin(), order.end(), 0);
  int64_t keep = params.top_k > 0 ? std::min(params.top_k, vocab_size) : vocab_size;
  std::partial_sort(order.begin(), order.begin() + keep, order.end(),
                    [&](int64_t a, int64_t b) { return logits[a] > logits[b]; });
  std::vector<double> prob(keep);
  const double max_logit = logits[order[0]];
  double sum = 0.0;
  for (int64_t i = 0; i < keep; i++) {
    prob[i] = std::exp((logits[order[i]] - max_logit) / params.temperature);
    sum += prob[i];
  }
  // Nucleus: the smallest prefix of the sorted tokens whose probability reaches top_p.
  double cumulative = 0.0;
  int64_t n_nucleus = keep;
  for (int64_t i = 0; i < keep; i++) {
    cumulative += prob[i] / sum;
    if (cumulative >= params.top_p) {
      n_nucleus = i + 1;
      break;
    }
  }
  double nucleus_sum = 0.0;
  for (int64_t i = 0; i < n_nucleus; i++) nucleus_sum += prob[i];
  double target = rng.uniform() * nucleus_sum;
  for (int64_t i = 0; i < n_nucleus; i++) {
    target -= prob[i];
    if (target < 0.0) return order[i];
  }
  return order[n_nucleus - 1];
}

void sampling_distribution(const float* logits, int64_t vocab_size, const SamplingParams& params,
                           std::vector<double>& probs) {
  probs.assign(vocab_size, 0.0);
  if (params.temperature == 0.0f) {
    Rng unused(0);
    probs[sample_token(logits, vocab_size, params, unused)] = 1.0;
    return;
  }
  // sample_token's candidates and weights: the top-k, then the nucleus of them.
  std::vector<int64_t> order(vocab_size);
  std::iota(order.begin(), order.end(), 0);
  const int64_t keep = params.top_k > 0 ? std::min(params.top_k, vocab_size) : vocab_size;
  std::partial_sort(order.begin(), order.begin() + keep, order.end(),
                    [&](int64_t a, int64_t b) { return logits[a] > logits[b]; });
  std::vector<double> prob(keep);
  const double max_logit = logits[order[0]];
  double sum = 0.0;
  for (int64_t i = 0; i < keep; i++) {
    prob[i] = std::exp((logits[order[i]] - max_logit) / params.temperature);
    sum += prob[i];
  }
  double cumulative = 0.0;
  int64_t n_nucleus = keep;
  for (int64_t i = 0; i < keep; i++) {
    cumulative += prob[i] / sum;
    if (cumulative >= params.top_p) {
      n_nucleus = i + 1;
      break;
    }
  }
  double nucleus_sum = 0.0;
  for (int64_t i = 0; i < n_nucleus; i++) nucleus_sum += prob[i];
  for (int64_t i = 0; i < n_nucleus; i++) probs[order[i]] = prob[i] / nucleus_sum;
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
