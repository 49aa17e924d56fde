// moe.h: the feed-forward blocks: the dense SwiGLU MLP and the DeepSeekMoE layer (shared
// experts every token passes through + routed experts, tokens gathered per expert).
#pragma once
#include <cstdint>

#include "model/config.h"
#include "model/router.h"
#include "model/weights.h"

namespace dsmoe {

// out[n, H] = down(silu(gate x) * up x) for x [n, H]; width = the MLP's intermediate size.
void mlp_forward(const MlpWeights& mlp, const float* x, float* out, int64_t n_tokens,
                 int64_t hidden, int64_t width);

// out[n, H] = shared(x) + sum_k weight_k * expert_k(x). `routing` receives the decisions.
void moe_forward(const ModelConfig& config, const MoeWeights& moe, const float* x, float* out,
                 int64_t n_tokens, Routing& routing);

}  // namespace dsmoe
