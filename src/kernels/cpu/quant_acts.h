// quant_acts.h (cpu): activations rounded once per product for the weight format's row kernels
// (kernels/cpu/quant_ops.cpp): bf16 hi + lo parts, Q8_0 blocks, and the Q8_0 blocks regrouped
// for the VNNI kernels. Internal to the quant kernels; no SIMD types.
#pragma once
#include <cstdint>
#include <vector>

#include "kernels/quant.h"

namespace dsmoe::cpu {

// Q8_0 activations of four consecutive blocks 4g .. 4g + 3, laid out for the VNNI row kernels
// (RowsBlocks) of one weight format; blocks past the row's end are zero.
//  * Q4_0 (a 64-byte load of quants holds 16 bytes per block; its low nibbles are elements 0..15
//    of each block, its high nibbles 16..31): `low` = elements 0..15 of the four blocks, `high`
//    = 16..31; int32 lanes 4j .. 4j + 3 belong to block 4g + j; correction lane 4j is
//    -8 * sum(x of block 4g + j); `scale` lanes 4j .. 4j + 3 its scale.
//  * Q8_0 (two blocks per 64 bytes): `low` = blocks 4g, 4g + 1, `high` = 4g + 2, 4g + 3; lanes
//    8j .. 8j + 7 belong to the j-th block of a vector; correction lanes 0 and 8 are -128 * sum;
//    `scale`, `scale_hi` (and `correction_hi`) belong to the `high` vector.
struct alignas(64) VnniGroup {
  int8_t low[64], high[64];
  int32_t correction[16], correction_hi[16];
  float scale[16], scale_hi[16];
};

// Activations rounded for one weight format (pointers into a buffer of the caller).
struct PreparedActs {
  int64_t M = 0;
  const float* f32 = nullptr;         // fp8, bf16 (panels): the activations (M, K) as given
  const uint16_t* bf16 = nullptr;     // bf16 (rows): (2, M, K) hi and lo parts
  const BlockQ8_0* q8 = nullptr;      // Q8_0 / Q4_0: (M, nb) blocks
  const float* q8_scale = nullptr;    // (M, nb) their scales as float
  const VnniGroup* groups = nullptr;  // (M, groups_per_row): the same, for the VNNI kernels
  int64_t groups_per_row = 0;
};
// Rounded activations in the layout of one weight format, kept per thread across calls so that
// a decoded token allocates nothing.
struct ActsBuffer {
  std::vector<uint16_t> bf16;                                       // (2, M, K) hi and lo parts
  std::vector<BlockQ8_0> q8;                                        // (M, nb)
  std::vector<float> q8_scale;                                      // (M, nb)
  std::vector<float> scratch;                                       // (2, K)
  std::vector<VnniGroup, CacheAlignedAllocator<VnniGroup>> groups;  // (M, ceil(nb / 4))
};

// x = hi + lo with hi = bf16(x) (nearest even) and lo = x - hi, both as float32; lo is exact,
// and bf16(lo) carries the next 8 significant bits: 16 bits of x in two bf16 parts.
void split_bf16_hi_lo(const float* x, int64_t n, float* hi, float* lo);

// Rounds inp[M, K] once for `format` into buf (f32 needs nothing; fp8 reads inp itself). A Q8_0
// block that cannot be quantized (inf/NaN, or beyond f16) gets a NaN scale, so its outputs are NaN
// as in float arithmetic, instead of an exception inside a kernel.
// `bf16_panels`: the bf16 weights are in the panel layout, whose kernels take float32 (no hi +
// lo parts are made).
PreparedActs prepare_acts(const float* inp, int64_t M, int64_t K, WeightFormat format,
                          bool bf16_panels, ActsBuffer& buf);

}  // namespace dsmoe::cpu
