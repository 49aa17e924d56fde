// router.h: the MoE gate: token-to-expert affinities, expert selection (greedy, V2
// group-limited, V3 noaux_tc with the bias correction) and the final gate weights.
#pragma once
#include <cstdint>
#include <vector>

#include "model/config.h"
#include "model/weights.h"
#include "tensor/random.h"

namespace dsmoe {

struct Routing {
  int64_t n_tokens = 0;
  int64_t top_k = 0;
  std::vector<int32_t> expert;  // [n_tokens, top_k] chosen routed experts, best first
  std::vector<float> weight;    // [n_tokens, top_k] final gate weights
  std::vector<float> scores;    // [n_tokens, n_routed_experts] affinities s (softmax or sigmoid)
  // Training only:
  std::vector<uint8_t> dropped;   // [n_tokens, top_k] 1: over its expert's capacity, skipped
  int64_t n_dropped = 0;
  std::vector<float> noise;       // [n_tokens, E] N(0, 1) draws of noisy gating
  std::vector<float> noise_pre;   // [n_tokens, E] x . W_noise^T (before softplus)
};

// What a training forward adds to routing (an inference forward passes none).
struct RouterTraining {
  Rng* noise_rng = nullptr;  // noisy gating's draws (config.noisy_gating)
};

// Routes x [n_tokens, H] through the gate of one MoE layer.
void route_tokens(const ModelConfig& config, const MoeWeights& moe, const float* x,
                  int64_t n_tokens, Routing& routing, const RouterTraining* training = nullptr);

// The selection for one token, from its affinities s [E] (and bias [E] or nullptr):
// writes top_k expert ids (best first) and their weights.
void select_experts(const ModelConfig& config, const float* scores, const float* bias,
                    int32_t* expert, float* weight);

// How the chosen scores become gate weights: divided by their sum (+1e-20) when `normalize`,
// then multiplied by `scale`.
struct GateRule {
  bool normalize = false;
  float scale = 1.0f;
};
GateRule gate_rule(const ModelConfig& config);

// Backward of route_tokens: from d gate weights [n_tokens, top_k] (and d scores [n_tokens, E] of
// the balance losses, or null) to d router weights (grads.gate, grads.noise_weight) and dx
// [n_tokens, H] (+=). The selection itself is piecewise constant and carries no gradient.
void route_backward(const ModelConfig& config, const MoeWeights& moe, MoeWeights& grads,
                    const float* x, const Routing& routing, const float* dweight,
                    const float* dscores, float* dx, int64_t n_tokens);

}  // namespace dsmoe
