#include "model/rope.h"

#include <algorithm>
#include <cmath>

namespace dsmoe {
namespace {

constexpr double kPi = 3.14159265358979323846;

double yarn_get_mscale(double scale, double mscale) {
  return scale <= 1.0 ? 1.0 : 0.1 * mscale * std::log(scale) + 1.0;
}

// The dimension index whose wavelength makes `rotations` turns over the original context.
double yarn_correction_dim(double rotations, int64_t dim, double base, int64_t original_max) {
  return dim * std::log(original_max / (rotations * 2.0 * kPi)) / (2.0 * std::log(base));
}

}  // namespace

std::vector<float> rope_base_inv_freq(int64_t rope_dim, double theta) {
  std::vector<float> inv_freq(rope_dim / 2);
  for (int64_t i = 0; i < rope_dim / 2; i++) {
    // Computed as torch does: theta ** (arange(0, d, 2) / d) in float32, then 1 / that.
    const float exponent = static_cast<float>(2 * i) / static_cast<float>(rope_dim);
    const float pos_freq = std::pow(static_cast<float>(theta), exponent);
    inv_freq[i] = 1.0f / pos_freq;
  }
  return inv_freq;
}

std::vector<float> yarn_inv_freq(const ModelConfig& c) {
  const int64_t dim = c.qk_rope_head_dim;
  const double base = c.rope_theta, factor = c.rope_factor;
  const int64_t original_max = c.original_max_position_embeddings > 0
                                   ? c.original_max_position_embeddings
                                   : c.max_position_embeddings;
  double low = yarn_correction_dim(c.beta_fast, dim, base, original_max);
  double high = yarn_correction_dim(c.beta_slow, dim, base, original_max);
  if (c.rope_truncate) low = std::floor(low), high = std::ceil(high);
  low = std::max(low, 0.0);
  high = std::min(high, static_cast<double>(dim - 1));
  if (low == high) high += 0.001;  // avoid a zero-width ramp
  std::vector<float> extrapolated = rope_base_inv_freq(dim, base);
  std::vector<float> inv_freq(dim / 2);
  for (int64_t i = 0; i < dim / 2; i++) {
    const float ramp = static_cast<float>(std::clamp((i - low) / (high - low), 0.0, 1.0));
    const float keep = 1.0f - ramp;  // 1: keep the original (high-frequency) dimension
    const float interpolated = extrapolated[i] / static_cast<float>(factor);
    inv_freq[i] = interpolated * (1.0f - keep) + extrapolated[i] * keep;
  }
  return inv_freq;
}

float yarn_attention_factor(const ModelConfig& c) {
  if (c.attention_factor != 0.0) return static_cast<float>(c.attention_factor);
  if (c.mscale != 0.0 && c.mscale_all_dim != 0.0)
    return static_cast<float>(yarn_get_mscale(c.rope_factor, c.mscale) /
                              yarn_get_mscale(c.rope_factor, c.mscale_all_dim));
  return static_cast<float>(yarn_get_mscale(c.rope_factor, 1.0));
}

void rope_angles(const ModelConfig& c, int64_t pos0, int64_t n_tokens, float* cos, float* sin) {
  const int64_t dim = c.rope_dim(), half = dim / 2;
  std::vector<float> inv_freq;
  float factor = 1.0f;        // multiplies cos and sin (YaRN)
  float position_scale = 1.0f;  // divides positions (linear)
  switch (c.rope_type) {
    case RopeType::kDefault:
      inv_freq = rope_base_inv_freq(dim, c.rope_theta);
      break;
    case RopeType::kLinear:
      inv_freq = rope_base_inv_freq(dim, c.rope_theta);
      position_scale = static_cast<float>(c.rope_factor);
      break;
    case RopeType::kDynamic: {
      const int64_t seq_len = pos0 + n_tokens;
      double base = c.rope_theta;
      if (seq_len > c.max_position_embeddings) {
        const double f = c.rope_factor;
        base *= std::pow(f * seq_len / c.max_position_embeddings - (f - 1),
                         static_cast<double>(dim) / (dim - 2));
      }
      inv_freq = rope_base_inv_freq(dim, base);
      break;
    }
    case RopeType::kYarn:
      inv_freq = yarn_inv_freq(c);
      factor = yarn_attention_factor(c);
      break;
  }
  for (int64_t t = 0; t < n_tokens; t++) {
    const float position = static_cast<float>(pos0 + t) / position_scale;
    for (int64_t i = 0; i < half; i++) {
      const float angle = position * inv_freq[i];  // float32 product, as the reference
      cos[t * half + i] = std::cos(angle) * factor;
      sin[t * half + i] = std::sin(angle) * factor;
    }
  }
}

}  // namespace dsmoe
