// quant_ops.cpp (cpu): products of float32 activations with bf16 / Q8_0 / Q4_0 weight rows.
// Written once against Highway's ops and compiled for every x86 target by re-including this file
// through hwy/foreach_target.h (the layout of hwy/examples/skeleton.cc); the code between
// HWY_BEFORE_NAMESPACE and HWY_AFTER_NAMESPACE exists once per target, and HWY_DYNAMIC_DISPATCH
// picks the best one the CPU supports. AVX3_DL (AVX-512 with VNNI: Ice Lake, Zen 4 and later)
// adds hand-written paths: vpdpbusd for the int8 formats, and vdpbf16ps for bf16 where the CPU
// also has AVX512-BF16.

// Highway 1.0.3 leaves AVX3_DL out of the dispatch set unless asked for. foreach_target.h comes
// first (it re-includes this file once per target), hence no clang-format include sorting here.
// clang-format off
#ifndef HWY_WANT_AVX3_DL
#define HWY_WANT_AVX3_DL
#endif
#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "kernels/cpu/quant_ops.cpp"
#include "hwy/foreach_target.h"  // IWYU pragma: keep
#include "hwy/highway.h"
// clang-format on

#include "kernels/cpu/quant_ops.h"

#include <omp.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <vector>

#include "kernels/cpu/bf16_panels.h"
#include "kernels/cpu/gemm_bf16.h"
#include "kernels/cpu/gemm_fp8.h"
#include "kernels/cpu/gemm_quant.h"
#include "kernels/cpu/isa_dispatch.h"
#include "kernels/cpu/ops.h"
#include "kernels/cpu/quant_acts.h"
#include "kernels/quant.h"
#include "tensor/dtype.h"
#include "util/check.h"
#include "util/cpu_cap.h"
#include "util/profile.h"

// Per target: the row kernels. Conventions shared by all of them:
//  * out is [M, N] with N = w.rows; rows of w are split between threads, and for M > 1 each
//    weight row, once loaded, is multiplied with all M activation rows while it is hot in L1/L2.
//  * K = w.cols; for the block formats nb = K / 32 blocks per row.
HWY_BEFORE_NAMESPACE();
#if HWY_TARGET == HWY_AVX3_DL
// Highway 1.0.3's AVX3_DL target string names avxvnni (the 256-bit VEX form, which Ice Lake
// lacks) but not avx512vnni, although its CPU check requires AVX512-VNNI: add it, for
// _mm512_dpbusd_epi32 (GCC's target pragmas accumulate).
HWY_PUSH_ATTRIBUTES("avx512vnni")
#endif
namespace dsmoe::cpu {
namespace HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;

// Software prefetch distance of the matrix-vector kernels: weights stream from memory once, and
// the hardware prefetchers alone leave part of the bandwidth unused (about 15% here). The Q8_0 /
// Q4_0 kernels prefetch into L2 (prefetcht1), not L1: on the 2-core Xeon the bandwidth probe's
// Q4_0 / Q8_0 kernels read 15.9 / 14.2 GB/s against 12.6 / 11.6 with prefetcht0 (1 GiB,
// loaded machine; prefetchnta: 7.1, none: 11.1 / 9.9); an L1 prefetch holds one of the core's
// few line fill buffers for the whole trip from memory.
[[maybe_unused]] constexpr int64_t kPrefetchBytes = 4096;

// An f16 block scale as float; a one-lane PromoteTo, which is vcvtph2ps from AVX2 up.
HWY_INLINE float ScaleF32(const uint16_t& scale_f16) {
  const hn::CappedTag<float, 1> df;
  const hn::Rebind<hwy::float16_t, decltype(df)> df16;
  return hn::GetLane(
      hn::PromoteTo(df, hn::LoadU(df16, reinterpret_cast<const hwy::float16_t*>(&scale_f16))));
}

#if HWY_TARGET == HWY_AVX3_DL
// Sum of the 16 lanes (_mm512_reduce_add_ps trips GCC 12's -Wuninitialized).
HWY_INLINE float ReduceSum(__m512 v) {
  const __m256 s8 = _mm256_add_ps(_mm512_castps512_ps256(v), _mm512_extractf32x8_ps(v, 1));
  __m128 s4 = _mm_add_ps(_mm256_castps256_ps128(s8), _mm256_extractf128_ps(s8, 1));
  s4 = _mm_add_ps(s4, _mm_movehl_ps(s4, s4));
  return _mm_cvtss_f32(_mm_add_ss(s4, _mm_movehdup_ps(s4)));
}
#endif

// ---------------------------------------------------------------------------------------------
// bf16 x bf16 -> float32. ReorderWidenMulAccumulate is Highway's bf16 dot-product op; in Highway
// 1.0.3 it is emulated on x86 (shift the bf16 halves into float32 lanes, then FMA: exact
// products, float32 sums) rather than vdpbf16ps, so it is "widen and FMA" in effect. On AVX3_DL
// CPUs that also have AVX512-BF16 the native vdpbf16ps path below is used instead.

HWY_INLINE float DotBF16(const hwy::bfloat16_t* HWY_RESTRICT x,
                         const hwy::bfloat16_t* HWY_RESTRICT w, int64_t K) {
  const hn::ScalableTag<hwy::bfloat16_t> dbf;
  const hn::Repartition<float, decltype(dbf)> df;  // (on HWY_SCALAR, as many lanes as dbf)
  const int64_t NB = static_cast<int64_t>(hn::Lanes(dbf));
  // Two independent pairs of accumulators hide the FMA latency.
  auto sum0 = hn::Zero(df), sum1 = hn::Zero(df), sum2 = hn::Zero(df), sum3 = hn::Zero(df);
  int64_t k = 0;
  for (; k + 2 * NB <= K; k += 2 * NB) {
    sum0 =
        hn::ReorderWidenMulAccumulate(df, hn::LoadU(dbf, x + k), hn::LoadU(dbf, w + k), sum0, sum1);
    sum2 = hn::ReorderWidenMulAccumulate(df, hn::LoadU(dbf, x + k + NB), hn::LoadU(dbf, w + k + NB),
                                         sum2, sum3);
  }
  for (; k + NB <= K; k += NB)
    sum0 =
        hn::ReorderWidenMulAccumulate(df, hn::LoadU(dbf, x + k), hn::LoadU(dbf, w + k), sum0, sum1);
  float tail = 0.0f;  // K need not be a multiple of the vector length for bf16
  for (; k < K; k++) tail += hwy::F32FromBF16(x[k]) * hwy::F32FromBF16(w[k]);
  const auto sum =
      hn::Add(hn::RearrangeToOddPlusEven(sum0, sum1), hn::RearrangeToOddPlusEven(sum2, sum3));
  return hn::GetLane(hn::SumOfLanes(df, sum)) + tail;
}

#if HWY_TARGET == HWY_AVX3_DL
// AVX512-BF16 (Zen 4, Sapphire Rapids and later, but not Ice Lake, which is AVX3_DL too; hence a
// run-time check of its own): vdpbf16ps adds the products of 32 bf16 pairs into 16 float32
// lanes (exact products, round to nearest; bf16 denormals count as zero). The tail is a masked
// load, which reads nothing past K.
__attribute__((target("avx512bf16"))) float DotBF16Native(const uint16_t* HWY_RESTRICT x,
                                                          const uint16_t* HWY_RESTRICT w,
                                                          int64_t K) {
  auto load = [](const uint16_t* p) { return (__m512bh)_mm512_loadu_si512(p); };
  __m512 sum0 = _mm512_setzero_ps(), sum1 = _mm512_setzero_ps();
  int64_t k = 0;
  for (; k + 64 <= K; k += 64) {
    sum0 = _mm512_dpbf16_ps(sum0, load(x + k), load(w + k));
    sum1 = _mm512_dpbf16_ps(sum1, load(x + k + 32), load(w + k + 32));
  }
  for (; k + 32 <= K; k += 32) sum0 = _mm512_dpbf16_ps(sum0, load(x + k), load(w + k));
  if (k < K) {
    const __mmask32 tail = (__mmask32{1} << (K - k)) - 1;
    sum1 = _mm512_dpbf16_ps(sum1, (__m512bh)_mm512_maskz_loadu_epi16(tail, x + k),
                            (__m512bh)_mm512_maskz_loadu_epi16(tail, w + k));
  }
  return ReduceSum(_mm512_add_ps(sum0, sum1));
}

// Four consecutive weight rows n0 .. n0 + 3 against one activation row (hi + lo parts): the
// activation vectors are loaded once for the four rows, and four rows stream from memory at
// once.
__attribute__((target("avx512bf16"))) void DotBF16Native4(const uint16_t* HWY_RESTRICT x_hi,
                                                          const uint16_t* HWY_RESTRICT x_lo,
                                                          const QuantMatrix& w, int64_t K,
                                                          int64_t n0, float* HWY_RESTRICT out) {
  auto load = [](const uint16_t* p) { return (__m512bh)_mm512_loadu_si512(p); };
  auto load_tail = [](const uint16_t* p, __mmask32 mask) {
    return (__m512bh)_mm512_maskz_loadu_epi16(mask, p);
  };
  const uint16_t* rows[4];
  for (int r = 0; r < 4; r++) rows[r] = static_cast<const uint16_t*>(w.row(n0 + r));
  __m512 sum[4] = {_mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps(),
                   _mm512_setzero_ps()};
  int64_t k = 0;
  for (; k + 32 <= K; k += 32) {
    const __m512bh hi = load(x_hi + k), lo = load(x_lo + k);
    for (int r = 0; r < 4; r++) {
      _mm_prefetch(reinterpret_cast<const char*>(rows[r] + k) + kPrefetchBytes, _MM_HINT_T0);
      const __m512bh wv = load(rows[r] + k);
      sum[r] = _mm512_dpbf16_ps(_mm512_dpbf16_ps(sum[r], hi, wv), lo, wv);
    }
  }
  if (k < K) {
    const __mmask32 tail = (__mmask32{1} << (K - k)) - 1;
    const __m512bh hi = load_tail(x_hi + k, tail), lo = load_tail(x_lo + k, tail);
    for (int r = 0; r < 4; r++) {
      const __m512bh wv = load_tail(rows[r] + k, tail);
      sum[r] = _mm512_dpbf16_ps(_mm512_dpbf16_ps(sum[r], hi, wv), lo, wv);
    }
  }
  for (int r = 0; r < 4; r++) out[r] = ReduceSum(sum[r]);
}

static bool CpuHasAvx512Bf16() {
  static const bool has = cpu_allows_avx512_bf16();
  return has;
}
#endif  // HWY_TARGET == HWY_AVX3_DL

// x: the activations as two bf16 parts [2, M, K], hi = bf16(a) and lo = bf16(a - hi), so that
// hi + lo carries 16 significant bits of the float32 activation: the product then loses only
// the weights' rounding (greedy decoding at bf16 follows float32 on the reference fixtures; with
// hi alone it does not). The weight row is read from memory once; its second pass hits L1/L2.
void RowsBF16(const uint16_t* HWY_RESTRICT x, int64_t M, const QuantMatrix& w,
              float* HWY_RESTRICT out, int64_t n_begin, int64_t n_end) {
  const int64_t N = w.rows, K = w.cols;
  const uint16_t* x_lo = x + M * K;
#if HWY_TARGET == HWY_AVX3_DL
  if (CpuHasAvx512Bf16()) {
    int64_t n = n_begin;
    // Four rows at a time, four streams from memory, each group against every activation row
    // (the same bits for a row whatever M: see set_row_kernels).
    for (; n + 4 <= n_end; n += 4)
      for (int64_t m = 0; m < M; m++)
        DotBF16Native4(x + m * K, x_lo + m * K, w, K, n, out + m * N + n);
    for (; n < n_end; n++) {
      const auto* wr = static_cast<const uint16_t*>(w.row(n));
      for (int64_t m = 0; m < M; m++)
        out[m * N + n] = DotBF16Native(x + m * K, wr, K) + DotBF16Native(x_lo + m * K, wr, K);
    }
    return;
  }
#endif
  const auto* xb = reinterpret_cast<const hwy::bfloat16_t*>(x);
  const auto* xb_lo = reinterpret_cast<const hwy::bfloat16_t*>(x_lo);
  for (int64_t n = n_begin; n < n_end; n++) {
    const auto* wb = static_cast<const hwy::bfloat16_t*>(w.row(n));
    for (int64_t m = 0; m < M; m++)
      out[m * N + n] = DotBF16(xb + m * K, wb, K) + DotBF16(xb_lo + m * K, wb, K);
  }
}

// ---------------------------------------------------------------------------------------------
// Q8_0 / Q4_0 weights x Q8_0 activations (llama.cpp's ggml_vec_dot_q8_0_q8_0 and
// ggml_vec_dot_q4_0_q8_0): per block an exact int32 sum of 32 int8 x int8 products, then
// sum += scale_w * scale_x * (float)block_sum in float32.

// Portable block sums: sign-extend int8 to int16 and multiply-add pairs into int32
// (ReorderWidenMulAccumulate on int16 is vpmaddwd on x86). Returns int32 lanes summing to the
// block's dot product; one block fills at most 32 int16 lanes.
HWY_INLINE auto BlockSumQ8(const int8_t* HWY_RESTRICT wq, const int8_t* HWY_RESTRICT xq) {
  const hn::CappedTag<int16_t, kQuantBlock> d16;
  const hn::Rebind<int8_t, decltype(d16)> d8;
  const hn::Repartition<int32_t, decltype(d16)> d32;
  auto sum0 = hn::Zero(d32), sum1 = hn::Zero(d32);
  for (int64_t j = 0; j < kQuantBlock; j += static_cast<int64_t>(hn::Lanes(d16)))
    sum0 = hn::ReorderWidenMulAccumulate(d32, hn::PromoteTo(d16, hn::LoadU(d8, wq + j)),
                                         hn::PromoteTo(d16, hn::LoadU(d8, xq + j)), sum0, sum1);
  return hn::RearrangeToOddPlusEven(sum0, sum1);
}

// Q4_0: byte j holds elements j (low nibble) and j + 16 (high nibble), each stored + 8. Works on
// half blocks (16 int16 lanes at most) so that a vector never straddles the two nibble halves.
HWY_INLINE auto BlockSumQ4(const uint8_t* HWY_RESTRICT wq, const int8_t* HWY_RESTRICT xq) {
  constexpr int64_t kHalf = kQuantBlock / 2;
  const hn::CappedTag<int16_t, kHalf> d16;
  const hn::RebindToUnsigned<decltype(d16)> du16;
  const hn::Rebind<uint8_t, decltype(d16)> du8;
  const hn::Rebind<int8_t, decltype(d16)> d8;
  const hn::Repartition<int32_t, decltype(d16)> d32;
  const auto low_mask = hn::Set(d16, 0x0F), bias = hn::Set(d16, 8);
  auto sum0 = hn::Zero(d32), sum1 = hn::Zero(d32);
  for (int64_t j = 0; j < kHalf; j += static_cast<int64_t>(hn::Lanes(d16))) {
    const auto packed = hn::BitCast(d16, hn::PromoteTo(du16, hn::LoadU(du8, wq + j)));
    const auto lo = hn::Sub(hn::And(packed, low_mask), bias);
    const auto hi = hn::Sub(hn::ShiftRight<4>(packed), bias);
    sum0 = hn::ReorderWidenMulAccumulate(d32, lo, hn::PromoteTo(d16, hn::LoadU(d8, xq + j)), sum0,
                                         sum1);
    sum0 = hn::ReorderWidenMulAccumulate(d32, hi, hn::PromoteTo(d16, hn::LoadU(d8, xq + kHalf + j)),
                                         sum0, sum1);
  }
  return hn::RearrangeToOddPlusEven(sum0, sum1);
}

// sum_b scale_w[b] * x_scale[b] * block_sum(b), two accumulators to hide the FMA latency.
template <class BlockSum>
HWY_INLINE float DotBlocks(const uint16_t* HWY_RESTRICT w_scale, const float* HWY_RESTRICT x_scale,
                           int64_t nb, const BlockSum& block_sum) {
  using VI32 = decltype(block_sum(int64_t{0}));
  const hn::RebindToFloat<hn::DFromV<VI32>> df;
  auto acc0 = hn::Zero(df), acc1 = hn::Zero(df);
  int64_t b = 0;
  for (; b + 2 <= nb; b += 2) {
    acc0 = hn::MulAdd(hn::Set(df, ScaleF32(w_scale[b]) * x_scale[b]),
                      hn::ConvertTo(df, block_sum(b)), acc0);
    acc1 = hn::MulAdd(hn::Set(df, ScaleF32(w_scale[b + 1]) * x_scale[b + 1]),
                      hn::ConvertTo(df, block_sum(b + 1)), acc1);
  }
  if (b < nb)
    acc0 = hn::MulAdd(hn::Set(df, ScaleF32(w_scale[b]) * x_scale[b]),
                      hn::ConvertTo(df, block_sum(b)), acc0);
  return hn::GetLane(hn::SumOfLanes(df, hn::Add(acc0, acc1)));
}

#if HWY_TARGET == HWY_AVX3_DL
// The VNNI row kernels (DotRowVNNI), in this target's namespace.
#include "kernels/cpu/quant_vnni-inl.h"
#endif  // HWY_TARGET == HWY_AVX3_DL

// Block-format rows [n_begin, n_end) against activations prepared as Q8_0 blocks.
void RowsBlocks(const PreparedActs& acts, const QuantMatrix& w, float* HWY_RESTRICT out,
                int64_t n_begin, int64_t n_end) {
  const int64_t N = w.rows, nb = w.cols / kQuantBlock, M = acts.M;
  const bool q8 = w.format == WeightFormat::kQ8_0;
#if HWY_TARGET == HWY_AVX3_DL
  if (w.panels) {  // block panels: 16 rows at a time, as above
    DSMOE_ASSERT(n_begin % kBlockPanelRows == 0 && (n_end % kBlockPanelRows == 0 || n_end == N));
    for (int64_t p = n_begin / kBlockPanelRows; p * kBlockPanelRows < n_end; p++)
      for (int64_t m0 = 0; m0 < M; m0 += kVnniRowsPerPass) {
        const VnniGroup* x[kVnniRowsPerPass];
        const int64_t rows = std::min(kVnniRowsPerPass, M - m0);
        for (int64_t r = 0; r < rows; r++) x[r] = acts.groups + (m0 + r) * acts.groups_per_row;
        float* o = out + m0 * N;
        switch (rows) {
          case 1:
            DotPanelRowsVNNI<1>(q8, w, p, x, o, N);
            break;
          case 2:
            DotPanelRowsVNNI<2>(q8, w, p, x, o, N);
            break;
          case 3:
            DotPanelRowsVNNI<3>(q8, w, p, x, o, N);
            break;
          default:
            DotPanelRowsVNNI<4>(q8, w, p, x, o, N);
            break;
        }
      }
    return;
  }
  // Each weight row against all M activation rows while it is in L1 (batched decode reads the
  // weights once for all its rows), up to kVnniRowsPerPass rows sharing its unpacking.
  for (int64_t n = n_begin; n < n_end; n++)
    for (int64_t m0 = 0; m0 < M; m0 += kVnniRowsPerPass) {
      const VnniGroup* x[kVnniRowsPerPass];
      const int64_t rows = std::min(kVnniRowsPerPass, M - m0);
      for (int64_t r = 0; r < rows; r++) x[r] = acts.groups + (m0 + r) * acts.groups_per_row;
      float* o = out + m0 * N + n;
      switch (rows) {
        case 1:
          DotRowVNNI<1>(q8, w, n, x, o, N);
          break;
        case 2:
          DotRowVNNI<2>(q8, w, n, x, o, N);
          break;
        case 3:
          DotRowVNNI<3>(q8, w, n, x, o, N);
          break;
        default:
          DotRowVNNI<4>(q8, w, n, x, o, N);
          break;
      }
    }
  static_assert(kVnniRowsPerPass == 4);
#else
  // (block panels, which only AVX3_DL builds, are read here when a test narrows the targets: one
  // row at a time in the split-row layout)
  thread_local std::vector<uint8_t> split;
  split.resize(w.panels ? w.row_bytes : 0);
  for (int64_t n = n_begin; n < n_end; n++) {
    if (w.panels) panel_row_to_split(w, n, split.data());
    const void* row = w.panels ? static_cast<const void*>(split.data()) : w.row(n);
    const uint16_t* w_scale = row_scales(row);
    const uint8_t* wq = row_quants(row, nb);
    for (int64_t m = 0; m < M; m++) {
      const BlockQ8_0* x = acts.q8 + m * nb;
      const float* x_scale = acts.q8_scale + m * nb;
      out[m * N + n] =
          q8 ? DotBlocks(w_scale, x_scale, nb,
                         [&](int64_t b) {
                           return BlockSumQ8(reinterpret_cast<const int8_t*>(wq) + b * 32, x[b].q);
                         })
             : DotBlocks(w_scale, x_scale, nb,
                         [&](int64_t b) { return BlockSumQ4(wq + b * 16, x[b].q); });
    }
  }
#endif
}

// Rows [n_begin, n_end) of out[M, w.rows] from activations prepared for w's format.
void Rows(const PreparedActs& acts, const QuantMatrix& w, float* HWY_RESTRICT out, int64_t n_begin,
          int64_t n_end) {
  switch (w.format) {
    case WeightFormat::kBF16:
      if (w.panels)  // (float32 activations: kernels/cpu/bf16_panels.h)
        bf16_panel_rows(acts.f32, acts.M, reinterpret_cast<const uint16_t*>(w.data.data()), w.rows,
                        w.cols, out, n_begin, n_end);
      else
        RowsBF16(acts.bf16, acts.M, w, out, n_begin, n_end);
      return;
    case WeightFormat::kQ8_0:
    case WeightFormat::kQ4_0:
      RowsBlocks(acts, w, out, n_begin, n_end);
      return;
    case WeightFormat::kFP8:  // (kernels/cpu/gemm_fp8.cpp, dispatched there)
      fp8_rows(acts.f32, acts.M, w, out, n_begin, n_end);
      return;
    case WeightFormat::kF32:  // not prepared: BLAS (quant_linear_forward) handles float32
      return;
  }
}

// The target this copy was compiled for, to report what the dispatch chose.
int64_t CompiledTarget() { return HWY_TARGET; }

}  // namespace HWY_NAMESPACE
}  // namespace dsmoe::cpu
#if HWY_TARGET == HWY_AVX3_DL
HWY_POP_ATTRIBUTES
#endif
HWY_AFTER_NAMESPACE();

#if HWY_ONCE
namespace dsmoe::cpu {

HWY_EXPORT(Rows);
HWY_EXPORT(CompiledTarget);
namespace {
// DSMOE_MAX_ISA holds before the first dispatch (kernels/cpu/isa_dispatch.h).
[[maybe_unused]] const int64_t kIsaCapApplied = apply_isa_cap();
}  // namespace

namespace {

// Enough multiply-adds to be worth waking the OpenMP team.
constexpr int64_t kMinParallelWork = int64_t{1} << 16;

// A parallel product's weights (one range of rows, or of a group's cost) are cut into chunks that
// the threads claim as they come, not into one fixed share per thread: a thread that wakes late
// (idle threads sleep: OMP_WAIT_POLICY=passive) or runs slower takes less, instead of the others
// waiting for it at the join. Chunks are guided (OpenMP's schedule(guided)): a 1 / (kGuidedShare
// x threads) share of what remains, at least kMinChunkBytes of weights (a stream long enough for
// the prefetchers), so that the last ones are short. Where the chunks begin depends only on the
// range and the thread count, not on which thread claims them; each row's result is the same
// whichever thread computes it.
constexpr int64_t kMinChunkBytes = int64_t{64} << 10;
constexpr int64_t kGuidedShare = 2;

// Claims the next chunk [begin, end) of [0, total) (units of `min_chunk`'s size); false when none
// is left.
bool claim_chunk(std::atomic<int64_t>& next, int64_t total, int64_t min_chunk, int64_t n_threads,
                 int64_t& begin, int64_t& end) {
  int64_t at = next.load(std::memory_order_relaxed);
  while (at < total) {
    const int64_t size = std::max(min_chunk, (total - at) / (kGuidedShare * n_threads));
    const int64_t stop = std::min(total, at + size);
    if (next.compare_exchange_weak(at, stop, std::memory_order_relaxed)) {
      begin = at, end = stop;
      return true;
    }
  }
  return false;
}

// Runs work(begin, end) over the chunks of [0, total) this thread claims (inside a parallel
// region; `next` shared, starting at 0).
template <class Work>
void for_claimed_chunks(std::atomic<int64_t>& next, int64_t total, int64_t min_chunk,
                        int64_t n_threads, const Work& work) {
  int64_t begin = 0, end = 0;
  while (claim_chunk(next, total, min_chunk, n_threads, begin, end)) work(begin, end);
}

// n (a row range's end or start) moved to the panel boundary the layout of w needs: bf16 panel
// groups (bf16_panel_boundary), block panels (the nearest multiple of kBlockPanelRows, or the
// matrix's end), nothing for rows.
int64_t panel_boundary(const QuantMatrix& w, int64_t n) {
  if (!w.panels) return n;
  if (w.format == WeightFormat::kBF16) return bf16_panel_boundary(n, w.rows);
  if (n >= w.rows) return w.rows;
  return std::min(w.rows, (n + kBlockPanelRows / 2) / kBlockPanelRows * kBlockPanelRows);
}

// prepare_acts, its time added to the profile's activation rounding when profiling.
PreparedActs prepare_acts_timed(const float* inp, int64_t M, const QuantMatrix& w,
                                ActsBuffer& buf) {
  ProfileScope timer(ProfileOp::kActQuant);
  return prepare_acts(inp, M, w.cols, w.format, w.panels, buf);
}

// When profiling: the wall time of a parallel region (from construction to destruction, on the
// calling thread) beyond the work of thread 0 (work_begins .. work_ends), i.e. the team's wake-up
// and the wait at the join for the slowest thread.
class RegionTimer {
 public:
  RegionTimer() : start_ns_(profiling() ? profile_now_ns() : -1) {}
  ~RegionTimer() {
    if (start_ns_ >= 0)
      profile_add(ProfileOp::kParallelWait, profile_now_ns() - start_ns_ - work_ns_);
  }
  void work_begins(int64_t thread) {
    if (start_ns_ >= 0 && thread == 0) work_ns_ = -profile_now_ns();
  }
  void work_ends(int64_t thread) {
    if (start_ns_ >= 0 && thread == 0) work_ns_ += profile_now_ns();
  }
  RegionTimer(const RegionTimer&) = delete;
  RegionTimer& operator=(const RegionTimer&) = delete;

 private:
  int64_t start_ns_;
  int64_t work_ns_ = 0;
};

}  // namespace

// Matrices whose prepared activations are the same (Q8_0 and Q4_0 share their Q8_0 blocks; bf16
// panels take the float32 as given, bf16 rows its hi + lo parts).
static int acts_family(const QuantMatrix& w) {
  if (w.format == WeightFormat::kBF16 && w.panels) return -1;  // float32 as given
  return w.format == WeightFormat::kQ4_0 ? static_cast<int>(WeightFormat::kQ8_0)
                                         : static_cast<int>(w.format);
}

static bool use_gemm(const QuantMatrix& w, int64_t M) {
  switch (w.format) {
    case WeightFormat::kBF16:  // (panels on float32 FMAs: the row kernels beat the GEMMs)
      return M >= kGemmMinRowsBF16 && !(w.panels && bf16_products_prefer_f32());
    case WeightFormat::kQ8_0:
    case WeightFormat::kQ4_0:
      return M >= kGemmMinRowsQuant;
    case WeightFormat::kFP8:
      return M >= (fp8_rows_gfni() ? kGemmMinRowsFP8Gfni : kGemmMinRowsFP8);
    case WeightFormat::kF32:
      return false;
  }
  return false;
}

void quant_linear_forward(float* out, const float* inp, const QuantMatrix& w, int64_t M) {
  if (M <= 0 || w.rows <= 0) return;
  if (!use_gemm(w, M) || row_kernels()) {
    quant_linear_forward_rows(out, inp, w, M);
  } else if (w.format == WeightFormat::kBF16) {
    const auto* weights = reinterpret_cast<const uint16_t*>(w.data.data());
    const int64_t N = w.rows, K = w.cols, stride = w.row_bytes / sizeof(uint16_t);
    if (bf16_products_prefer_f32()) return gemm_bf16_expanded(out, inp, M, weights, N, K, stride);
    auto gemm = [&](float* y, const float* x, int64_t rows) {
      if (w.panels)
        gemm_bf16_panels(y, x, rows, weights, N, K);
      else
        gemm_bf16_weights(y, x, rows, weights, N, K, stride);
    };
    if (M >= kGemmSinglePassMinRowsBF16) {
      gemm(out, inp, M);
      return;
    }
    // x = hi + lo (split_bf16_hi_lo): one GEMM over the 2M rows [hi; lo] (the weights are read
    // once), the two halves of its result summed.
    thread_local std::vector<float> hi_lo, partial;
    hi_lo.resize(2 * M * K);
    partial.resize(2 * M * N);
    split_bf16_hi_lo(inp, M * K, hi_lo.data(), hi_lo.data() + M * K);
    gemm(partial.data(), hi_lo.data(), 2 * M);
    for (int64_t i = 0; i < M * N; i++) out[i] = partial[i] + partial[M * N + i];
  } else if (w.format == WeightFormat::kFP8) {
    gemm_fp8(out, inp, M, w);
  } else {
    gemm_quant(out, inp, M, w);
  }
}

void quant_linear_forward_rows(float* out, const float* inp, const QuantMatrix& w, int64_t M) {
  const int64_t N = w.rows, K = w.cols;
  if (M <= 0 || N <= 0) return;
  if (w.format == WeightFormat::kF32) {
    linear_forward(out, inp, static_cast<const float*>(w.row(0)), M, K, N);
    return;
  }
  thread_local ActsBuffer buf;
  const PreparedActs acts = prepare_acts_timed(inp, M, w, buf);
  // Chunks of contiguous weight rows (whole groups of panels), claimed as the threads come; the
  // same chunks whatever M.
  const int64_t min_rows = std::max<int64_t>(1, kMinChunkBytes / static_cast<int64_t>(w.row_bytes));
  const int64_t n_threads = omp_get_max_threads();
  std::atomic<int64_t> next_row{0};
  RegionTimer region;
#pragma omp parallel if (M * N * K >= kMinParallelWork)
  {
    const int64_t t = omp_get_thread_num();
    region.work_begins(t);
    for_claimed_chunks(next_row, N, min_rows, n_threads, [&](int64_t begin, int64_t end) {
      begin = panel_boundary(w, begin), end = panel_boundary(w, end);
      if (begin < end) HWY_DYNAMIC_DISPATCH(Rows)(acts, w, out, begin, end);
    });
    region.work_ends(t);
  }
}

void quant_linear_forward_group(const QuantJob* jobs, int64_t n_jobs) {
  // Activations rounded once per distinct input (experts' gate and up share theirs).
  // (thread_local, like the activation buffers: a decoded token allocates nothing here)
  // The parallel region below reads these through the references: a thread_local named inside
  // it would be the worker thread's own (empty) copy.
  thread_local std::vector<ActsBuffer> bufs;
  thread_local std::vector<PreparedActs> acts_kept;
  thread_local std::vector<int64_t> cost_begin_kept, row_cost_kept;
  std::vector<PreparedActs>& acts = acts_kept;
  // Each job's share of the whole group's cost (bytes of weight rows read, times M).
  std::vector<int64_t>& cost_begin = cost_begin_kept;
  std::vector<int64_t>& row_cost = row_cost_kept;
  thread_local std::vector<QuantJob> gemm_jobs_kept;  // Q8_0 / Q4_0 jobs for gemm_quant_group
  std::vector<QuantJob>& gemm_jobs = gemm_jobs_kept;
  gemm_jobs.clear();
  acts.assign(static_cast<size_t>(n_jobs), PreparedActs{});
  cost_begin.resize(static_cast<size_t>(n_jobs));
  row_cost.resize(static_cast<size_t>(n_jobs));
  int64_t n_prepared = 0, total_cost = 0, work = 0;
  for (int64_t j = 0; j < n_jobs; j++) {
    const QuantJob& job = jobs[j];
    DSMOE_ASSERT(job.w->format != WeightFormat::kF32 && job.M >= 0);
    cost_begin[j] = total_cost;
    row_cost[j] = 0;
    if (job.M == 0) continue;
    if (use_gemm(*job.w, job.M) && !row_kernels()) {  // GEMMs: parallel inside
      if (job.w->format == WeightFormat::kQ8_0 || job.w->format == WeightFormat::kQ4_0)
        gemm_jobs.push_back(job);  // (all of them together, below)
      else
        quant_linear_forward(job.out, job.inp, *job.w, job.M);
      continue;
    }
    int64_t same = -1;
    for (int64_t i = 0; i < j && same < 0; i++)
      if (row_cost[i] > 0 && jobs[i].inp == job.inp && jobs[i].M == job.M &&
          jobs[i].w->cols == job.w->cols && acts_family(*jobs[i].w) == acts_family(*job.w))
        same = i;
    if (same >= 0) {
      acts[j] = acts[same];
    } else {
      if (static_cast<int64_t>(bufs.size()) <= n_prepared) bufs.resize(n_prepared + 1);
      acts[j] = prepare_acts_timed(job.inp, job.M, *job.w, bufs[n_prepared++]);
    }
    row_cost[j] = job.M * static_cast<int64_t>(job.w->row_bytes);
    total_cost += row_cost[j] * job.w->rows;
    work += job.M * job.w->rows * job.w->cols;
  }
  if (!gemm_jobs.empty())
    gemm_quant_group(gemm_jobs.data(), static_cast<int64_t>(gemm_jobs.size()));
  // All jobs' rows as one range of cost cut into chunks (a row goes to the chunk that holds its
  // start), claimed as the threads come: one parallel region for the whole group.
  const int64_t n_threads = omp_get_max_threads();
  std::atomic<int64_t> next_cost{0};
  RegionTimer region;
#pragma omp parallel if (work >= kMinParallelWork)
  {
    const int64_t t = omp_get_thread_num();
    region.work_begins(t);
    for_claimed_chunks(
        next_cost, total_cost, kMinChunkBytes, n_threads, [&](int64_t begin, int64_t end) {
          for (int64_t j = 0; j < n_jobs && cost_begin[j] < end; j++) {
            if (row_cost[j] == 0) continue;
            const int64_t rows = jobs[j].w->rows;
            auto first_row_at = [&](int64_t cost) {  // first row starting at or after `cost`
              const int64_t offset = cost - cost_begin[j];
              const int64_t row =
                  std::clamp<int64_t>((offset + row_cost[j] - 1) / row_cost[j], 0, rows);
              return panel_boundary(*jobs[j].w, row);  // (whole groups or panels)
            };
            const int64_t lo = first_row_at(begin);  // (offsets below 0 clamp to row 0)
            const int64_t hi = first_row_at(end);
            if (lo < hi) HWY_DYNAMIC_DISPATCH(Rows)(acts[j], *jobs[j].w, jobs[j].out, lo, hi);
          }
        });
    region.work_ends(t);
  }
}

int64_t quant_compiled_targets() { return HWY_TARGETS; }

int64_t quant_dispatch_target() { return HWY_DYNAMIC_DISPATCH(CompiledTarget)(); }

}  // namespace dsmoe::cpu
#endif  // HWY_ONCE
