// bf16_panels.cpp (cpu): matrix-vector products with bf16 panel weights (see bf16_panels.h).
// One path for CPUs with AVX512-BF16 (a function compiled for it, chosen at run time) and a
// scalar one for the rest; the model stores bf16 weights as panels only where the fast GEMM runs
// (cpu::gemm_bf16_native), so the scalar loop serves tests and odd CPUs.
#include "kernels/cpu/bf16_panels.h"

#include <immintrin.h>

#include <algorithm>
#include <cstring>

#include "kernels/cpu/gemm_bf16.h"
#include "kernels/quant.h"
#include "tensor/dtype.h"
#include "util/check.h"

namespace dsmoe::cpu {
namespace {

// Weights stream from memory once: fetch this far ahead of the loads (as the row kernels do).
constexpr int64_t kPrefetchBytes = 4096;
constexpr int kMaxPanels = kPanelGroupRows / kPanelLanes;

// Activation pair word kp of a row of K bf16 elements (the element past an odd K is zero).
inline uint32_t PairWord(const uint16_t* x, int64_t K, int64_t kp) {
  const uint32_t low = x[2 * kp];
  const uint32_t high = 2 * kp + 1 < K ? x[2 * kp + 1] : 0;
  return low | high << 16;
}

#if defined(__x86_64__)
#define DSMOE_PANELS_TARGET __attribute__((target("avx512f,avx512bw,avx512bf16")))

// One group (kPanels panels of 16 rows, `valid` rows of them real) against one activation row.
template <int kPanels>
DSMOE_PANELS_TARGET void GroupRowNative(const uint16_t* x_hi, const uint16_t* x_lo, int64_t K,
                                        const uint32_t* group, int64_t valid, float* out) {
  __m512 acc_hi[kPanels], acc_lo[kPanels];
  for (int j = 0; j < kPanels; j++) acc_hi[j] = acc_lo[j] = _mm512_setzero_ps();
  const int64_t pairs = (K + 1) / 2, full_pairs = K / 2;
  const auto* hi_words = reinterpret_cast<const uint8_t*>(x_hi);
  const auto* lo_words = reinterpret_cast<const uint8_t*>(x_lo);
  const uint32_t* b = group;
  for (int64_t kp = 0; kp < pairs; kp++, b += kPanels * kPanelLanes) {
    uint32_t hi_word, lo_word;
    if (kp < full_pairs) {  // (unaligned when K is odd: copy, not a uint32_t load)
      std::memcpy(&hi_word, hi_words + 4 * kp, 4);
      std::memcpy(&lo_word, lo_words + 4 * kp, 4);
    } else {
      hi_word = PairWord(x_hi, K, kp);
      lo_word = PairWord(x_lo, K, kp);
    }
    const __m512bh hi = (__m512bh)_mm512_set1_epi32(static_cast<int>(hi_word));
    const __m512bh lo = (__m512bh)_mm512_set1_epi32(static_cast<int>(lo_word));
    for (int j = 0; j < kPanels; j++) {
      const uint32_t* panel = b + j * kPanelLanes;
      _mm_prefetch(reinterpret_cast<const char*>(panel) + kPrefetchBytes, _MM_HINT_T0);
      const __m512bh w = (__m512bh)_mm512_load_si512(panel);
      acc_hi[j] = _mm512_dpbf16_ps(acc_hi[j], w, hi);
      acc_lo[j] = _mm512_dpbf16_ps(acc_lo[j], w, lo);
    }
  }
  for (int j = 0; j < kPanels; j++) {
    const int64_t lanes = std::clamp<int64_t>(valid - j * kPanelLanes, 0, kPanelLanes);
    const __mmask16 mask = static_cast<__mmask16>((1u << lanes) - 1);
    _mm512_mask_storeu_ps(out + j * kPanelLanes, mask, _mm512_add_ps(acc_hi[j], acc_lo[j]));
  }
}

DSMOE_PANELS_TARGET void GroupRowsNative(const uint16_t* x_hi, const uint16_t* x_lo, int64_t M,
                                         int64_t N, int64_t K, const uint32_t* group, int panels,
                                         int64_t valid, float* out) {
  for (int64_t m = 0; m < M; m++) {
    const uint16_t* hi = x_hi + m * K;
    const uint16_t* lo = x_lo + m * K;
    float* row_out = out + m * N;
    switch (panels) {
      case 1:
        GroupRowNative<1>(hi, lo, K, group, valid, row_out);
        break;
      case 2:
        GroupRowNative<2>(hi, lo, K, group, valid, row_out);
        break;
      case 3:
        GroupRowNative<3>(hi, lo, K, group, valid, row_out);
        break;
      default:
        GroupRowNative<kMaxPanels>(hi, lo, K, group, valid, row_out);
        break;
    }
  }
}
#undef DSMOE_PANELS_TARGET
#endif  // __x86_64__

// A bf16 element as vdpbf16ps reads it (denormals are zero).
inline float Bf16Operand(uint16_t bits) {
  return (bits & 0x7F80) == 0 ? bf16_to_f32(bits & 0x8000) : bf16_to_f32(bits);
}

// The scalar path: the same exact products, summed in k order.
void GroupRowsPortable(const uint16_t* x_hi, const uint16_t* x_lo, int64_t M, int64_t N, int64_t K,
                       const uint32_t* group, int panels, int64_t valid, float* out) {
  const auto* bits = reinterpret_cast<const uint16_t*>(group);
  for (int64_t m = 0; m < M; m++) {
    for (int64_t i = 0; i < valid; i++) {
      float sum_hi = 0.0f, sum_lo = 0.0f;
      for (int64_t k = 0; k < K; k++) {
        const float w = Bf16Operand(bits[2 * ((k / 2) * panels * kPanelLanes + i) + k % 2]);
        sum_hi += Bf16Operand(x_hi[m * K + k]) * w;
        sum_lo += Bf16Operand(x_lo[m * K + k]) * w;
      }
      out[m * N + i] = sum_hi + sum_lo;
    }
  }
}

}  // namespace

int64_t bf16_panel_boundary(int64_t n, int64_t N) {
  if (n >= N) return N;
  const int64_t nearest = (n + kPanelGroupRows / 2) / kPanelGroupRows * kPanelGroupRows;
  return std::min(nearest, N);
}

void bf16_panel_rows(const uint16_t* x_hi, const uint16_t* x_lo, int64_t M, const uint16_t* panels,
                     int64_t N, int64_t K, float* out, int64_t n_begin, int64_t n_end) {
  DSMOE_ASSERT(n_begin % kPanelGroupRows == 0 && (n_end % kPanelGroupRows == 0 || n_end == N));
  const int64_t group_words = (K + 1) / 2 * kPanelGroupRows;
#if defined(__x86_64__)
  const bool native = gemm_bf16_native();  // (true only where the CPU has AVX512-BF16)
#endif
  for (int64_t n0 = n_begin; n0 < n_end; n0 += kPanelGroupRows) {
    const auto* group =
        reinterpret_cast<const uint32_t*>(panels) + n0 / kPanelGroupRows * group_words;
    const int n_panels = static_cast<int>(panel_group_panels(N, n0));
    const int64_t valid = std::min(kPanelGroupRows, N - n0);
#if defined(__x86_64__)
    if (native) {
      GroupRowsNative(x_hi, x_lo, M, N, K, group, n_panels, valid, out + n0);
      continue;
    }
#endif
    GroupRowsPortable(x_hi, x_lo, M, N, K, group, n_panels, valid, out + n0);
  }
}

}  // namespace dsmoe::cpu
