// moe.h: the feed-forward blocks: the dense SwiGLU MLP and the DeepSeekMoE layer (shared
// experts every token passes through + routed experts, tokens gathered per expert); forward and
// backward.
#pragma once
#include <cstdint>
#include <vector>

#include "model/balance.h"
#include "model/config.h"
#include "model/router.h"
#include "model/weights.h"

namespace dsmoe {

struct MlpActs {
  std::vector<float> gate;    // (n, I) gate_proj output, before silu
  std::vector<float> up;      // (n, I)
  std::vector<float> hidden;  // (n, I) silu(gate) * up
};

// out[n, H] = down(silu(gate x) * up x) for x [n, H]; width = the MLP's intermediate size.
void mlp_forward(const MlpWeights& mlp, const float* x, float* out, int64_t n_tokens,
                 int64_t hidden, int64_t width, MlpActs& acts);
// dx[n, H] += d x; grads += d weights.
void mlp_backward(const MlpWeights& mlp, MlpWeights& grads, const float* x, const float* dout,
                  float* dx, int64_t n_tokens, int64_t hidden, int64_t width, const MlpActs& acts);

struct MoeActs {
  Routing routing;
  BalanceLosses aux;                // training: this layer's balance losses
  std::vector<float> aux_dscores;   // training: d aux / d scores [n, E]
  std::vector<int64_t> offsets;     // [E + 1] first assignment of each expert
  std::vector<int64_t> assignment;  // [n * K] flat index t * K + j, grouped by expert
  std::vector<int64_t> active;      // experts that received tokens, in order
  std::vector<float> x_sorted;      // (n * K, H) inputs in assignment order
  std::vector<float> y_sorted;      // (n * K, H) expert outputs before the gate weight
  std::vector<MlpActs> experts;     // per routed expert, over its gathered tokens
  MlpActs shared;
};

// A training forward's extras: noise, capacity and balance losses over n_seqs sequences.
struct MoeTraining {
  RouterTraining router;
  int64_t n_seqs = 1;
  bool balance_losses = true;  // compute the configured balance losses (and their gradients)
};

// out[n, H] = shared(x) + sum_k weight_k * expert_k(x); acts.routing holds the decisions.
// With `training`: noisy gating and capacity as configured, and acts.aux / aux_dscores.
void moe_forward(const ModelConfig& config, const MoeWeights& moe, const float* x, float* out,
                 int64_t n_tokens, MoeActs& acts, const MoeTraining* training = nullptr);
// dx += d x (through experts, shared experts and the router); grads += d weights.
void moe_backward(const ModelConfig& config, const MoeWeights& moe, MoeWeights& grads,
                  const float* x, const float* dout, float* dx, int64_t n_tokens,
                  const MoeActs& acts);

}  // namespace dsmoe
