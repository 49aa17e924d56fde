// exp.h (cpu): a float32 exp that loops vectorize, shared by the elementwise kernels.
#pragma once

#include <algorithm>
#include <bit>
#include <cstdint>

namespace dsmoe::cpu {

// exp(x) in float32 written so that loops over it vectorize: x = n ln2 + r with |r| <= ln2 / 2
// (ln2 split in two for an exact reduction), exp(r) = 1 + r + r^2 P(r) with Cephes expf's
// degree-5 P, times 2^n put in the exponent bits. Within 2 ulp of std::exp on [-87.3, 88.7];
// outside, the ends of that range (silu and its derivative only need them to saturate).
inline float exp_vectorizable(float x) {
  x = std::min(std::max(x, -87.3f), 88.7f);
  const float n = (x * 1.44269504f + 12582912.0f) - 12582912.0f;  // round(x / ln2)
  const float r = (x - n * 0.693359375f) + n * 2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  const float exp_r = (p * r) * r + r + 1.0f;
  const int32_t bits = (static_cast<int32_t>(n) + 127) << 23;
  return exp_r * std::bit_cast<float>(bits);
}

}  // namespace dsmoe::cpu
