// bf16_panels.cpp (cpu): matrix-vector products with bf16 panel weights (see bf16_panels.h).
// One path for CPUs with AVX512-BF16 (a function compiled for it, chosen at run time) and a
// scalar one for the rest; the model stores bf16 weights as panels only where the fast GEMM runs
// (cpu::gemm_bf16_native), so the scalar loop serves tests and odd CPUs.
#include "kernels/cpu/bf16_panels.h"

#include <immintrin.h>

#include <algorithm>
#include <cstring>
#include <utility>

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

// kPanels panels of one group (from `first` on; the group has group_panels panels, `valid` real
// rows from `first`'s first row on) against kRows activation rows at once: each 64-byte panel
// load feeds every row, so that a few rows (speculative verification, batched decode) read the
// weights once. A row's accumulators take the same vdpbf16ps in the same order whatever kRows
// and whichever panels share the pass: its bits are those of the row alone.
template <int kPanels, int kRows>
DSMOE_PANELS_TARGET void PanelsRowsNative(const uint16_t* x_hi, const uint16_t* x_lo, int64_t K,
                                          const uint32_t* first, int group_panels, int64_t valid,
                                          float* out, int64_t out_stride) {
  __m512 acc_hi[kRows][kPanels], acc_lo[kRows][kPanels];
  for (int r = 0; r < kRows; r++)
    for (int j = 0; j < kPanels; j++) acc_hi[r][j] = acc_lo[r][j] = _mm512_setzero_ps();
  const int64_t pairs = (K + 1) / 2, full_pairs = K / 2;
  const uint32_t* b = first;
  for (int64_t kp = 0; kp < pairs; kp++, b += group_panels * kPanelLanes) {
    __m512bh hi[kRows], lo[kRows];
    for (int r = 0; r < kRows; r++) {
      const uint16_t* row_hi = x_hi + r * K;
      const uint16_t* row_lo = x_lo + r * K;
      uint32_t hi_word, lo_word;
      if (kp < full_pairs) {  // (unaligned when K is odd: copy, not a uint32_t load)
        std::memcpy(&hi_word, reinterpret_cast<const uint8_t*>(row_hi) + 4 * kp, 4);
        std::memcpy(&lo_word, reinterpret_cast<const uint8_t*>(row_lo) + 4 * kp, 4);
      } else {
        hi_word = PairWord(row_hi, K, kp);
        lo_word = PairWord(row_lo, K, kp);
      }
      hi[r] = (__m512bh)_mm512_set1_epi32(static_cast<int>(hi_word));
      lo[r] = (__m512bh)_mm512_set1_epi32(static_cast<int>(lo_word));
    }
    for (int j = 0; j < kPanels; j++) {
      const uint32_t* panel = b + j * kPanelLanes;
      _mm_prefetch(reinterpret_cast<const char*>(panel) + kPrefetchBytes, _MM_HINT_T0);
      const __m512bh w = (__m512bh)_mm512_load_si512(panel);
      for (int r = 0; r < kRows; r++) {
        acc_hi[r][j] = _mm512_dpbf16_ps(acc_hi[r][j], w, hi[r]);
        acc_lo[r][j] = _mm512_dpbf16_ps(acc_lo[r][j], w, lo[r]);
      }
    }
  }
  for (int r = 0; r < kRows; r++)
    for (int j = 0; j < kPanels; j++) {
      const int64_t lanes = std::clamp<int64_t>(valid - j * kPanelLanes, 0, kPanelLanes);
      const __mmask16 mask = static_cast<__mmask16>((1u << lanes) - 1);
      _mm512_mask_storeu_ps(out + r * out_stride + j * kPanelLanes, mask,
                            _mm512_add_ps(acc_hi[r][j], acc_lo[r][j]));
    }
}

// A pass of r rows over p panels holds 2 r p accumulators and 2 r broadcast activation words
// in the 32 vector registers, one more for the weights: r (p + 1) <= 15 keeps it from spilling.
constexpr int kPassRegisterBudget = 15;
constexpr int kMaxPassRows = kPassRegisterBudget / 2;

// Panels per pass for `rows` rows (1 .. kMaxPassRows).
constexpr int PassPanels(int rows) {
  return std::min(kMaxPanels, std::max(1, kPassRegisterBudget / rows - 1));
}

// kRows rows against a whole group of `panels` panels, PassPanels(kRows) panels per pass: the
// passes read different cache lines of each k pair, so the group still streams from memory
// once.
template <int kRows>
DSMOE_PANELS_TARGET void GroupPassNative(const uint16_t* x_hi, const uint16_t* x_lo, int64_t N,
                                         int64_t K, const uint32_t* group, int panels,
                                         int64_t valid, float* out) {
  constexpr int kPass = PassPanels(kRows);
  for (int first = 0; first < panels; first += kPass) {
    const uint32_t* from = group + first * kPanelLanes;
    const int64_t valid_from = valid - first * kPanelLanes;
    float* out_from = out + first * kPanelLanes;
    switch (std::min(kPass, panels - first)) {
      case 1:
        PanelsRowsNative<1, kRows>(x_hi, x_lo, K, from, panels, valid_from, out_from, N);
        break;
      case 2:
        if constexpr (kPass >= 2)
          PanelsRowsNative<2, kRows>(x_hi, x_lo, K, from, panels, valid_from, out_from, N);
        break;
      case 3:
        if constexpr (kPass >= 3)
          PanelsRowsNative<3, kRows>(x_hi, x_lo, K, from, panels, valid_from, out_from, N);
        break;
      default:
        if constexpr (kPass >= 4)
          PanelsRowsNative<4, kRows>(x_hi, x_lo, K, from, panels, valid_from, out_from, N);
        break;
    }
  }
}

template <int... kRows>
DSMOE_PANELS_TARGET void GroupPassNativeOf(int64_t rows, const uint16_t* x_hi, const uint16_t* x_lo,
                                           int64_t N, int64_t K, const uint32_t* group, int panels,
                                           int64_t valid, float* out,
                                           std::integer_sequence<int, kRows...>) {
  // (kRows = 0 .. kMaxPassRows - 1: a pass of kRows + 1 rows)
  ((rows == kRows + 1 ? GroupPassNative<kRows + 1>(x_hi, x_lo, N, K, group, panels, valid, out)
                      : void()),
   ...);
}

// The M rows in passes of up to kMaxPassRows rows, each pass streaming the group once.
DSMOE_PANELS_TARGET void GroupRowsNative(const uint16_t* x_hi, const uint16_t* x_lo, int64_t M,
                                         int64_t N, int64_t K, const uint32_t* group, int panels,
                                         int64_t valid, float* out) {
  for (int64_t m = 0; m < M; m += kMaxPassRows) {
    const int64_t rows = std::min<int64_t>(M - m, kMaxPassRows);
    GroupPassNativeOf(rows, x_hi + m * K, x_lo + m * K, N, K, group, panels, valid, out + m * N,
                      std::make_integer_sequence<int, kMaxPassRows>{});
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
