// rope.h: rotary position angles for a config: default, linear, dynamic NTK (V1) and YaRN
// (V2/V3), with YaRN's attention factor folded into cos and sin.
#pragma once
#include <cstdint>
#include <vector>

#include "model/config.h"

namespace dsmoe {

// inv_freq[rope_dim / 2] for a base theta (theta^(-2i/d)), before any scaling.
std::vector<float> rope_base_inv_freq(int64_t rope_dim, double theta);

// YaRN: frequencies blended between interpolated (theta^(-2i/d) / factor) and extrapolated by a
// linear ramp over the correction range of beta_fast..beta_slow (YaRN paper; DeepSeek-V2's
// DeepseekV2YarnRotaryEmbedding), and the factor that multiplies cos/sin.
std::vector<float> yarn_inv_freq(const ModelConfig& config);
float yarn_attention_factor(const ModelConfig& config);

// cos/sin [n_tokens, rope_dim/2] for positions pos0 .. pos0 + n_tokens - 1.
// Dynamic NTK (V1) rescales the base once pos0 + n_tokens exceeds max_position_embeddings, as
// the remote code does for the sequence it is given.
void rope_angles(const ModelConfig& config, int64_t pos0, int64_t n_tokens, float* cos,
                 float* sin);

}  // namespace dsmoe
