// bf16_panels.cpp (cpu): matrix-vector products with bf16 panel weights (see bf16_panels.h).
// One path for CPUs with AVX512-BF16 (a function compiled for it, chosen at run time) and a
// scalar one for the rest; the model stores bf16 weights as panels only where the fast GEMM runs
// (cpu::gemm_bf16_native), so the scalar loop serves tests and odd CPUs.
#include "kernels/cpu/bf16_panels.h"

#include <immintrin.h>

#include <algorithm>
#include <cmath>
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

#if defined(__x86_64__)
// (AVX-512 F only: the weights are widened, not multiplied as bf16; the model stores panels
// where the CPU has AVX512-BF16, which implies it)
#define DSMOE_PANELS_TARGET __attribute__((target("avx512f")))

// kPanels panels of one group (from `first` on; the group has group_panels panels, `valid` real
// rows from `first`'s first row on) against kRows float32 activation rows at once. Each 64-byte
// panel load (16 weight rows x one k pair) is widened to float32 once, the even k by a shift and
// the odd k by a mask (bf16 is the top half of a float32), and feeds every row: two FMAs per row
// with the row's activations broadcast, into separate even and odd sums. Products are exact
// (8 x 24 significant bits) and the activations are used whole, where vdpbf16ps would need the
// bf16 hi + lo parts (16 bits) and, on Sapphire Rapids, runs at a quarter of the FMAs' rate
// (0.73 vs 0.17 ns per instruction): per row and panel two FMAs against two vdpbf16ps. A row's
// sums take the same FMAs in the same order whatever kRows and whichever panels share the pass:
// its bits are those of the row alone.
template <int kPanels, int kRows>
DSMOE_PANELS_TARGET void PanelsRowsNative(const float* x, int64_t K, const uint32_t* first,
                                          int group_panels, int64_t valid, float* out,
                                          int64_t out_stride) {
  __m512 acc_even[kRows][kPanels], acc_odd[kRows][kPanels];
  for (int r = 0; r < kRows; r++)
    for (int j = 0; j < kPanels; j++) acc_even[r][j] = acc_odd[r][j] = _mm512_setzero_ps();
  const __m512i high_half = _mm512_set1_epi32(static_cast<int>(0xFFFF0000u));
  const int64_t pairs = (K + 1) / 2, full_pairs = K / 2;
  const uint32_t* b = first;
  for (int64_t kp = 0; kp < pairs; kp++, b += group_panels * kPanelLanes) {
    __m512 x_even[kRows], x_odd[kRows];
    for (int r = 0; r < kRows; r++) {
      x_even[r] = _mm512_set1_ps(x[r * K + 2 * kp]);
      x_odd[r] = kp < full_pairs ? _mm512_set1_ps(x[r * K + 2 * kp + 1]) : _mm512_setzero_ps();
    }
    for (int j = 0; j < kPanels; j++) {
      const uint32_t* panel = b + j * kPanelLanes;
      _mm_prefetch(reinterpret_cast<const char*>(panel) + kPrefetchBytes, _MM_HINT_T0);
      const __m512i w = _mm512_load_si512(panel);
      // (the zero-masked form: GCC 12 warns that _mm512_slli_epi32's undefined source is unset)
      const __m512 w_even = _mm512_castsi512_ps(_mm512_maskz_slli_epi32(0xFFFF, w, 16));
      const __m512 w_odd = _mm512_castsi512_ps(_mm512_and_si512(w, high_half));
      for (int r = 0; r < kRows; r++) {
        acc_even[r][j] = _mm512_fmadd_ps(w_even, x_even[r], acc_even[r][j]);
        acc_odd[r][j] = _mm512_fmadd_ps(w_odd, x_odd[r], acc_odd[r][j]);
      }
    }
  }
  for (int r = 0; r < kRows; r++)
    for (int j = 0; j < kPanels; j++) {
      const int64_t lanes = std::clamp<int64_t>(valid - j * kPanelLanes, 0, kPanelLanes);
      const __mmask16 mask = static_cast<__mmask16>((1u << lanes) - 1);
      _mm512_mask_storeu_ps(out + r * out_stride + j * kPanelLanes, mask,
                            _mm512_add_ps(acc_even[r][j], acc_odd[r][j]));
    }
}

// A pass of r rows over p panels holds 2 r p sums and 2 r broadcast activations in the 32 vector
// registers, and the two widened weight vectors: r (p + 1) <= 14 keeps it from spilling.
constexpr int kPassRegisterBudget = 14;
constexpr int kMaxPassRows = kPassRegisterBudget / 2;

// Panels per pass for `rows` rows (1 .. kMaxPassRows).
constexpr int PassPanels(int rows) {
  return std::min(kMaxPanels, std::max(1, kPassRegisterBudget / rows - 1));
}

// kRows rows against a whole group of `panels` panels, PassPanels(kRows) panels per pass: the
// passes read different cache lines of each k pair, so the group still streams from memory
// once.
template <int kRows>
DSMOE_PANELS_TARGET void GroupPassNative(const float* x, int64_t N, int64_t K,
                                         const uint32_t* group, int panels, int64_t valid,
                                         float* out) {
  constexpr int kPass = PassPanels(kRows);
  for (int first = 0; first < panels; first += kPass) {
    const uint32_t* from = group + first * kPanelLanes;
    const int64_t valid_from = valid - first * kPanelLanes;
    float* out_from = out + first * kPanelLanes;
    switch (std::min(kPass, panels - first)) {
      case 1:
        PanelsRowsNative<1, kRows>(x, K, from, panels, valid_from, out_from, N);
        break;
      case 2:
        if constexpr (kPass >= 2)
          PanelsRowsNative<2, kRows>(x, K, from, panels, valid_from, out_from, N);
        break;
      case 3:
        if constexpr (kPass >= 3)
          PanelsRowsNative<3, kRows>(x, K, from, panels, valid_from, out_from, N);
        break;
      default:
        if constexpr (kPass >= 4)
          PanelsRowsNative<4, kRows>(x, K, from, panels, valid_from, out_from, N);
        break;
    }
  }
}

template <int... kRows>
DSMOE_PANELS_TARGET void GroupPassNativeOf(int64_t rows, const float* x, int64_t N, int64_t K,
                                           const uint32_t* group, int panels, int64_t valid,
                                           float* out, std::integer_sequence<int, kRows...>) {
  // (kRows = 0 .. kMaxPassRows - 1: a pass of kRows + 1 rows)
  ((rows == kRows + 1 ? GroupPassNative<kRows + 1>(x, N, K, group, panels, valid, out) : void()),
   ...);
}

// The M rows in passes of up to kMaxPassRows rows, each pass streaming the group once.
DSMOE_PANELS_TARGET void GroupRowsNative(const float* x, int64_t M, int64_t N, int64_t K,
                                         const uint32_t* group, int panels, int64_t valid,
                                         float* out) {
  for (int64_t m = 0; m < M; m += kMaxPassRows) {
    const int64_t rows = std::min<int64_t>(M - m, kMaxPassRows);
    GroupPassNativeOf(rows, x + m * K, N, K, group, panels, valid, out + m * N,
                      std::make_integer_sequence<int, kMaxPassRows>{});
  }
}
#undef DSMOE_PANELS_TARGET
#endif  // __x86_64__

// The scalar path: the same FMAs in the same order (std::fma rounds once, as vfmadd does), so
// the same bits.
void GroupRowsPortable(const float* x, int64_t M, int64_t N, int64_t K, const uint32_t* group,
                       int panels, int64_t valid, float* out) {
  const auto* bits = reinterpret_cast<const uint16_t*>(group);
  for (int64_t m = 0; m < M; m++) {
    for (int64_t i = 0; i < valid; i++) {
      float sum_even = 0.0f, sum_odd = 0.0f;
      for (int64_t k = 0; k < K; k++) {
        const float w = bf16_to_f32(bits[2 * ((k / 2) * panels * kPanelLanes + i) + k % 2]);
        float& sum = k % 2 == 0 ? sum_even : sum_odd;
        sum = std::fma(w, x[m * K + k], sum);
      }
      out[m * N + i] = sum_even + sum_odd;
    }
  }
}

}  // namespace

int64_t bf16_panel_boundary(int64_t n, int64_t N) {
  if (n >= N) return N;
  const int64_t nearest = (n + kPanelGroupRows / 2) / kPanelGroupRows * kPanelGroupRows;
  return std::min(nearest, N);
}

void bf16_panel_rows(const float* x, int64_t M, const uint16_t* panels, int64_t N, int64_t K,
                     float* out, int64_t n_begin, int64_t n_end) {
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
      GroupRowsNative(x, M, N, K, group, n_panels, valid, out + n0);
      continue;
    }
#endif
    GroupRowsPortable(x, M, N, K, group, n_panels, valid, out + n0);
  }
}

}  // namespace dsmoe::cpu
