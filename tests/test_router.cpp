// Tests for model/router.h: expert selection (greedy, V2 group_limited_greedy, V3 noaux_tc with
// the bias correction), the gate weights of each architecture, and route_tokens end to end.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <random>
#include <set>
#include <vector>

#include "model/config.h"
#include "model/router.h"
#include "model/weights.h"
#include "tensor/tensor.h"

namespace dsmoe {
namespace {

ModelConfig router_config(Arch arch, TopkMethod method, int64_t n_experts, int64_t top_k,
                          int64_t n_group = 1, int64_t topk_group = 1) {
  ModelConfig c;
  c.arch = arch;
  c.topk_method = method;
  c.n_routed_experts = n_experts;
  c.num_experts_per_tok = top_k;
  c.n_group = n_group;
  c.topk_group = topk_group;
  c.norm_topk_prob = false;
  c.routed_scaling_factor = 1.0f;
  c.scoring_func = arch == Arch::kDeepseekV3 ? ScoringFunc::kSigmoid : ScoringFunc::kSoftmax;
  return c;
}

struct Selection {
  std::vector<int32_t> expert;
  std::vector<float> weight;
};

Selection select(const ModelConfig& c, const std::vector<float>& scores,
                 const std::vector<float>& bias = {}) {
  EXPECT_EQ(static_cast<int64_t>(scores.size()), c.n_routed_experts);
  Selection s;
  s.expert.assign(c.num_experts_per_tok, -1);
  s.weight.assign(c.num_experts_per_tok, -1.0f);
  select_experts(c, scores.data(), bias.empty() ? nullptr : bias.data(), s.expert.data(),
                 s.weight.data());
  return s;
}

using Experts = std::vector<int32_t>;

void expect_weights(const Selection& s, const std::vector<float>& expected) {
  ASSERT_EQ(s.weight.size(), expected.size());
  for (size_t j = 0; j < expected.size(); j++)
    EXPECT_NEAR(s.weight[j], expected[j], 1e-6f * std::max(1.0f, std::abs(expected[j])))
        << "weight " << j;
}

// ---------------------------------------------------------------------------------------------
// Greedy

TEST(RouterSelect, GreedyPicksLargestBestFirst) {
  ModelConfig c = router_config(Arch::kDeepseekV2, TopkMethod::kGreedy, 8, 3);
  const std::vector<float> scores = {0.05f, 0.30f, 0.02f, 0.18f, 0.25f, 0.01f, 0.15f, 0.04f};
  Selection s = select(c, scores);
  EXPECT_EQ(s.expert, (Experts{1, 4, 3}));
  expect_weights(s, {0.30f, 0.25f, 0.18f});
}

TEST(RouterSelect, TiesPickLowerExpertIndex) {
  ModelConfig c = router_config(Arch::kDeepseekV2, TopkMethod::kGreedy, 6, 3);
  Selection s = select(c, {0.1f, 0.2f, 0.3f, 0.2f, 0.3f, 0.2f});
  EXPECT_EQ(s.expert, (Experts{2, 4, 1}));
  s = select(c, {0.25f, 0.25f, 0.25f, 0.25f, 0.25f, 0.25f});
  EXPECT_EQ(s.expert, (Experts{0, 1, 2}));
  // Ties between groups keep the lower group: groups {0,1} {2,3} {4,5} all have max 0.5.
  c = router_config(Arch::kDeepseekV2, TopkMethod::kGroupLimitedGreedy, 6, 2, 3, 1);
  s = select(c, {0.1f, 0.5f, 0.5f, 0.2f, 0.3f, 0.5f});
  EXPECT_EQ(s.expert, (Experts{1, 0}));
}

// ---------------------------------------------------------------------------------------------
// V2 group_limited_greedy

TEST(RouterSelect, V2GroupLimitedKeepsGroupsWithLargestMax) {
  // 4 groups of 2. Group maxima 0.30, 0.25, 0.20, 0.02: keep groups 0 and 1. Group 2 holds 0.20
  // and 0.19, more than the kept 0.02 and 0.01, yet none of its experts may be picked.
  ModelConfig c = router_config(Arch::kDeepseekV2, TopkMethod::kGroupLimitedGreedy, 8, 3, 4, 2);
  const std::vector<float> scores = {0.30f, 0.01f, 0.02f, 0.25f, 0.20f, 0.19f, 0.02f, 0.005f};
  Selection s = select(c, scores);
  EXPECT_EQ(s.expert, (Experts{0, 3, 2}));
  expect_weights(s, {0.30f, 0.25f, 0.02f});
  // Plain greedy on the same scores would take expert 4.
  ModelConfig greedy = router_config(Arch::kDeepseekV2, TopkMethod::kGreedy, 8, 3);
  EXPECT_EQ(select(greedy, scores).expert, (Experts{0, 3, 4}));
}

TEST(RouterSelect, V2GroupScoreIsMaxNotSum) {
  // Group 0 = {0.40, 0.00} (max 0.40, top-2 sum 0.40); group 1 = {0.35, 0.30} (sum 0.65).
  // V2 keeps group 0 by its max.
  ModelConfig c = router_config(Arch::kDeepseekV2, TopkMethod::kGroupLimitedGreedy, 4, 2, 2, 1);
  Selection s = select(c, {0.40f, 0.00f, 0.35f, 0.30f});
  EXPECT_EQ(s.expert, (Experts{0, 1}));
}

TEST(RouterSelect, V2NormalisedWeightsAreNotScaled) {
  // DeepSeek-V2: if top_k > 1 and norm_topk_prob: normalise, else: multiply by the factor.
  ModelConfig c = router_config(Arch::kDeepseekV2, TopkMethod::kGreedy, 6, 3);
  c.routed_scaling_factor = 16.0f;
  const std::vector<float> scores = {0.1f, 0.4f, 0.05f, 0.2f, 0.15f, 0.1f};
  c.norm_topk_prob = true;
  Selection s = select(c, scores);
  EXPECT_EQ(s.expert, (Experts{1, 3, 4}));
  expect_weights(s, {0.4f / 0.75f, 0.2f / 0.75f, 0.15f / 0.75f});
  c.norm_topk_prob = false;
  s = select(c, scores);
  expect_weights(s, {0.4f * 16, 0.2f * 16, 0.15f * 16});
  // top_k == 1 with norm_topk_prob: V2 does not normalise, so it scales.
  c.norm_topk_prob = true;
  c.num_experts_per_tok = 1;
  s = select(c, scores);
  EXPECT_EQ(s.expert, (Experts{1}));
  expect_weights(s, {0.4f * 16});
}

// ---------------------------------------------------------------------------------------------
// V3 noaux_tc

TEST(RouterSelect, V3BiasChangesSelectionButNotWeights) {
  ModelConfig c = router_config(Arch::kDeepseekV3, TopkMethod::kNoauxTc, 4, 2, 1, 1);
  c.norm_topk_prob = true;
  c.routed_scaling_factor = 2.5f;
  const std::vector<float> scores = {0.9f, 0.8f, 0.7f, 0.1f};
  Selection s = select(c, scores, {0.0f, 0.0f, 0.0f, 0.0f});
  EXPECT_EQ(s.expert, (Experts{0, 1}));
  expect_weights(s, {0.9f / 1.7f * 2.5f, 0.8f / 1.7f * 2.5f});
  // Biased: 0.9, 0.8, 1.0, 0.1 -> experts 2 then 0; weights from the unbiased 0.7 and 0.9.
  s = select(c, scores, {0.0f, 0.0f, 0.3f, 0.0f});
  EXPECT_EQ(s.expert, (Experts{2, 0}));
  expect_weights(s, {0.7f / 1.6f * 2.5f, 0.9f / 1.6f * 2.5f});
  // Without normalisation the weights are the raw scores times the factor.
  c.norm_topk_prob = false;
  s = select(c, scores, {0.0f, 0.0f, 0.3f, 0.0f});
  EXPECT_EQ(s.expert, (Experts{2, 0}));
  expect_weights(s, {0.7f * 2.5f, 0.9f * 2.5f});
}

TEST(RouterSelect, V3GroupScoreIsSumOfTopTwoBiased) {
  // 4 groups of 2, keep 1 group, pick 2 experts.
  ModelConfig c = router_config(Arch::kDeepseekV3, TopkMethod::kNoauxTc, 8, 2, 4, 1);
  c.norm_topk_prob = true;
  c.routed_scaling_factor = 2.5f;
  const std::vector<float> scores = {0.9f, 0.0f, 0.6f, 0.5f, 0.3f, 0.2f, 0.1f, 0.05f};
  // Top-2 sums 0.9, 1.1, 0.5, 0.15: group 1 wins although group 0 holds the largest score.
  Selection s = select(c, scores, std::vector<float>(8, 0.0f));
  EXPECT_EQ(s.expert, (Experts{2, 3}));
  expect_weights(s, {0.6f / 1.1f * 2.5f, 0.5f / 1.1f * 2.5f});
  // A bias of 0.3 on expert 1 lifts group 0's biased sum to 1.2: group 0 wins, and expert 1
  // (raw score 0) is picked with weight 0.
  std::vector<float> bias(8, 0.0f);
  bias[1] = 0.3f;
  s = select(c, scores, bias);
  EXPECT_EQ(s.expert, (Experts{0, 1}));
  expect_weights(s, {2.5f, 0.0f});
}

TEST(RouterSelect, V3DroppedGroupsNeverChosenWithNegativeBiasedScores) {
  // All biased scores are negative. DeepSeek masks dropped groups with -inf, so masking with 0
  // (which would then beat every kept expert) must not happen.
  ModelConfig c = router_config(Arch::kDeepseekV3, TopkMethod::kNoauxTc, 8, 3, 4, 2);
  c.norm_topk_prob = true;
  c.routed_scaling_factor = 1.0f;
  const std::vector<float> scores = {0.2f, 0.1f, 0.9f, 0.8f, 0.3f, 0.25f, 0.85f, 0.7f};
  const std::vector<float> bias(8, -10.0f);
  Selection s = select(c, scores, bias);
  // Group sums: 0.3, 1.7, 0.55, 1.55 -> keep groups 1 and 3.
  EXPECT_EQ(s.expert, (Experts{2, 6, 3}));
  const float sum = 0.9f + 0.85f + 0.8f;
  expect_weights(s, {0.9f / sum, 0.85f / sum, 0.8f / sum});
  // Per-expert biases, all negative: still only experts of the kept groups.
  const std::vector<float> mixed = {-1.0f, -1.0f, -3.0f, -2.5f, -5.0f, -5.0f, -1.2f, -1.1f};
  // Biased: -0.8 -0.9 | -2.1 -1.7 | -4.7 -4.75 | -0.35 -0.4 -> sums -1.7, -3.8, -9.45, -0.75.
  s = select(c, scores, mixed);
  EXPECT_EQ(s.expert, (Experts{6, 7, 0}));
  for (int32_t e : s.expert) EXPECT_TRUE(e == 0 || e == 1 || e == 6 || e == 7) << e;
}

// ---------------------------------------------------------------------------------------------
// V1

TEST(RouterSelect, V1WeightsAreRawSoftmaxScores) {
  ModelConfig c = router_config(Arch::kDeepseekV1, TopkMethod::kGreedy, 6, 2);
  const std::vector<float> scores = {0.1f, 0.35f, 0.05f, 0.2f, 0.25f, 0.05f};
  Selection s = select(c, scores);
  EXPECT_EQ(s.expert, (Experts{1, 4}));
  expect_weights(s, {0.35f, 0.25f});
  // DeepSeekMoE normalises only when top_k > 1 and norm_topk_prob.
  c.norm_topk_prob = true;
  s = select(c, scores);
  expect_weights(s, {0.35f / 0.6f, 0.25f / 0.6f});
}

// ---------------------------------------------------------------------------------------------
// route_tokens

struct RouteCase {
  ModelConfig config;
  MoeWeights moe;
  std::vector<float> x;
  int64_t n_tokens;
};

RouteCase random_route_case(ScoringFunc scoring, TopkMethod method, int64_t n_tokens) {
  RouteCase r;
  ModelConfig& c = r.config;
  c = router_config(method == TopkMethod::kNoauxTc ? Arch::kDeepseekV3 : Arch::kDeepseekV2, method,
                    16, 4, 4, 2);
  c.scoring_func = scoring;
  c.hidden_size = 24;
  c.norm_topk_prob = true;
  c.routed_scaling_factor = 2.0f;
  r.n_tokens = n_tokens;
  std::mt19937 rng(2024 + static_cast<int>(scoring) * 7 + static_cast<int>(method));
  std::normal_distribution<float> normal(0.0f, 1.0f);
  r.moe.gate = Tensor::zeros({c.n_routed_experts, c.hidden_size});
  for (int64_t i = 0; i < r.moe.gate.numel(); i++) r.moe.gate.data[i] = normal(rng) * 0.3f;
  if (c.has_router_bias()) {
    r.moe.e_score_correction_bias = Tensor::zeros({c.n_routed_experts});
    for (int64_t e = 0; e < c.n_routed_experts; e++)
      r.moe.e_score_correction_bias.data[e] = normal(rng) * 0.1f;
  }
  r.x.resize(n_tokens * c.hidden_size);
  for (float& v : r.x) v = normal(rng);
  return r;
}

// Checks the routing against logits computed in double and select_experts on each row.
void check_routing(const RouteCase& r, const Routing& routing) {
  const ModelConfig& c = r.config;
  const int64_t E = c.n_routed_experts, H = c.hidden_size, k = c.num_experts_per_tok;
  ASSERT_EQ(routing.n_tokens, r.n_tokens);
  ASSERT_EQ(routing.top_k, k);
  ASSERT_EQ(static_cast<int64_t>(routing.scores.size()), r.n_tokens * E);
  ASSERT_EQ(static_cast<int64_t>(routing.expert.size()), r.n_tokens * k);
  ASSERT_EQ(static_cast<int64_t>(routing.weight.size()), r.n_tokens * k);
  for (int64_t t = 0; t < r.n_tokens; t++) {
    std::vector<double> logits(E);
    for (int64_t e = 0; e < E; e++)
      for (int64_t h = 0; h < H; h++)
        logits[e] += double(r.x[t * H + h]) * r.moe.gate.data[e * H + h];
    std::vector<double> expected(E);
    if (c.scoring_func == ScoringFunc::kSoftmax) {
      const double max = *std::max_element(logits.begin(), logits.end());
      double sum = 0;
      for (int64_t e = 0; e < E; e++) sum += expected[e] = std::exp(logits[e] - max);
      for (double& p : expected) p /= sum;
    } else {
      for (int64_t e = 0; e < E; e++) expected[e] = 1.0 / (1.0 + std::exp(-logits[e]));
    }
    const float* s = routing.scores.data() + t * E;
    double row_sum = 0;
    for (int64_t e = 0; e < E; e++) {
      EXPECT_NEAR(s[e], expected[e], 1e-5) << "t=" << t << " e=" << e;
      row_sum += s[e];
      if (c.scoring_func == ScoringFunc::kSigmoid) {
        EXPECT_GT(s[e], 0.0f);
        EXPECT_LT(s[e], 1.0f);
      }
    }
    if (c.scoring_func == ScoringFunc::kSoftmax) {
      EXPECT_NEAR(row_sum, 1.0, 1e-5) << "t=" << t;
    }
    // The decisions equal select_experts on the stored scores.
    std::vector<int32_t> expert(k);
    std::vector<float> weight(k);
    select_experts(c, s, c.has_router_bias() ? r.moe.e_score_correction_bias.data : nullptr,
                   expert.data(), weight.data());
    std::set<int32_t> distinct;
    double weight_sum = 0;
    for (int64_t j = 0; j < k; j++) {
      const int32_t e = routing.expert[t * k + j];
      EXPECT_EQ(e, expert[j]) << "t=" << t << " j=" << j;
      EXPECT_EQ(routing.weight[t * k + j], weight[j]) << "t=" << t << " j=" << j;
      EXPECT_TRUE(e >= 0 && e < E) << e;
      distinct.insert(e);
      weight_sum += routing.weight[t * k + j];
    }
    EXPECT_EQ(static_cast<int64_t>(distinct.size()), k) << "t=" << t;
    // norm_topk_prob: the weights sum to 1 (V2) or to routed_scaling_factor (V3).
    const double expected_sum = c.arch == Arch::kDeepseekV3 ? c.routed_scaling_factor : 1.0;
    EXPECT_NEAR(weight_sum, expected_sum, 1e-5) << "t=" << t;
  }
}

TEST(RouterRoute, SoftmaxScoresRowsSumToOne) {
  for (int64_t n_tokens : {1, 5, 13}) {  // 13 > 8: the parallel path
    SCOPED_TRACE(testing::Message() << "n_tokens=" << n_tokens);
    RouteCase r =
        random_route_case(ScoringFunc::kSoftmax, TopkMethod::kGroupLimitedGreedy, n_tokens);
    Routing routing;
    route_tokens(r.config, r.moe, r.x.data(), r.n_tokens, routing);
    check_routing(r, routing);
  }
}

TEST(RouterRoute, SigmoidScoresInUnitIntervalWithBias) {
  for (int64_t n_tokens : {1, 6, 17}) {
    SCOPED_TRACE(testing::Message() << "n_tokens=" << n_tokens);
    RouteCase r = random_route_case(ScoringFunc::kSigmoid, TopkMethod::kNoauxTc, n_tokens);
    Routing routing;
    route_tokens(r.config, r.moe, r.x.data(), r.n_tokens, routing);
    check_routing(r, routing);
  }
}

TEST(RouterRoute, GreedySoftmaxReusesRoutingBuffers) {
  RouteCase big = random_route_case(ScoringFunc::kSoftmax, TopkMethod::kGreedy, 12);
  RouteCase small = random_route_case(ScoringFunc::kSoftmax, TopkMethod::kGreedy, 3);
  Routing routing;
  route_tokens(big.config, big.moe, big.x.data(), big.n_tokens, routing);
  check_routing(big, routing);
  route_tokens(small.config, small.moe, small.x.data(), small.n_tokens, routing);
  check_routing(small, routing);
}

}  // namespace
}  // namespace dsmoe
