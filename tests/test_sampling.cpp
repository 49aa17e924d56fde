// Sampling (runtime/sampling.h): the distribution that temperature, top-k and top-p define,
// computed in double here from the definition (softmax of logits / T over the top-k tokens, then
// the smallest most-likely-first prefix whose probability reaches top_p, renormalized), against
// sampling_distribution and against the frequencies of sample_token; on a vocabulary large enough
// that the nucleus is found past the first sorted chunk.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <random>
#include <vector>

#include "runtime/sampling.h"

namespace dsmoe {
namespace {

std::vector<double> expected_distribution(const std::vector<float>& logits,
                                          const SamplingParams& p) {
  const int64_t n = static_cast<int64_t>(logits.size());
  std::vector<int64_t> order(n);
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(),
                   [&](int64_t a, int64_t b) { return logits[a] > logits[b]; });
  const int64_t keep = p.top_k > 0 ? std::min(p.top_k, n) : n;
  std::vector<double> w(keep);
  double sum = 0;
  for (int64_t i = 0; i < keep; i++)
    sum += w[i] = std::exp((double{logits[order[i]]} - logits[order[0]]) / p.temperature);
  int64_t size = keep;
  double cumulative = 0;
  for (int64_t i = 0; i < keep && p.top_p < 1.0f; i++) {
    cumulative += w[i] / sum;
    if (cumulative >= p.top_p) {
      size = i + 1;
      break;
    }
  }
  std::vector<double> probs(n, 0.0);
  const double total = std::accumulate(w.begin(), w.begin() + size, 0.0);
  for (int64_t i = 0; i < size; i++) probs[order[i]] = w[i] / total;
  return probs;
}

TEST(Sampling, DistributionIsTheDefinition) {
  std::mt19937 gen(3);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  for (int64_t vocab : {7, 1000, 20000}) {
    std::vector<float> logits(vocab);
    for (float& l : logits) l = 3.0f * normal(gen);  // distinct values: no ties to order
    for (float t : {0.5f, 1.0f, 2.0f})
      for (int64_t k : {int64_t{0}, int64_t{1}, int64_t{5}, int64_t{300}})
        for (float top_p : {1.0f, 0.9f, 0.5f, 0.999f}) {
          const SamplingParams params{t, k, top_p, 0};
          std::vector<double> got;
          sampling_distribution(logits.data(), vocab, params, got);
          const std::vector<double> want = expected_distribution(logits, params);
          for (int64_t i = 0; i < vocab; i++)
            ASSERT_NEAR(got[i], want[i], 1e-9 * std::max(1.0, want[i] * vocab))
                << "vocab " << vocab << " T " << t << " k " << k << " top_p " << top_p << " token "
                << i;
        }
  }
}

TEST(Sampling, DrawsFollowTheDistribution) {
  std::vector<float> logits(1000, -5.0f);
  for (int i = 0; i < 8; i++) logits[100 * i + 3] = static_cast<float>(i) * 0.3f;
  const SamplingParams params{1.0f, 0, 0.95f, 0};
  std::vector<double> probs;
  sampling_distribution(logits.data(), 1000, params, probs);
  Rng rng(11);
  constexpr int kDraws = 20000;
  std::vector<int> count(1000, 0);
  for (int d = 0; d < kDraws; d++) count[sample_token(logits.data(), 1000, params, rng)]++;
  for (int i = 0; i < 1000; i++) {
    if (probs[i] == 0.0) {
      EXPECT_EQ(count[i], 0) << i;
      continue;
    }
    const double sd = std::sqrt(kDraws * probs[i] * (1 - probs[i]));
    EXPECT_NEAR(count[i], kDraws * probs[i], 5 * sd + 1) << i;  // 5 standard deviations
  }
}

}  // namespace
}  // namespace dsmoe
