// Tests for model/mtp.h: DeepSeek-V3 multi-token prediction in training on a tiny random V3
// model: the whole objective's gradient against central differences, L_k against a
// computation built by hand per sequence, and the paths where MTP is off or absent.
#include <gtest/gtest.h>

#include <cfloat>
#include <cmath>
#include <map>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "fd_check.h"
#include "kernels/cpu/ops.h"
#include "model/config.h"
#include "model/layer.h"
#include "model/mtp.h"
#include "model/rope.h"
#include "model/transformer.h"
#include "model/weights.h"
#include "tensor/random.h"
#include "util/check.h"

namespace dsmoe {
namespace {

// Hidden 32, 2 layers (dense, MoE), 8 routed experts top-2 in 2 groups, 1 shared, MLA with q LoRA.
// MTP blocks are layers 2 and 3: both MoE.
ModelConfig tiny_v3(int64_t n_mtp, bool balance) {
  nlohmann::json json = {{"model_type", "deepseek_v3"},
                         {"vocab_size", 64},
                         {"hidden_size", 32},
                         {"intermediate_size", 48},
                         {"moe_intermediate_size", 16},
                         {"num_hidden_layers", 2},
                         {"num_attention_heads", 2},
                         {"first_k_dense_replace", 1},
                         {"n_routed_experts", 8},
                         {"num_experts_per_tok", 2},
                         {"n_group", 2},
                         {"topk_group", 1},
                         {"n_shared_experts", 1},
                         {"q_lora_rank", 16},
                         {"kv_lora_rank", 16},
                         {"qk_nope_head_dim", 8},
                         {"qk_rope_head_dim", 4},
                         {"v_head_dim", 8},
                         {"max_position_embeddings", 64},
                         {"num_nextn_predict_layers", n_mtp},
                         {"mtp_loss_scaling_factor", 0.5}};
  if (balance) json["aux_loss_alpha"] = 0.01, json["seq_aux"] = true;
  return parse_model_config(json, "tiny_v3");
}

std::vector<int64_t> random_ids(int64_t n, int64_t vocab, uint64_t seed) {
  Rng rng(seed);
  std::vector<int64_t> ids(n);
  for (int64_t& id : ids) id = static_cast<int64_t>(rng.next_u64() % vocab);
  return ids;
}

// Every tensor by checkpoint name (views sharing the weights' storage).
std::map<std::string, Tensor> by_name(const ModelConfig& c, ModelWeights& w) {
  std::map<std::string, Tensor> out;
  for_each_tensor(
      c, w, [&](const std::string& name, const Shape&, TensorRole, Tensor& t) { out[name] = t; });
  return out;
}

struct Step {
  StepStats stats;
  ModelWeights grads;
  std::vector<std::vector<int32_t>> routes;  // chosen experts of every MoE block that ran
};

Step train_step(const Model& model, const std::vector<int64_t>& ids, int64_t n_seqs,
                int64_t n_tokens, const TrainOptions& options) {
  const ModelConfig& c = model.config();
  Step s;
  s.grads = zeros_like_weights(c, static_cast<int64_t>(model.weights().mtp.size()));
  TrainActs acts;
  s.stats = model.forward_backward(ids.data(), n_seqs, n_tokens, s.grads, acts, options);
  for (int64_t L = 0; L < c.num_hidden_layers; L++)
    if (c.is_moe_layer(L)) s.routes.push_back(acts.layers[L].moe.routing.expert);
  for (const MtpActs& a : acts.mtp) s.routes.push_back(a.block.moe.routing.expert);
  return s;
}

class MtpGradient : public ::testing::TestWithParam<bool> {};

// d objective along a random direction, by central differences, against the analytic gradient;
// and the same for the MTP part alone (objective with MTP minus without) so that a wrong
// d h^0 cannot hide behind the main cross-entropy's gradient in the main tensors.
TEST_P(MtpGradient, MatchesCentralDifferences) {
  const bool balance = GetParam();
  const ModelConfig c = tiny_v3(2, balance);
  Model model(c, random_weights(c, 7));
  const int64_t n_seqs = 2, T = 6;
  const std::vector<int64_t> ids = random_ids(n_seqs * T, c.vocab_size, 11);
  TrainOptions on, off;
  on.balance_losses = off.balance_losses = balance;
  off.mtp = false;
  Step base_on = train_step(model, ids, n_seqs, T, on);
  Step base_off = train_step(model, ids, n_seqs, T, off);
  ASSERT_EQ(base_on.stats.mtp_loss.size(), 2u);
  EXPECT_DOUBLE_EQ(base_on.stats.mtp_scale, 0.25);
  if (balance) {
    EXPECT_EQ(base_on.stats.aux.count(3), 1u);  // the depth-2 block's balance loss
  }
  std::map<std::string, Tensor> weights = by_name(c, model.mutable_weights());
  std::map<std::string, Tensor> g_on = by_name(c, base_on.grads);
  std::map<std::string, Tensor> g_off = by_name(c, base_off.grads);
  for (const std::string name :
       {"model.layers.2.eh_proj.weight", "model.layers.2.enorm.weight",
        "model.layers.3.hnorm.weight", "model.layers.3.eh_proj.weight",
        "model.layers.2.shared_head.norm.weight", "model.layers.3.self_attn.kv_b_proj.weight",
        "model.layers.2.mlp.gate.weight", "model.layers.3.mlp.shared_experts.up_proj.weight",
        "model.embed_tokens.weight", "lm_head.weight", "model.layers.0.self_attn.q_a_proj.weight",
        "model.layers.1.mlp.shared_experts.down_proj.weight"}) {
    SCOPED_TRACE(name);
    ASSERT_EQ(weights.count(name), 1u);
    Tensor& p = weights[name];
    const std::vector<float> saved(p.data, p.data + p.numel());
    // w + t d is stored in float32: f moves by up to eps / 2 sum |g_i w_i| per evaluation.
    const double w_on = dot_and_magnitude(g_on[name], saved).second,
                 w_off = dot_and_magnitude(g_off[name], saved).second;
    bool checked = false;
    for (uint64_t attempt = 0; attempt < 6 && !checked; attempt++) {
      Rng rng(100 + attempt);
      std::vector<float> d(p.numel());
      for (float& v : d) v = rng.normal();
      // Both objectives at w + t d (nullopt when the routing moved), cached per step.
      std::map<double, std::optional<std::pair<double, double>>> at;
      auto shifted = [&](double t) {
        auto it = at.find(t);
        if (it != at.end()) return it->second;
        for (int64_t i = 0; i < p.numel(); i++) p.data[i] = saved[i] + static_cast<float>(t) * d[i];
        const Step s_on = train_step(model, ids, n_seqs, T, on),
                   s_off = train_step(model, ids, n_seqs, T, off);
        std::copy(saved.begin(), saved.end(), p.data);
        std::optional<std::pair<double, double>> value;
        if (s_on.routes == base_on.routes && s_off.routes == base_off.routes)
          value = std::make_pair(s_on.stats.objective, s_off.stats.objective);
        return at.emplace(t, value).first->second;
      };
      const FdObjective whole = [&](double t) -> std::optional<double> {
        const auto v = shifted(t);
        return v ? std::optional<double>(v->first) : std::nullopt;
      };
      const FdObjective mtp_part = [&](double t) -> std::optional<double> {
        const auto v = shifted(t);
        return v ? std::optional<double>(v->first - v->second) : std::nullopt;
      };
      const auto [analytic_on, magnitude_on] = dot_and_magnitude(g_on[name], d);
      const auto [analytic_off, magnitude_off] = dot_and_magnitude(g_off[name], d);
      const double f_on = std::fabs(base_on.stats.objective),
                   f_off = std::fabs(base_off.stats.objective);
      const std::optional<FdCheck> check_whole = central_difference(
          whole, FLT_EPSILON, f_on + w_on, analytic_on, magnitude_on, fd_steps(FLT_EPSILON));
      if (!check_whole) continue;
      expect_holds(*check_whole, name + " (whole objective)");
      // The MTP part: a difference of two objectives, each with its own rounding.
      const std::optional<FdCheck> check_mtp = central_difference(
          mtp_part, FLT_EPSILON, f_on + f_off + w_on + w_off, analytic_on - analytic_off,
          magnitude_on + magnitude_off, fd_steps(FLT_EPSILON));
      ASSERT_TRUE(check_mtp.has_value());  // the steps that kept the routing above are cached
      expect_holds(*check_mtp, name + " (MTP part)");
      EXPECT_GT(std::fabs(analytic_on - analytic_off), 1e-3) << "MTP must reach this tensor";
      checked = true;
    }
    EXPECT_TRUE(checked) << "the routing changed under every direction tried";
  }
}

INSTANTIATE_TEST_SUITE_P(BalanceLosses, MtpGradient, ::testing::Values(false, true));

// TrainOptions.mtp = false: MTP tensors get no gradient and the rest equals a model without MTP.
TEST(Mtp, OffGivesThePlainGradients) {
  const ModelConfig c = tiny_v3(2, /*balance=*/true);
  ModelWeights w = random_weights(c, 3);
  ModelWeights w_plain = w;  // shares every main tensor
  w_plain.mtp.clear();
  Model with_mtp(c, w), plain(c, w_plain);
  const int64_t n_seqs = 2, T = 5;
  const std::vector<int64_t> ids = random_ids(n_seqs * T, c.vocab_size, 5);
  TrainOptions off;
  off.mtp = false;
  Step a = train_step(with_mtp, ids, n_seqs, T, off);
  Step b = train_step(plain, ids, n_seqs, T, TrainOptions{});
  EXPECT_TRUE(a.stats.mtp_loss.empty());
  EXPECT_EQ(a.stats.objective, b.stats.objective);
  EXPECT_EQ(a.stats.objective, a.stats.loss + a.stats.aux_loss);
  std::map<std::string, Tensor> gb = by_name(c, b.grads);
  for (const auto& [name, g] : by_name(c, a.grads)) {
    const bool is_mtp = gb.count(name) == 0;
    for (int64_t i = 0; i < g.numel(); i++) {
      ASSERT_EQ(g.data[i], is_mtp ? 0.0f : gb[name].data[i]) << name << " [" << i << "]";
    }
  }
}

// L_k rebuilt per sequence from the main stack's output (taken from an MTP-free step): depth k
// embeds t_{i+k}, predicts t_{i+k+1}, over positions 0 .. T-k-1 of its own sequence.
TEST(Mtp, LossesPredictTokensKPlusOneAhead) {
  const ModelConfig c = tiny_v3(2, /*balance=*/false);
  const ModelWeights w = random_weights(c, 21);
  Model model(c, w);
  const int64_t n_seqs = 2, T = 7, H = c.hidden_size, V = c.vocab_size;
  const std::vector<int64_t> ids = random_ids(n_seqs * T, V, 9);
  TrainOptions off;
  off.mtp = false;
  ModelWeights grads = zeros_like_weights(c, 2);
  TrainActs acts;
  model.forward_backward(ids.data(), n_seqs, T, grads, acts, off);
  const std::vector<float> h0 = acts.x_final;  // (n_seqs * T, H)
  const StepStats stats = model.forward_backward(ids.data(), n_seqs, T, grads, acts, {});
  ASSERT_EQ(stats.mtp_loss.size(), 2u);

  auto rmsnorm = [&](const float* x, const Tensor& weight, float* out) {
    double ms = 0;
    for (int64_t h = 0; h < H; h++) ms += static_cast<double>(x[h]) * x[h];
    const double r = 1.0 / std::sqrt(ms / H + c.rms_norm_eps);
    for (int64_t h = 0; h < H; h++) out[h] = static_cast<float>(x[h] * r * weight.data[h]);
  };
  std::vector<double> total(2, 0.0);
  for (int64_t b = 0; b < n_seqs; b++) {
    const int64_t* t = ids.data() + b * T;
    std::vector<float> h_prev(h0.begin() + b * T * H, h0.begin() + (b + 1) * T * H);
    for (int64_t k = 1; k <= 2; k++) {
      const MtpWeights& m = w.mtp[k - 1];
      const int64_t n = T - k;
      std::vector<float> x(n * H), cat(2 * H), normed(H);
      for (int64_t i = 0; i < n; i++) {
        rmsnorm(w.embed_tokens.data + t[i + k] * H, m.enorm, cat.data());  // embedding first
        rmsnorm(h_prev.data() + i * H, m.hnorm, cat.data() + H);
        for (int64_t r = 0; r < H; r++) {
          double sum = 0;
          for (int64_t j = 0; j < 2 * H; j++) sum += m.eh_proj.data[r * 2 * H + j] * cat[j];
          x[i * H + r] = static_cast<float>(sum);
        }
      }
      std::vector<float> cos(n * c.rope_dim() / 2), sin(n * c.rope_dim() / 2);
      rope_angles(c, 0, n, cos.data(), sin.data());
      AttentionContext ctx;
      ctx.n_seqs = 1, ctx.n_tokens = n, ctx.cos = cos.data(), ctx.sin = sin.data();
      LayerActs scratch;
      layer_forward(c, m.block, c.is_moe_layer(c.num_hidden_layers + k - 1), x.data(), ctx, scratch,
                    false, nullptr);
      for (int64_t i = 0; i + 1 < n; i++) {
        rmsnorm(x.data() + i * H, m.shared_head_norm, normed.data());
        std::vector<double> logits(V);
        double max_logit = -1e300, sum = 0;
        for (int64_t v = 0; v < V; v++) {
          for (int64_t h = 0; h < H; h++) logits[v] += w.lm_head.data[v * H + h] * normed[h];
          max_logit = std::max(max_logit, logits[v]);
        }
        for (int64_t v = 0; v < V; v++) sum += std::exp(logits[v] - max_logit);
        total[k - 1] += std::log(sum) + max_logit - logits[t[i + k + 1]];
      }
      h_prev = x;  // h^k feeds depth k+1
    }
  }
  for (int64_t k = 1; k <= 2; k++) {
    const double expected = total[k - 1] / (n_seqs * (T - k - 1));
    EXPECT_NEAR(stats.mtp_loss[k - 1], expected, 1e-5 * expected) << "depth " << k;
  }
  EXPECT_NEAR(stats.objective, stats.loss + 0.25 * (stats.mtp_loss[0] + stats.mtp_loss[1]), 1e-12);
}

// A checkpoint without MTP tensors (weights.mtp empty, as load_weights leaves it) trains without
// MTP even though its config names MTP layers.
TEST(Mtp, CheckpointWithoutMtpTensorsTrainsWithoutMtp) {
  const ModelConfig c = tiny_v3(2, /*balance=*/true);
  ModelWeights w = random_weights(c, 4);
  w.mtp.clear();
  Model model(c, w);
  const std::vector<int64_t> ids = random_ids(10, c.vocab_size, 2);
  ModelWeights grads = zeros_like_weights(c);
  TrainActs acts;
  const StepStats stats = model.forward_backward(ids.data(), 2, 5, grads, acts, {});
  EXPECT_TRUE(stats.mtp_loss.empty());
  EXPECT_TRUE(acts.mtp.empty());
  EXPECT_EQ(stats.objective, stats.loss + stats.aux_loss);
  EXPECT_EQ(stats.aux.count(2), 0u);
}

// Gradients without MTP modules for a model with them: a clear error before any accumulation.
TEST(Mtp, GradientsMustHoldTheModules) {
  const ModelConfig c = tiny_v3(1, false);
  Model model(c, random_weights(c, 1));
  const std::vector<int64_t> ids = random_ids(8, c.vocab_size, 1);
  ModelWeights grads = zeros_like_weights(c);
  TrainActs acts;
  EXPECT_THROW(model.forward_backward(ids.data(), 2, 4, grads, acts, {}), Error);
}

// Sequences shorter than k + 2 tokens have no target k+1 ahead: L_k = 0, nothing runs; the same
// TrainActs serve every length.
TEST(Mtp, ShortSequences) {
  const ModelConfig c = tiny_v3(2, false);
  Model model(c, random_weights(c, 5));
  ModelWeights grads = zeros_like_weights(c, 2);
  TrainActs acts;
  for (int64_t T : {6, 3, 2, 4}) {
    const std::vector<int64_t> ids = random_ids(2 * T, c.vocab_size, T);
    const StepStats stats = model.forward_backward(ids.data(), 2, T, grads, acts, {});
    ASSERT_EQ(stats.mtp_loss.size(), 2u);
    EXPECT_EQ(stats.mtp_loss[0] > 0, T >= 3) << T;
    EXPECT_EQ(stats.mtp_loss[1] > 0, T >= 4) << T;
    EXPECT_EQ(acts.mtp[1].n_tokens, T >= 4 ? T - 2 : 0);
    EXPECT_TRUE(std::isfinite(stats.objective));
  }
}

TEST(Mtp, ScalingFactorDefault) {
  const nlohmann::json defaults = {{"model_type", "deepseek_v3"}};
  const ModelConfig c = parse_model_config(defaults, "defaults");
  EXPECT_FLOAT_EQ(c.mtp_loss_scaling_factor, 0.1f);  // Megatron-Core's default
  EXPECT_FLOAT_EQ(tiny_v3(2, false).mtp_loss_scaling_factor, 0.5f);
}

}  // namespace
}  // namespace dsmoe
