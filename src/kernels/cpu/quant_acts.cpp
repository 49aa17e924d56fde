// quant_acts.cpp (cpu): the activations of the quant row kernels, rounded once per product (see
// quant_acts.h).
#include "kernels/cpu/quant_acts.h"

#include <cstring>
#include <limits>

#include "kernels/cpu/gemm_quant.h"
#include "tensor/dtype.h"

namespace dsmoe::cpu {
namespace {

// The VnniGroup records of one activation row of nb blocks (x, x_scale) for `format`.
void fill_vnni_groups(const BlockQ8_0* x, const float* x_scale, int64_t nb, WeightFormat format,
                      VnniGroup* groups) {
  constexpr int64_t kHalf = kQuantBlock / 2;
  for (int64_t g = 0; 4 * g < nb; g++) {
    VnniGroup& out = groups[g];
    out = VnniGroup{};
    for (int64_t j = 0; j < 4 && 4 * g + j < nb; j++) {
      const int64_t b = 4 * g + j;
      int32_t sum = 0;
      for (int64_t i = 0; i < kQuantBlock; i++) sum += x[b].q[i];
      if (format == WeightFormat::kQ4_0) {
        std::memcpy(out.low + kHalf * j, x[b].q, kHalf);
        std::memcpy(out.high + kHalf * j, x[b].q + kHalf, kHalf);
        out.correction[4 * j] = -8 * sum;
        for (int64_t l = 0; l < 4; l++) out.scale[4 * j + l] = x_scale[b];
      } else {
        // (explicit branches: GCC 12 at -O0 with the sanitizers stored through a conditional
        // expression of two arrays at the wrong index)
        const bool high = j >= 2;
        const int64_t half = j % 2;
        int8_t* dst = high ? &out.high[0] : &out.low[0];
        int32_t* correction = high ? &out.correction_hi[0] : &out.correction[0];
        float* scale = high ? &out.scale_hi[0] : &out.scale[0];
        std::memcpy(dst + kQuantBlock * half, x[b].q, kQuantBlock);
        correction[8 * half] = -128 * sum;
        for (int64_t l = 0; l < 8; l++) scale[8 * half + l] = x_scale[b];
      }
    }
  }
}

}  // namespace

void split_bf16_hi_lo(const float* x, int64_t n, float* hi, float* lo) {
  for (int64_t i = 0; i < n; i++) {
    hi[i] = bf16_to_f32(f32_to_bf16(x[i]));
    lo[i] = x[i] - hi[i];
  }
}

PreparedActs prepare_acts(const float* inp, int64_t M, int64_t K, WeightFormat format,
                          bool bf16_panels, ActsBuffer& buf) {
  PreparedActs acts;
  acts.M = M;
  if (format == WeightFormat::kFP8) {
    acts.f32 = inp;  // the FP8 kernels take float32 activations as they are
  } else if (format == WeightFormat::kBF16 && bf16_panels) {
    acts.f32 = inp;  // the panel layout's kernels take float32 as it is
  } else if (format == WeightFormat::kBF16) {
    // The bf16 bits of hi and of lo = x - hi (hi is exact in bf16: converting it is exact).
    buf.bf16.resize(static_cast<size_t>(2 * M * K));
    buf.scratch.resize(static_cast<size_t>(2 * K));
    float* hi = buf.scratch.data();
    float* lo = hi + K;
    for (int64_t m = 0; m < M; m++) {
      split_bf16_hi_lo(inp + m * K, K, hi, lo);
      convert_row_f32_to_bf16(hi, &buf.bf16[m * K], K);
      convert_row_f32_to_bf16(lo, &buf.bf16[(M + m) * K], K);
    }
    acts.bf16 = buf.bf16.data();
  } else if (format == WeightFormat::kQ8_0 || format == WeightFormat::kQ4_0) {
    // Q8_0 blocks with float scales. A block that cannot be quantized (inf/NaN, or beyond f16)
    // gets a NaN scale, so its outputs are NaN as in float arithmetic, instead of an exception
    // inside a kernel.
    const int64_t n_blocks = M * (K / kQuantBlock);
    buf.q8.resize(static_cast<size_t>(n_blocks));
    buf.q8_scale.resize(static_cast<size_t>(n_blocks));
    if (!quantize_blocks_q8_0_native(inp, n_blocks, buf.q8.data(), buf.q8_scale.data()))
      for (int64_t i = 0; i < n_blocks; i++)
        buf.q8_scale[i] = quantize_block_q8_0(inp + i * kQuantBlock, &buf.q8[i])
                              ? f16_to_f32(buf.q8[i].scale_f16)
                              : std::numeric_limits<float>::quiet_NaN();
    acts.q8 = buf.q8.data();
    acts.q8_scale = buf.q8_scale.data();
    const int64_t nb = K / kQuantBlock, groups_per_row = (nb + 3) / 4;
    buf.groups.resize(static_cast<size_t>(M * groups_per_row));
    for (int64_t m = 0; m < M; m++)
      fill_vnni_groups(acts.q8 + m * nb, acts.q8_scale + m * nb, nb, format,
                       buf.groups.data() + m * groups_per_row);
    acts.groups = buf.groups.data();
    acts.groups_per_row = groups_per_row;
  }
  return acts;
}

}  // namespace dsmoe::cpu
