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

}  // namespace dsmoe
