#include "model/router.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>

#include "kernels/cpu/ops.h"
#include "kernels/ref/ops.h"

namespace dsmoe {
namespace {

// Indices of the k largest values (ties: lower index first), best first.
void top_k_indices(const float* values, int64_t n, int64_t k, int32_t* out) {
  std::vector<int32_t> order(n);
  std::iota(order.begin(), order.end(), 0);
  std::partial_sort(order.begin(), order.begin() + k, order.end(), [&](int32_t a, int32_t b) {
    return values[a] > values[b] || (values[a] == values[b] && a < b);
  });
  std::copy(order.begin(), order.begin() + k, out);
}

// Group-limited routing: keep the topk_group groups with the best group score (V2
// group_limited_greedy: the group's max; V3 noaux_tc: the sum of its top-2) and mask the experts
// of every other group with -inf, as DeepSeek's own code does.
void mask_groups(const ModelConfig& c, float* selection) {
  const int64_t n_experts = c.n_routed_experts, per_group = n_experts / c.n_group;
  std::vector<float> group_score(c.n_group);
  for (int64_t g = 0; g < c.n_group; g++) {
    const float* s = selection + g * per_group;
    float best = -std::numeric_limits<float>::infinity(), second = best;
    for (int64_t i = 0; i < per_group; i++) {
      if (s[i] > best) {
        second = best;
        best = s[i];
      } else if (s[i] > second) {
        second = s[i];
      }
    }
    group_score[g] = c.topk_method == TopkMethod::kNoauxTc ? best + second : best;
  }
  std::vector<int32_t> kept(c.topk_group);
  top_k_indices(group_score.data(), c.n_group, c.topk_group, kept.data());
  std::vector<bool> keep(c.n_group, false);
  for (int32_t g : kept) keep[g] = true;
  for (int64_t g = 0; g < c.n_group; g++)
    if (!keep[g])
      std::fill(selection + g * per_group, selection + (g + 1) * per_group,
                -std::numeric_limits<float>::infinity());
}

}  // namespace

void select_experts(const ModelConfig& c, const float* scores, const float* bias, int32_t* expert,
                    float* weight) {
  const int64_t n_experts = c.n_routed_experts, k = c.num_experts_per_tok;
  // DeepSeek-V3 eq. 16: the bias enters the selection only, never the gate weights.
  std::vector<float> selection(scores, scores + n_experts);
  if (bias != nullptr)
    for (int64_t e = 0; e < n_experts; e++) selection[e] += bias[e];
  if (c.topk_method != TopkMethod::kGreedy) mask_groups(c, selection.data());
  top_k_indices(selection.data(), n_experts, k, expert);
  for (int64_t j = 0; j < k; j++) weight[j] = scores[expert[j]];
  const GateRule rule = gate_rule(c);
  if (rule.normalize) {
    float sum = 0.0f;
    for (int64_t j = 0; j < k; j++) sum += weight[j];
    for (int64_t j = 0; j < k; j++) weight[j] /= sum + 1e-20f;
  }
  for (int64_t j = 0; j < k; j++) weight[j] *= rule.scale;
}

GateRule gate_rule(const ModelConfig& c) {
  GateRule rule;
  // V1/V2 code normalises only for top_k > 1; transformers' V3 whenever norm_topk_prob.
  rule.normalize = c.norm_topk_prob && (c.num_experts_per_tok > 1 || c.arch == Arch::kDeepseekV3);
  // V3 scales always; DeepSeek-V2's code scales only when it does not normalise; V1 has no
  // factor (parse_model_config fixes it to 1).
  const bool scaled = c.arch != Arch::kDeepseekV2 || !rule.normalize;
  rule.scale = scaled ? c.routed_scaling_factor : 1.0f;
  return rule;
}

void route_backward(const ModelConfig& c, const MoeWeights& moe, MoeWeights& g, const float* x,
                    const Routing& r, const float* dweight, const float* dscores, float* dx,
                    int64_t n_tokens) {
  const int64_t n_experts = c.n_routed_experts, k = c.num_experts_per_tok;
  const GateRule rule = gate_rule(c);
  std::vector<float> dlogits(n_tokens * n_experts, 0.0f);  // (n, E)
#pragma omp parallel for schedule(static) if (n_tokens > 8)
  for (int64_t t = 0; t < n_tokens; t++) {
    const float* s = r.scores.data() + t * n_experts;
    const int32_t* expert = r.expert.data() + t * k;
    const float* dw = dweight + t * k;
    std::vector<float> ds(n_experts, 0.0f);  // d loss / d scores
    if (dscores != nullptr)
      std::copy(dscores + t * n_experts, dscores + (t + 1) * n_experts, ds.begin());
    if (rule.normalize) {  // w_j = scale * s_j / D, D = sum s + 1e-20
      float sum = 0.0f, dot = 0.0f;
      for (int64_t j = 0; j < k; j++) sum += s[expert[j]];
      const float denom = sum + 1e-20f;
      for (int64_t j = 0; j < k; j++) dot += dw[j] * s[expert[j]];
      for (int64_t j = 0; j < k; j++)
        ds[expert[j]] += rule.scale * (dw[j] / denom - dot / (denom * denom));
    } else {
      for (int64_t j = 0; j < k; j++) ds[expert[j]] += rule.scale * dw[j];
    }
    float* dl = dlogits.data() + t * n_experts;
    if (c.scoring_func == ScoringFunc::kSoftmax) {
      float dot = 0.0f;
      for (int64_t e = 0; e < n_experts; e++) dot += ds[e] * s[e];
      for (int64_t e = 0; e < n_experts; e++) dl[e] = s[e] * (ds[e] - dot);
    } else {
      for (int64_t e = 0; e < n_experts; e++) dl[e] = ds[e] * s[e] * (1.0f - s[e]);
    }
  }
  if (!r.noise.empty()) {  // logits = clean + noise * softplus(pre): d pre = d * noise * sigma(pre)
    std::vector<float> dpre(n_tokens * n_experts);
    for (int64_t i = 0; i < n_tokens * n_experts; i++)
      dpre[i] = dlogits[i] * r.noise[i] / (1.0f + std::exp(-r.noise_pre[i]));
    cpu::linear_backward_f32(dx, g.noise_weight.data, dpre.data(), x, moe.noise_weight.data,
                             n_tokens, c.hidden_size, n_experts);
  }
  cpu::linear_backward_f32(dx, g.gate.data, dlogits.data(), x, moe.gate.data, n_tokens,
                           c.hidden_size, n_experts);
}

namespace {

float softplus(float x) { return x > 20.0f ? x : std::log1p(std::exp(x)); }

// Capacity (training): each expert takes at most ceil(factor * n * K / E) assignments, first come
// in token order; the rest are dropped and the residual stream carries those tokens.
void apply_capacity(const ModelConfig& c, Routing& r) {
  const int64_t n = r.n_tokens, K = r.top_k, E = c.n_routed_experts;
  const int64_t capacity =
      static_cast<int64_t>(std::ceil(static_cast<double>(c.capacity_factor) * n * K / E));
  std::vector<int64_t> taken(E, 0);
  r.dropped.assign(n * K, 0);
  r.n_dropped = 0;
  for (int64_t i = 0; i < n * K; i++)
    if (taken[r.expert[i]]++ >= capacity) {
      r.dropped[i] = 1;
      r.n_dropped++;
    }
}

}  // namespace

void route_tokens(const ModelConfig& c, const MoeWeights& moe, const float* x, int64_t n_tokens,
                  Routing& r, const RouterTraining* training) {
  const int64_t n_experts = c.n_routed_experts, k = c.num_experts_per_tok;
  r.n_tokens = n_tokens;
  r.top_k = k;
  r.scores.resize(n_tokens * n_experts);
  r.expert.resize(n_tokens * k);
  r.weight.resize(n_tokens * k);
  r.dropped.clear();
  r.n_dropped = 0;
  // The gating products run in float32 whatever the matmul precision (here and in
  // route_backward): DeepSeek-V3's low-precision training keeps the MoE gating (with embedding,
  // output head, norms and attention) at higher precision, since expert selection turns small
  // score errors into different experts.
  cpu::linear_forward_f32(r.scores.data(), x, moe.gate.data, n_tokens, c.hidden_size, n_experts);
  const bool noisy = training != nullptr && c.noisy_gating;
  r.noise.clear();
  r.noise_pre.clear();
  if (noisy) {  // KeepTopK: logits += N(0, 1) * softplus(x . W_noise^T)
    r.noise.resize(n_tokens * n_experts);
    r.noise_pre.resize(n_tokens * n_experts);
    cpu::linear_forward_f32(r.noise_pre.data(), x, moe.noise_weight.data, n_tokens, c.hidden_size,
                            n_experts);
    for (int64_t i = 0; i < n_tokens * n_experts; i++) {
      r.noise[i] = training->noise_rng->normal();
      r.scores[i] += r.noise[i] * softplus(r.noise_pre[i]);
    }
  }
  const float* bias = c.has_router_bias() ? moe.e_score_correction_bias.data : nullptr;
#pragma omp parallel for schedule(static) if (n_tokens > 8)
  for (int64_t t = 0; t < n_tokens; t++) {
    float* s = r.scores.data() + t * n_experts;
    if (c.scoring_func == ScoringFunc::kSoftmax) {
      ref::softmax_inplace(s, n_experts);
    } else {
      for (int64_t e = 0; e < n_experts; e++) s[e] = 1.0f / (1.0f + std::exp(-s[e]));
    }
    select_experts(c, s, bias, r.expert.data() + t * k, r.weight.data() + t * k);
  }
  if (training != nullptr && c.capacity_factor > 0.0f) apply_capacity(c, r);
}

}  // namespace dsmoe
