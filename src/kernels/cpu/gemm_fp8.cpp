// gemm_fp8.cpp (cpu): FP8 (e4m3 + 128 x 128 block scales) weights times float32 activations; see
// gemm_fp8.h. Compiled for every x86 target through hwy/foreach_target.h like quant_ops.cpp.
//
// e4m3fn -> float32 in registers: sign-extend the byte to 16 bits, shift left by 7 and clear bit
// 14: the sign lands in bit 15, the 4 exponent bits in the f16 exponent's low 4 bits and the 3
// mantissa bits at the top of the f16 mantissa. With f16's bias 15 against e4m3's 7 that f16 is
// the e4m3 value times 2^-8, exactly, for subnormals too (f16 subnormal 2^-14 * m / 8 = e4m3
// subnormal 2^-6 * m / 8 times 2^-8); F16C's vcvtph2ps (Highway's PromoteTo) widens it. The
// scale of the block takes the 2^8 back (a power of two: exact).

// clang-format off
#ifndef HWY_WANT_AVX3_DL
#define HWY_WANT_AVX3_DL
#endif
#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "kernels/cpu/gemm_fp8.cpp"
#include "hwy/foreach_target.h"  // IWYU pragma: keep
#include "hwy/highway.h"
#include "hwy/cache_control.h"
// clang-format on

#include "kernels/cpu/gemm_fp8.h"

#include <omp.h>

#include <algorithm>
#include <cstdint>
#include <vector>

#include "kernels/cpu/isa_dispatch.h"
#include "kernels/cpu/ops.h"
#include "kernels/cpu/quant_acts.h"
#include "kernels/quant.h"
#include "tensor/dtype.h"
#include "util/cpu_cap.h"

#ifndef DSMOE_KERNELS_CPU_GEMM_FP8_SHARED_
#define DSMOE_KERNELS_CPU_GEMM_FP8_SHARED_
namespace dsmoe::cpu::gemm_fp8_detail {

// The kernels' weight values are e4m3 * 2^-8 (the f16 bits above); block scales times this.
constexpr float kScaleBack = 256.0f;

// The scalar twin of the vector conversion (tails of rows that are not a whole vector).
inline float e4m3_scaled(uint8_t b) {
  return f16_to_f32(static_cast<uint16_t>(((b & 0x80) << 8) | ((b & 0x7F) << 7)));
}

// Activation rows one pass over a weight row serves (their sums stay in registers).
constexpr int kMaxRowsPerPass = 4;

// Bytes ahead that the row kernels prefetch (as quant_ops.cpp's matrix-vector kernels do).
constexpr int64_t kPrefetchBytes = 4096;

}  // namespace dsmoe::cpu::gemm_fp8_detail
#endif  // DSMOE_KERNELS_CPU_GEMM_FP8_SHARED_

HWY_BEFORE_NAMESPACE();
#if HWY_TARGET == HWY_AVX3_DL
// GFNI for gemm_fp8_gfni-inl.h (Highway 1.0.3's AVX3_DL target string lacks it; every CPU of
// that target has it, and RowsFp8 checks at run time before it takes that kernel).
HWY_PUSH_ATTRIBUTES("gfni")
#endif
namespace dsmoe::cpu {
namespace HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;
namespace detail = gemm_fp8_detail;

// Lanes(df) e4m3 bytes at p -> float32 e4m3 * 2^-8.
template <class DF>
HWY_INLINE hn::Vec<DF> E4m3ToF32(DF df, const uint8_t* HWY_RESTRICT p) {
  const hn::Rebind<int8_t, DF> d8;
  const hn::Rebind<int16_t, DF> d16;
  const hn::Rebind<hwy::float16_t, DF> dh;
  const auto wide = hn::PromoteTo(d16, hn::LoadU(d8, reinterpret_cast<const int8_t*>(p)));
  const auto bits = hn::And(hn::ShiftLeft<7>(wide), hn::Set(d16, static_cast<int16_t>(0xBF80)));
  return hn::PromoteTo(df, hn::BitCast(dh, bits));
}

#if HWY_ARCH_X86 && HWY_TARGET <= HWY_AVX2
// 2 Lanes(df) e4m3 bytes at p -> float32 e4m3 * 2^-8 (lo: the first Lanes(df), hi: the next):
// one widening, shift and mask for both halves (a full vector of f16), then two widenings to
// float32: 5 instructions per 16 weights on AVX-512 instead of 6.
template <class DF>
HWY_INLINE void E4m3ToF32Pair(DF df, const uint8_t* HWY_RESTRICT p, hn::Vec<DF>& lo,
                              hn::Vec<DF>& hi) {
  const hn::Repartition<int16_t, DF> d16;  // 2 Lanes(df)
  const hn::Rebind<int8_t, decltype(d16)> d8;
  const hn::Repartition<hwy::float16_t, DF> dh;
  const hn::Half<decltype(dh)> dh_half;
  const auto wide = hn::PromoteTo(d16, hn::LoadU(d8, reinterpret_cast<const int8_t*>(p)));
  const auto bits = hn::And(hn::ShiftLeft<7>(wide), hn::Set(d16, static_cast<int16_t>(0xBF80)));
  const auto f16 = hn::BitCast(dh, bits);
  lo = hn::PromoteTo(df, hn::LowerHalf(dh_half, f16));
  hi = hn::PromoteTo(df, hn::UpperHalf(dh_half, f16));
}
#else
template <class DF>
HWY_INLINE void E4m3ToF32Pair(DF df, const uint8_t* HWY_RESTRICT p, hn::Vec<DF>& lo,
                              hn::Vec<DF>& hi) {
  lo = E4m3ToF32(df, p);
  hi = E4m3ToF32(df, p + hn::Lanes(df));
}
#endif

// out[r * out_stride] = x[r] . w for kRows activation rows x[r] (row stride K) and one weight row
// (e4m3 bytes w[K], block scales scales[]).
template <int kRows>
HWY_INLINE void DotRow(const float* HWY_RESTRICT x, int64_t K, const uint8_t* HWY_RESTRICT w,
                       const float* HWY_RESTRICT scales, float* HWY_RESTRICT out,
                       int64_t out_stride) {
  const hn::ScalableTag<float> df;
  using V = hn::Vec<decltype(df)>;
  const int64_t L = static_cast<int64_t>(hn::Lanes(df));
  V total[kRows];
  float tail_total[kRows];
  for (int r = 0; r < kRows; r++) total[r] = hn::Zero(df), tail_total[r] = 0.0f;
  for (int64_t k0 = 0; k0 < K; k0 += kFp8Block) {
    const int64_t k1 = std::min(k0 + kFp8Block, K);
    hwy::Prefetch(w + k0 + detail::kPrefetchBytes);
    hwy::Prefetch(w + k0 + detail::kPrefetchBytes + 64);
    V acc0[kRows], acc1[kRows];
    for (int r = 0; r < kRows; r++) acc0[r] = hn::Zero(df), acc1[r] = hn::Zero(df);
    int64_t k = k0;
    for (; k + 2 * L <= k1; k += 2 * L) {
      V w0, w1;
      E4m3ToF32Pair(df, w + k, w0, w1);
      for (int r = 0; r < kRows; r++) {
        acc0[r] = hn::MulAdd(w0, hn::LoadU(df, x + r * K + k), acc0[r]);
        acc1[r] = hn::MulAdd(w1, hn::LoadU(df, x + r * K + k + L), acc1[r]);
      }
    }
    for (; k + L <= k1; k += L) {
      const V w0 = E4m3ToF32(df, w + k);
      for (int r = 0; r < kRows; r++)
        acc0[r] = hn::MulAdd(w0, hn::LoadU(df, x + r * K + k), acc0[r]);
    }
    float tail[kRows] = {};
    for (; k < k1; k++) {
      const float wk = detail::e4m3_scaled(w[k]);
      for (int r = 0; r < kRows; r++) tail[r] += x[r * K + k] * wk;
    }
    const float scale = scales[k0 / kFp8Block] * detail::kScaleBack;
    for (int r = 0; r < kRows; r++) {
      total[r] = hn::MulAdd(hn::Add(acc0[r], acc1[r]), hn::Set(df, scale), total[r]);
      tail_total[r] += tail[r] * scale;
    }
  }
  for (int r = 0; r < kRows; r++)
    out[r * out_stride] = hn::GetLane(hn::SumOfLanes(df, total[r])) + tail_total[r];
}

// Rows [n_begin, n_end) of out[M, w.rows] through DotRow.
void RowsFp8F16(const float* HWY_RESTRICT x, int64_t M, const QuantMatrix& w,
                float* HWY_RESTRICT out, int64_t n_begin, int64_t n_end) {
  const int64_t N = w.rows, K = w.cols;
  for (int64_t n = n_begin; n < n_end; n++) {
    const auto* row = static_cast<const uint8_t*>(w.row(n));
    const float* scales = w.row_block_scales(n);
    for (int64_t m0 = 0; m0 < M; m0 += detail::kMaxRowsPerPass) {
      const float* xm = x + m0 * K;
      float* o = out + m0 * N + n;
      switch (std::min<int64_t>(detail::kMaxRowsPerPass, M - m0)) {
        case 1:
          DotRow<1>(xm, K, row, scales, o, N);
          break;
        case 2:
          DotRow<2>(xm, K, row, scales, o, N);
          break;
        case 3:
          DotRow<3>(xm, K, row, scales, o, N);
          break;
        default:
          DotRow<4>(xm, K, row, scales, o, N);
          break;
      }
    }
  }
  static_assert(detail::kMaxRowsPerPass == 4);
}

#if HWY_TARGET == HWY_AVX3_DL
// RowsFp8Gfni, in this target's namespace.
#include "kernels/cpu/gemm_fp8_gfni-inl.h"
#endif

void RowsFp8(const float* HWY_RESTRICT x, int64_t M, const QuantMatrix& w, float* HWY_RESTRICT out,
             int64_t n_begin, int64_t n_end) {
#if HWY_TARGET == HWY_AVX3_DL
  static const bool has_gfni = cpu_allows_avx512_gfni();
  if (has_gfni) return RowsFp8Gfni(x, M, w, out, n_begin, n_end);
#endif
  RowsFp8F16(x, M, w, out, n_begin, n_end);
}

// Whether RowsFp8 takes RowsFp8Gfni on this CPU (in the target that dispatch chose).
bool RowsAreGfni() {
#if HWY_TARGET == HWY_AVX3_DL
  return cpu_allows_avx512_gfni();
#else
  return false;
#endif
}

// rows x cols e4m3 bytes (row stride `stride`, the block row's scales[cols / kFp8Block]) ->
// float32 e4m3 * scale [rows, cols]: the expanded weights (e4m3 * 2^-8 exact, times scale * 2^8,
// rounded once).
void E4m3BlockToF32(const uint8_t* HWY_RESTRICT w, int64_t stride, int64_t rows, int64_t cols,
                    const float* HWY_RESTRICT scales, float* HWY_RESTRICT dst) {
  const hn::ScalableTag<float> df;
  const int64_t L = static_cast<int64_t>(hn::Lanes(df));
  for (int64_t r = 0; r < rows; r++)
    for (int64_t k0 = 0; k0 < cols; k0 += kFp8Block) {
      const int64_t k1 = std::min(k0 + kFp8Block, cols);
      const float factor = scales[k0 / kFp8Block] * detail::kScaleBack;
      const auto f = hn::Set(df, factor);
      const uint8_t* src = w + r * stride;
      float* d = dst + r * cols;
      int64_t k = k0;
      for (; k + L <= k1; k += L) hn::StoreU(hn::Mul(E4m3ToF32(df, src + k), f), df, d + k);
      for (; k < k1; k++) d[k] = detail::e4m3_scaled(src[k]) * factor;
    }
}

}  // namespace HWY_NAMESPACE
}  // namespace dsmoe::cpu
#if HWY_TARGET == HWY_AVX3_DL
HWY_POP_ATTRIBUTES
#endif
HWY_AFTER_NAMESPACE();

#if HWY_ONCE
namespace dsmoe::cpu {

HWY_EXPORT(RowsFp8);
HWY_EXPORT(RowsAreGfni);
HWY_EXPORT(E4m3BlockToF32);
namespace {
// DSMOE_MAX_ISA holds before the first dispatch (kernels/cpu/isa_dispatch.h).
[[maybe_unused]] const int64_t kIsaCapApplied = apply_isa_cap();

// Enough multiply-adds to be worth waking the OpenMP team.
constexpr int64_t kMinParallelWork = int64_t{1} << 16;

}  // namespace

void fp8_rows(const float* x, int64_t M, const QuantMatrix& w, float* out, int64_t n_begin,
              int64_t n_end) {
  HWY_DYNAMIC_DISPATCH(RowsFp8)(x, M, w, out, n_begin, n_end);
}

bool fp8_rows_gfni() { return HWY_DYNAMIC_DISPATCH(RowsAreGfni)(); }

void gemm_fp8(float* out, const float* x, int64_t M, const QuantMatrix& w) {
  const int64_t N = w.rows, K = w.cols;
  if (M <= 0 || N <= 0) return;
  const int64_t n_row_blocks = fp8_blocks(N);
  // Threads take whole blocks of rows; BLAS inside runs on the calling thread (in a parallel
  // region OpenBLAS does not start threads of its own).
#pragma omp parallel for schedule(static) if (M * N * K >= kMinParallelWork)
  for (int64_t rb = 0; rb < n_row_blocks; rb++) {
    const int64_t r0 = rb * kFp8Block, nr = std::min(kFp8Block, N - r0);
    thread_local std::vector<float> expanded;  // [nr, K]
    expanded.resize(static_cast<size_t>(nr * K));
    HWY_DYNAMIC_DISPATCH(E4m3BlockToF32)
    (static_cast<const uint8_t*>(w.row(r0)), K, nr, K, w.row_block_scales(r0), expanded.data());
    gemm(false, true, M, nr, K, 1.0f, x, K, expanded.data(), K, 0.0f, out + r0, N);
  }
}

}  // namespace dsmoe::cpu
#endif  // HWY_ONCE
