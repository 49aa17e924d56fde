#include "model/balance.h"

#include <algorithm>

namespace dsmoe {
namespace {

// Scores used for P: s, or s / sum_j s_j under sigmoid scoring; with the Jacobian's transpose
// applied by `backward`.
struct AffinityView {
  const ModelConfig& c;
  const Routing& r;
  bool normalize() const { return c.scoring_func == ScoringFunc::kSigmoid; }
  float value(int64_t t, int64_t e, float row_sum) const {
    const float s = r.scores[t * c.n_routed_experts + e];
    return normalize() ? s / row_sum : s;
  }
  float row_sum(int64_t t) const {
    float sum = 0.0f;
    for (int64_t e = 0; e < c.n_routed_experts; e++) sum += r.scores[t * c.n_routed_experts + e];
    return sum;
  }
  // Adds J^T g to dscores row t, for g = d loss / d (normalised) score row.
  void backward(int64_t t, const float* g, float* dscores) const {
    const int64_t E = c.n_routed_experts;
    float* d = dscores + t * E;
    if (!normalize()) {
      for (int64_t e = 0; e < E; e++) d[e] += g[e];
      return;
    }
    const float sum = row_sum(t);
    float dot = 0.0f;  // sum_j g_j s_j
    for (int64_t e = 0; e < E; e++) dot += g[e] * r.scores[t * E + e];
    for (int64_t e = 0; e < E; e++) d[e] += g[e] / sum - dot / (sum * sum);
  }
};

// Expert-level loss over the tokens [begin, end): alpha * sum_i f_i P_i with
// f_i = E / (K * T) * count_i and P_i = mean_t s'_i,t. Returns it; adds gradients * weight.
double expert_loss(const AffinityView& view, int64_t begin, int64_t end, double alpha,
                   double weight, float* dscores) {
  const ModelConfig& c = view.c;
  const int64_t E = c.n_routed_experts, K = c.num_experts_per_tok, T = end - begin;
  std::vector<double> f(E, 0.0), P(E, 0.0);
  for (int64_t t = begin; t < end; t++) {
    for (int64_t j = 0; j < K; j++) f[view.r.expert[t * K + j]] += 1.0;
    const float sum = view.row_sum(t);
    for (int64_t e = 0; e < E; e++) P[e] += view.value(t, e, sum);
  }
  double loss = 0.0;
  for (int64_t e = 0; e < E; e++) {
    f[e] *= static_cast<double>(E) / (K * T);
    loss += f[e] * P[e] / T;
  }
  if (dscores != nullptr) {
    std::vector<float> g(E);
    for (int64_t e = 0; e < E; e++) g[e] = static_cast<float>(alpha * weight * f[e] / T);
    for (int64_t t = begin; t < end; t++) view.backward(t, g.data(), dscores);
  }
  return alpha * loss;
}

// Device-level and communication losses over all tokens (V2 eq. 15-20).
void device_losses(const AffinityView& view, BalanceLosses& out, float* dscores) {
  const ModelConfig& c = view.c;
  const int64_t E = c.n_routed_experts, K = c.num_experts_per_tok, T = view.r.n_tokens;
  const int64_t D = c.n_devices(), per_device = E / D, M = c.max_devices_per_token();
  std::vector<double> f_expert(E, 0.0), P_device(D, 0.0), sent(D, 0.0);
  for (int64_t t = 0; t < T; t++) {
    std::vector<bool> reached(D, false);
    for (int64_t j = 0; j < K; j++) {
      const int32_t e = view.r.expert[t * K + j];
      f_expert[e] += 1.0;
      reached[e / per_device] = true;
    }
    for (int64_t d = 0; d < D; d++) sent[d] += reached[d] ? 1.0 : 0.0;
    const float sum = view.row_sum(t);
    for (int64_t e = 0; e < E; e++) P_device[e / per_device] += view.value(t, e, sum) / T;
  }
  std::vector<double> f_device(D, 0.0), f_comm(D, 0.0);
  for (int64_t e = 0; e < E; e++)  // f'_d = mean over the device's experts of f_i
    f_device[e / per_device] += f_expert[e] * E / (K * T) / per_device;
  for (int64_t d = 0; d < D; d++) f_comm[d] = sent[d] * D / (M * T);
  for (int64_t d = 0; d < D; d++) {
    out.device += c.device_aux_loss_alpha * f_device[d] * P_device[d];
    out.comm += c.comm_aux_loss_alpha * f_comm[d] * P_device[d];
  }
  if (dscores == nullptr) return;
  std::vector<float> g(E);  // d / d s'_e,t = (alpha2 f'_d + alpha3 f''_d) / T for e on device d
  for (int64_t e = 0; e < E; e++) {
    const int64_t d = e / per_device;
    g[e] = static_cast<float>(
        (c.device_aux_loss_alpha * f_device[d] + c.comm_aux_loss_alpha * f_comm[d]) / T);
  }
  for (int64_t t = 0; t < T; t++) view.backward(t, g.data(), dscores);
}

}  // namespace

BalanceLosses balance_losses(const ModelConfig& c, const Routing& r, int64_t n_seqs,
                             int64_t n_tokens, float* dscores) {
  BalanceLosses out;
  const AffinityView view{c, r};
  if (c.aux_loss_alpha != 0.0f) {
    if (c.seq_aux) {  // mean over sequences of each sequence's loss
      for (int64_t b = 0; b < n_seqs; b++)
        out.expert += expert_loss(view, b * n_tokens, (b + 1) * n_tokens, c.aux_loss_alpha,
                                  1.0 / n_seqs, dscores) /
                      n_seqs;
    } else {
      out.expert = expert_loss(view, 0, n_seqs * n_tokens, c.aux_loss_alpha, 1.0, dscores);
    }
  }
  if (c.device_aux_loss_alpha != 0.0f || c.comm_aux_loss_alpha != 0.0f)
    device_losses(view, out, dscores);
  return out;
}

std::vector<int64_t> expert_loads(const ModelConfig& c, const Routing& r) {
  std::vector<int64_t> loads(c.n_routed_experts, 0);
  for (size_t i = 0; i < r.expert.size(); i++)
    if (r.dropped.empty() || !r.dropped[i]) loads[r.expert[i]]++;
  return loads;
}

}  // namespace dsmoe
