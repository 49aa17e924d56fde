#include "runtime/sampling.h"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <vector>

#include "util/check.h"

namespace dsmoe {

namespace {

// What sampling draws from: the top-k tokens by logit, then the nucleus of them (the smallest
// prefix, most likely first, whose probability reaches top_p), with unnormalized weights
// exp((l - max) / T). Only what needs an order is sorted: nothing when top_p is 1 (the top-k
// tokens in any order), else the most likely tokens in growing chunks until the nucleus is
// complete; a full sort of a 129k vocabulary per token was most of a sampled step's time.
struct Nucleus {
  std::vector<int64_t> order;  // token ids (the first `size` count), most likely first if top_p < 1
  std::vector<double> weight;  // their weights
  int64_t size = 0;
  double total = 0.0;  // sum of the nucleus' weights
};

Nucleus nucleus(const float* logits, int64_t vocab_size, const SamplingParams& params) {
  Nucleus n;
  n.order.resize(vocab_size);
  std::iota(n.order.begin(), n.order.end(), 0);
  const auto more_likely = [&](int64_t a, int64_t b) { return logits[a] > logits[b]; };
  const int64_t keep = params.top_k > 0 ? std::min(params.top_k, vocab_size) : vocab_size;
  if (keep < vocab_size)
    std::nth_element(n.order.begin(), n.order.begin() + keep - 1, n.order.end(), more_likely);
  const double max_logit = *std::max_element(logits, logits + vocab_size);
  const auto weight_of = [&](int64_t id) {
    return std::exp((logits[id] - max_logit) / params.temperature);
  };
  // The candidates' weights in their present order: with top_p = 1 nothing reorders them.
  n.weight.resize(keep);
  double sum = 0.0;
  for (int64_t i = 0; i < keep; i++) sum += n.weight[i] = weight_of(n.order[i]);
  n.size = keep;
  if (params.top_p < 1.0f) {
    double cumulative = 0.0;
    bool complete = false;
    for (int64_t sorted = 0, chunk = 256; sorted < keep && !complete; chunk *= 8) {
      const int64_t end = std::min(keep, sorted + chunk);
      std::partial_sort(n.order.begin() + sorted, n.order.begin() + end, n.order.begin() + keep,
                        more_likely);
      for (; sorted < end; sorted++) {
        cumulative += weight_of(n.order[sorted]) / sum;
        if (cumulative >= params.top_p) {
          n.size = sorted + 1, complete = true;
          break;
        }
      }
    }
  }
  n.weight.resize(n.size);
  // Sorting reordered the candidates (top_p < 1): the nucleus' weights again, in its order.
  if (params.top_p < 1.0f)
    for (int64_t i = 0; i < n.size; i++) n.weight[i] = weight_of(n.order[i]);
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
