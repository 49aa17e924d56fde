// Tests for the balance losses (model/balance.h and the training paths of model/router.h and
// model/moe.h): every differentiable option against central differences of the objective on tiny
// random V2/V3 models, and the losses by hand (DeepSeek-V2 eq. 12-20, V3 eq. 17-20).
#include <cfloat>

#include "fd_check.h"
#include "tiny_models.h"

namespace dsmoe {
namespace {
// ---------------------------------------------------------------------------------------------
// Central differences of the training objective

constexpr uint64_t kNoiseSeed = 4242;

struct Eval {
  StepStats stats;
  ModelWeights grads;
  std::vector<std::vector<int32_t>> routes;  // chosen experts of every MoE layer
};

// One forward_backward. Noisy gating draws from a fresh generator with a fixed seed, so every
// evaluation sees the same noise.
Eval evaluate(const Model& model, const std::vector<int64_t>& ids, int64_t n_seqs, int64_t n_tokens,
              bool cross_entropy) {
  const ModelConfig& c = model.config();
  Eval e;
  e.grads = zeros_like_weights(c);
  Rng noise(kNoiseSeed);
  TrainOptions options;
  options.cross_entropy = cross_entropy;
  options.noise_rng = &noise;
  TrainActs acts;
  e.stats = model.forward_backward(ids.data(), n_seqs, n_tokens, e.grads, acts, options);
  for (int64_t L = 0; L < c.num_hidden_layers; L++)
    if (c.is_moe_layer(L)) e.routes.push_back(acts.layers[L].moe.routing.expert);
  return e;
}

struct FdCase {
  std::string name;
  json config;
  int64_t n_seqs = 2;
  int64_t n_tokens = 8;
  bool expect_drops = false;
};

void PrintTo(const FdCase& c, std::ostream* os) { *os << c.name; }

// d objective / d w along random directions u: central differences (fd_check.h: step and bound
// from float32 rounding and the measured truncation) against <grad, u>. The selection must stay
// the same at w +- h u and w +- 2h u (the objective is only piecewise smooth); fd_check tries
// smaller steps, then another direction is drawn. Returns false when no direction kept the
// routing.
bool check_tensor(Model& model, const Eval& base, const std::vector<int64_t>& ids, int64_t n_seqs,
                  int64_t n_tokens, const std::string& name, bool cross_entropy) {
  const ModelConfig& c = model.config();
  std::map<std::string, Tensor> weights = by_name(c, model.mutable_weights());
  ModelWeights grads = base.grads;
  std::map<std::string, Tensor> grad = by_name(c, grads);
  EXPECT_EQ(weights.count(name), 1u) << name;
  if (weights.count(name) == 0) return true;
  Tensor& p = weights[name];
  const std::vector<float> saved(p.data, p.data + p.numel());
  const double norm =
      std::sqrt(dot_and_magnitude(grad[name],
                                  std::vector<float>(grad[name].data, grad[name].data + p.numel()))
                    .first);
  // A gradient that is zero everywhere would pass trivially: each tensor here reaches J.
  EXPECT_GT(norm, 1e-4) << name;
  // w + t u is stored in float32 (off by eps |w_i| / 2 per element): f moves by up to
  // eps / 2 sum |g_i w_i| per evaluation, counted with |f| in the rounding term.
  const double w_magnitude = dot_and_magnitude(grad[name], saved).second;
  for (uint64_t attempt = 0; attempt < 20; attempt++) {
    const std::vector<float> u = random_normal(p.numel(), 1.0f, 77 + attempt);
    const auto [analytic, analytic_magnitude] = dot_and_magnitude(grad[name], u);
    // A direction nearly orthogonal to the gradient leaves a difference at the level of float
    // rounding in J: draw another (E <u, g>^2 = |g|^2).
    if (std::fabs(analytic) < 0.1 * norm) continue;
    const FdObjective objective = [&](double t) -> std::optional<double> {
      for (int64_t i = 0; i < p.numel(); i++) p.data[i] = saved[i] + static_cast<float>(t) * u[i];
      Eval e = evaluate(model, ids, n_seqs, n_tokens, cross_entropy);
      std::copy(saved.begin(), saved.end(), p.data);
      if (e.routes != base.routes) return std::nullopt;
      return e.stats.objective;
    };
    const std::optional<FdCheck> check =
        central_difference(objective, FLT_EPSILON, std::fabs(base.stats.objective) + w_magnitude,
                           analytic, analytic_magnitude, fd_steps(FLT_EPSILON));
    if (!check) continue;
    expect_holds(*check, name + (cross_entropy ? " (whole objective)" : " (balance losses alone)"));
    return true;
  }
  return false;
}

class BalanceGradient : public ::testing::TestWithParam<FdCase> {};

// The sharpest check differentiates the balance losses alone (cross_entropy = false, the
// objective is then aux_loss); the second differentiates the whole objective (CE + balance).
TEST_P(BalanceGradient, MatchesCentralDifferences) {
  const FdCase& fd = GetParam();
  const ModelConfig c = parse(fd.config);
  Model model(c, test_weights(c, 3));
  const std::vector<int64_t> ids = random_ids(fd.n_seqs * fd.n_tokens, c.vocab_size, 5);
  for (bool cross_entropy : {false, true}) {
    SCOPED_TRACE(cross_entropy ? "whole objective" : "balance losses alone");
    const Eval base = evaluate(model, ids, fd.n_seqs, fd.n_tokens, cross_entropy);
    ASSERT_GT(base.stats.aux_loss, 0.0);
    if (!cross_entropy) {
      EXPECT_EQ(base.stats.objective, base.stats.aux_loss);
    } else {
      EXPECT_NEAR(base.stats.objective, base.stats.loss + base.stats.aux_loss, 1e-12);
    }
    if (fd.expect_drops) {
      ASSERT_GT(base.stats.n_dropped, 0) << "the capacity case must drop assignments";
    } else {
      EXPECT_EQ(base.stats.n_dropped, 0);
    }
    // The expert the first MoE layer chooses most often: under capacity, one whose overflow
    // is dropped, so its gradient must come from the kept assignments only.
    std::vector<int64_t> chosen(c.n_routed_experts, 0);
    for (int32_t e : base.routes[0]) chosen[e]++;
    const int64_t busiest = std::max_element(chosen.begin(), chosen.end()) - chosen.begin();
    std::vector<std::string> names = {
        "model.layers.1.mlp.gate.weight", "model.layers.2.mlp.gate.weight",
        fmt::format("model.layers.1.mlp.experts.{}.up_proj.weight", busiest),
        "model.layers.0.self_attn.kv_a_proj_with_mqa.weight",
        "model.layers.1.self_attn.kv_a_proj_with_mqa.weight"};
    if (c.noisy_gating) {
      names.push_back("model.layers.1.mlp.gate.noise_weight");
      names.push_back("model.layers.2.mlp.gate.noise_weight");
    }
    for (const std::string& name : names)
      EXPECT_TRUE(check_tensor(model, base, ids, fd.n_seqs, fd.n_tokens, name, cross_entropy))
          << name << ": the routing changed under every direction tried";
  }
}

std::vector<FdCase> fd_cases() {
  // V2 device-limited: 2 devices of 4 experts, each token on 1 (with top-2 in 2 kept groups of
  // 2 it would equal greedy).
  const json v2 = tiny_v2_json("greedy"), v2_groups = with(tiny_v2_json("group_limited_greedy"),
                                                           {{"n_group", 2}, {"topk_group", 1}});
  const json v3 = tiny_v3_json();
  return {
      {"V2SoftmaxBatchWise", with(v2, {{"aux_loss_alpha", 0.1}})},
      {"V2SoftmaxSequenceWise", with(v2_groups, {{"aux_loss_alpha", 0.1}, {"seq_aux", true}}), 3},
      {"V3SigmoidBatchWise", with(v3, {{"aux_loss_alpha", 0.1}})},
      {"V3SigmoidSequenceWise", with(v3, {{"aux_loss_alpha", 0.1}, {"seq_aux", true}}), 3},
      {"DeviceLevelEpSize", with(v2, {{"moe_device_level_aux_loss_coeff", 0.1}, {"ep_size", 4}})},
      {"DeviceLevelGroups", with(v2_groups, {{"moe_device_level_aux_loss_coeff", 0.1}})},
      {"DeviceLevelSigmoid", with(v3, {{"moe_device_level_aux_loss_coeff", 0.1}})},
      {"CommGroups", with(v2_groups, {{"moe_comm_aux_loss_coeff", 0.1}})},
      {"CommSigmoidEpSize",
       with(v3,
            {{"moe_comm_aux_loss_coeff", 0.1}, {"ep_size", 2}, {"n_group", 2}, {"topk_group", 1}})},
      {"NoisyGatingSoftmax", with(v2, {{"aux_loss_alpha", 0.1}, {"noisy_gating", true}})},
      {"NoisyGatingSigmoid",
       with(v3, {{"aux_loss_alpha", 0.1}, {"seq_aux", true}, {"noisy_gating", true}}), 3},
      {"CapacitySoftmax", with(v2, {{"aux_loss_alpha", 0.1}, {"moe_expert_capacity_factor", 0.75}}),
       2, 8, true},
      {"CapacitySigmoid", with(v3, {{"aux_loss_alpha", 0.1}, {"moe_expert_capacity_factor", 1.0}}),
       3, 8, true},
      {"Everything",
       with(v3, {{"aux_loss_alpha", 0.1},
                 {"seq_aux", true},
                 {"moe_device_level_aux_loss_coeff", 0.05},
                 {"moe_comm_aux_loss_coeff", 0.02},
                 {"noisy_gating", true},
                 {"moe_expert_capacity_factor", 1.0}}),
       3, 8, true},
  };
}

INSTANTIATE_TEST_SUITE_P(Options, BalanceGradient, ::testing::ValuesIn(fd_cases()),
                         [](const auto& info) { return info.param.name; });

// The per-layer losses add up to StepStats.aux_loss; TrainOptions.balance_losses = false removes
// them from the objective and the gradient: the same gradients as a model without any alpha.
TEST(BalanceOptions, LayersSumAndSwitchingOffGivesThePlainGradient) {
  const json plain_json = with(tiny_v3_json(), {{"moe_expert_capacity_factor", 1.0}});
  const json options = {{"aux_loss_alpha", 0.1},
                        {"moe_device_level_aux_loss_coeff", 0.1},
                        {"moe_comm_aux_loss_coeff", 0.1}};
  const ModelConfig c = parse(with(plain_json, options)), plain = parse(plain_json);
  const ModelWeights w = test_weights(c, 61);
  const std::vector<int64_t> ids = random_ids(2 * 8, c.vocab_size, 67);
  const Model model(c, w), plain_model(plain, w);
  const Eval on = evaluate(model, ids, 2, 8, true);
  double sum = 0.0;
  ASSERT_EQ(on.stats.aux.size(), 2u);
  for (const auto& [layer, losses] : on.stats.aux) {
    EXPECT_GT(losses.expert, 0.0) << layer;
    EXPECT_GT(losses.device, 0.0) << layer;
    EXPECT_GT(losses.comm, 0.0) << layer;
    sum += losses.total();
  }
  EXPECT_NEAR(on.stats.aux_loss, sum, 1e-12);
  ModelWeights grads_off = zeros_like_weights(c), grads_plain = zeros_like_weights(plain);
  TrainActs acts;
  TrainOptions off;
  off.balance_losses = false;
  const StepStats s_off = model.forward_backward(ids.data(), 2, 8, grads_off, acts, off);
  const StepStats s_plain = plain_model.forward_backward(ids.data(), 2, 8, grads_plain, acts);
  EXPECT_EQ(s_off.aux_loss, 0.0);
  EXPECT_EQ(s_off.objective, s_off.loss);
  EXPECT_EQ(s_off.loss, s_plain.loss);
  std::map<std::string, Tensor> a = by_name(c, grads_off), b = by_name(plain, grads_plain);
  for (const auto& [name, t] : a)
    for (int64_t i = 0; i < t.numel(); i++)
      ASSERT_EQ(t.data[i], b[name].data[i]) << name << " " << i;
}

// ---------------------------------------------------------------------------------------------
// (e) The loss values by hand (DeepSeek-V2 eq. 12-20, DeepSeek-V3 eq. 17-20)

// 4 experts top-2 on 2 devices (experts {0,1} and {2,3}), 4 tokens = 2 sequences of 2.
// Counts: e0 3, e1 2, e2 2, e3 1, so f = E / (K T) count = [1.5, 1, 1, 0.5];
// P = column means = [0.2375, 0.2875, 0.3375, 0.1375]; sum f P = 1.05.
// Per sequence: seq 0 f = [1, 2, 1, 0], P = [0.25, 0.4, 0.25, 0.1], sum = 1.3; seq 1
// f = [2, 0, 1, 1], P = [0.225, 0.175, 0.425, 0.175], sum = 1.05; mean 1.175.
// Device: f' = mean of f over the device = [1.25, 0.75], P' = sum of P = [0.525, 0.475],
// sum f' P' = 1.0125. Communication (M = min(K, D) = 2): tokens sent to device 0: 4, device 1:
// 3, f'' = D / (M T) sent = [1, 0.75], sum f'' P'' = 0.88125.
struct HandCase {
  ModelConfig config;
  Routing routing;
};

HandCase hand_case(ScoringFunc scoring) {
  HandCase h;
  ModelConfig& c = h.config;
  c.arch = Arch::kDeepseekV2;
  c.n_routed_experts = 4;
  c.num_experts_per_tok = 2;
  c.topk_method = TopkMethod::kGreedy;
  c.scoring_func = scoring;
  c.ep_size = 2;
  c.aux_loss_alpha = 0.3f;
  c.device_aux_loss_alpha = 0.05f;
  c.comm_aux_loss_alpha = 0.02f;
  Routing& r = h.routing;
  r.n_tokens = 4;
  r.top_k = 2;
  r.expert = {0, 1, 1, 2, 0, 3, 2, 0};
  r.weight = {0.4f, 0.3f, 0.5f, 0.3f, 0.25f, 0.25f, 0.6f, 0.2f};
  r.scores = {0.4f,  0.3f,  0.2f,  0.1f,   // token 0
              0.1f,  0.5f,  0.3f,  0.1f,   // token 1
              0.25f, 0.25f, 0.25f, 0.25f,  // token 2
              0.2f,  0.1f,  0.6f,  0.1f};  // token 3
  if (scoring == ScoringFunc::kSigmoid) {
    // Rows scaled by 2, 1.5, 3, 1.25: normalised per token (V3 eq. 19) they are the rows above.
    const float row_scale[4] = {2.0f, 1.5f, 3.0f, 1.25f};
    for (int t = 0; t < 4; t++)
      for (int e = 0; e < 4; e++) r.scores[t * 4 + e] *= row_scale[t];
  }
  return h;
}

TEST(BalanceLossValues, ExpertDeviceAndCommunicationByHand) {
  for (ScoringFunc scoring : {ScoringFunc::kSoftmax, ScoringFunc::kSigmoid}) {
    SCOPED_TRACE(scoring == ScoringFunc::kSoftmax ? "softmax" : "sigmoid (normalised)");
    HandCase h = hand_case(scoring);
    ASSERT_EQ(h.config.n_devices(), 2);
    ASSERT_EQ(h.config.max_devices_per_token(), 2);
    BalanceLosses batch = balance_losses(h.config, h.routing, 1, 4, nullptr);
    EXPECT_NEAR(batch.expert, 0.3 * 1.05, 1e-6);
    EXPECT_NEAR(batch.device, 0.05 * 1.0125, 1e-6);
    EXPECT_NEAR(batch.comm, 0.02 * 0.88125, 1e-6);
    EXPECT_NEAR(batch.total(), 0.3 * 1.05 + 0.05 * 1.0125 + 0.02 * 0.88125, 1e-6);
    h.config.seq_aux = true;  // the expert-level loss per sequence; device and comm stay batch-wise
    BalanceLosses seq = balance_losses(h.config, h.routing, 2, 2, nullptr);
    EXPECT_NEAR(seq.expert, 0.3 * 1.175, 1e-6);
    EXPECT_NEAR(seq.device, batch.device, 1e-9);
    EXPECT_NEAR(seq.comm, batch.comm, 1e-9);
  }
}

TEST(BalanceLossValues, OnlyConfiguredLossesAreComputed) {
  HandCase h = hand_case(ScoringFunc::kSoftmax);
  h.config.device_aux_loss_alpha = 0.0f;
  h.config.comm_aux_loss_alpha = 0.0f;
  BalanceLosses l = balance_losses(h.config, h.routing, 1, 4, nullptr);
  EXPECT_NEAR(l.expert, 0.3 * 1.05, 1e-6);
  EXPECT_EQ(l.device, 0.0);
  EXPECT_EQ(l.comm, 0.0);
  h.config.aux_loss_alpha = 0.0f;
  h.config.comm_aux_loss_alpha = 0.5f;
  l = balance_losses(h.config, h.routing, 1, 4, nullptr);
  EXPECT_EQ(l.expert, 0.0);
  EXPECT_EQ(l.device, 0.0);
  EXPECT_NEAR(l.comm, 0.5 * 0.88125, 1e-6);
}

// The counts f are constants (as in the reference), so d loss / d s_{t,e} = (alpha1 f_e +
// alpha2 f'_d(e) + alpha3 f''_d(e)) / T under softmax scores.
TEST(BalanceLossValues, ScoreGradientByHand) {
  HandCase h = hand_case(ScoringFunc::kSoftmax);
  std::vector<float> d(16, 0.0f);
  balance_losses(h.config, h.routing, 1, 4, d.data());
  const double f[4] = {1.5, 1.0, 1.0, 0.5}, f_dev[2] = {1.25, 0.75}, f_comm[2] = {1.0, 0.75};
  for (int t = 0; t < 4; t++)
    for (int e = 0; e < 4; e++)
      EXPECT_NEAR(d[t * 4 + e], (0.3 * f[e] + 0.05 * f_dev[e / 2] + 0.02 * f_comm[e / 2]) / 4, 1e-7)
          << "token " << t << " expert " << e;
  // Per sequence: each sequence's f over its own T = 2 tokens, the mean over the 2 sequences.
  h.config.seq_aux = true;
  h.config.device_aux_loss_alpha = h.config.comm_aux_loss_alpha = 0.0f;
  std::fill(d.begin(), d.end(), 0.0f);
  balance_losses(h.config, h.routing, 2, 2, d.data());
  const double f_seq[2][4] = {{1, 2, 1, 0}, {2, 0, 1, 1}};
  for (int t = 0; t < 4; t++)
    for (int e = 0; e < 4; e++)
      EXPECT_NEAR(d[t * 4 + e], 0.3 * f_seq[t / 2][e] / 2 / 2, 1e-7)
          << "token " << t << " expert " << e;
}

// Under sigmoid scores the gradient goes through the per-token normalisation: central
// differences on every raw score (fd_check.h). The normalised scores are float32 (|f| carries
// their rounding); the steps are powers of two, and s +- t is exact in float32 for these scores
// (checked), so the differences see the intended steps. The scores are O(1): scale 1.
TEST(BalanceLossValues, NormalisedScoreGradientMatchesDifferences) {
  HandCase h = hand_case(ScoringFunc::kSigmoid);
  std::vector<double> steps;
  for (double t : fd_steps(FLT_EPSILON)) steps.push_back(std::exp2(std::round(std::log2(t))));
  for (bool seq_aux : {false, true}) {
    h.config.seq_aux = seq_aux;
    std::vector<float> d(16, 0.0f);
    const double loss = balance_losses(h.config, h.routing, 2, 2, d.data()).total();
    for (int i = 0; i < 16; i++) {
      const float score = h.routing.scores[i];
      const FdObjective objective = [&](double t) -> std::optional<double> {
        Routing r = h.routing;
        r.scores[i] = score + static_cast<float>(t);
        EXPECT_EQ(static_cast<double>(r.scores[i]) - score, t) << "score " << i;
        return balance_losses(h.config, r, 2, 2, nullptr).total();
      };
      // The direction is the unit vector of score i: <d, u> = d[i].
      const std::optional<FdCheck> check =
          central_difference(objective, FLT_EPSILON, std::fabs(loss), d[i], std::fabs(d[i]), steps);
      ASSERT_TRUE(check.has_value());
      expect_holds(*check, fmt::format("score {}{}", i, seq_aux ? " (per sequence)" : ""));
    }
  }
}

// Loads exclude dropped assignments; the loss's counts f are the router's choices (before
// capacity), as Megatron-Core counts them.
TEST(BalanceLossValues, LoadsExcludeDropsButLossCountsChoices) {
  HandCase h = hand_case(ScoringFunc::kSoftmax);
  EXPECT_EQ(expert_loads(h.config, h.routing), (std::vector<int64_t>{3, 2, 2, 1}));
  const double before = balance_losses(h.config, h.routing, 1, 4, nullptr).total();
  h.routing.dropped = {0, 0, 0, 0, 0, 0, 1, 0};  // token 3's expert 2
  h.routing.n_dropped = 1;
  EXPECT_EQ(expert_loads(h.config, h.routing), (std::vector<int64_t>{3, 2, 1, 1}));
  EXPECT_EQ(balance_losses(h.config, h.routing, 1, 4, nullptr).total(), before);
}

}  // namespace
}  // namespace dsmoe
