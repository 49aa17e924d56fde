// layer.h: one decoder layer (attention + dense MLP or MoE, each behind an RMSNorm and a
// residual), forward and backward; used by the main stack and by the MTP modules.
#pragma once
#include <cstdint>
#include <vector>

#include "model/attention.h"
#include "model/config.h"
#include "model/moe.h"
#include "model/weights.h"

namespace dsmoe {

// What one decoder layer keeps from a training forward for its backward.
struct LayerActs {
  std::vector<float> x_in;     // (N, H) residual stream entering the layer
  std::vector<float> normed1;  // (N, H) input_layernorm(x_in)
  AttentionActs attn;
  std::vector<float> x_mid;    // (N, H) x_in + attention
  std::vector<float> normed2;  // (N, H) post_attention_layernorm(x_mid)
  MlpActs mlp;                 // dense layers
  MoeActs moe;                 // MoE layers
};

// x [N, H] <- x + attn(norm1(x)), then + ffn(norm2(x)). `keep` stores x_in/x_mid for backward;
// `moe_training` (null in inference) adds noise, capacity and balance losses.
void layer_forward(const ModelConfig& config, const LayerWeights& weights, bool is_moe, float* x,
                   const AttentionContext& ctx, LayerActs& acts, bool keep,
                   const MoeTraining* moe_training);

// dx [N, H]: d output in, d input out (the residual passes through); grads += d weights.
void layer_backward(const ModelConfig& config, const LayerWeights& weights, LayerWeights& grads,
                    bool is_moe, float* dx, const AttentionContext& ctx, const LayerActs& acts);

}  // namespace dsmoe
