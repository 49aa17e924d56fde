// quantize.h: inference weights in compact formats (bf16, Q8_0, Q4_0), converted at load, and
// the bytes a decoded token reads (for the roofline of `dsmoe bench`).
#pragma once
#include <cstdint>

#include "kernels/quant.h"
#include "model/config.h"
#include "model/weights.h"

namespace dsmoe {

// Re-stores the linear weights of an inference model in `format`, freeing their float32 copies:
// attention projections, dense and expert MLPs, and lm_head (unless tied). Left in float32: the
// router gate (routing decisions stay exact), kv_b_proj (MLA reads it in per-head slices), the
// embedding (a lookup), norms, and any matrix whose row width is not a multiple of 32.
// kF32 leaves everything as it is. Training needs float32 weights: never quantize a model that
// will be trained.
void quantize_weights(const ModelConfig& config, ModelWeights& weights, WeightFormat format);

// Bytes of weights one decoded token reads: every layer's attention and norms, dense MLPs,
// shared experts, the router, num_experts_per_tok / n_routed_experts of the routed experts,
// the final norm and lm_head, and one embedding row. MTP modules are not counted.
int64_t active_weight_bytes_per_token(const ModelConfig& config, ModelWeights& weights);

// Bytes of all weights as stored now.
int64_t weight_bytes(const ModelConfig& config, ModelWeights& weights);

}  // namespace dsmoe
