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

#include <omp.h>

#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#include "kernels/cpu/gemm_bf16.h"
#include "kernels/cpu/gemm_quant.h"
#include "kernels/cpu/ops.h"
#include "kernels/cpu/quant_ops.h"
#include "kernels/quant.h"
#include "tensor/dtype.h"
#include "util/check.h"

#ifndef DSMOE_QUANT_OPS_ONCE
#define DSMOE_QUANT_OPS_ONCE
namespace dsmoe::cpu {
// Activations rounded for one weight format (pointers into a buffer of the caller).
struct PreparedActs {
  int64_t M = 0;
  const uint16_t* bf16 = nullptr;   // bf16: (2, M, K) hi and lo parts
  const BlockQ8_0* q8 = nullptr;    // Q8_0 / Q4_0: (M, nb) blocks
  const float* q8_scale = nullptr;  // (M, nb) their scales as float
};
}  // namespace dsmoe::cpu
#endif

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
  static const bool has = __builtin_cpu_supports("avx512bf16");
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
    if (M == 1)  // decode: four rows at a time, four streams from memory
      for (; n + 4 <= n_end; n += 4) DotBF16Native4(x, x_lo, w, K, n, out + n);
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
template <class Block, class BlockSum>
HWY_INLINE float DotBlocks(const Block* HWY_RESTRICT w, const float* HWY_RESTRICT x_scale,
                           int64_t nb, const BlockSum& block_sum) {
  using VI32 = decltype(block_sum(int64_t{0}));
  const hn::RebindToFloat<hn::DFromV<VI32>> df;
  auto acc0 = hn::Zero(df), acc1 = hn::Zero(df);
  int64_t b = 0;
  for (; b + 2 <= nb; b += 2) {
    acc0 = hn::MulAdd(hn::Set(df, ScaleF32(w[b].scale_f16) * x_scale[b]),
                      hn::ConvertTo(df, block_sum(b)), acc0);
    acc1 = hn::MulAdd(hn::Set(df, ScaleF32(w[b + 1].scale_f16) * x_scale[b + 1]),
                      hn::ConvertTo(df, block_sum(b + 1)), acc1);
  }
  if (b < nb)
    acc0 = hn::MulAdd(hn::Set(df, ScaleF32(w[b].scale_f16) * x_scale[b]),
                      hn::ConvertTo(df, block_sum(b)), acc0);
  return hn::GetLane(hn::SumOfLanes(df, hn::Add(acc0, acc1)));
}

#if HWY_TARGET == HWY_AVX3_DL
// AVX-512 VNNI: two blocks per 512-bit vector, one vpdpbusd for their 64 products.
// vpdpbusd multiplies unsigned by signed bytes, so |w| goes in the unsigned operand and x takes
// w's sign (llama.cpp's mul_sum_i8_pairs does the same with vpsignb, which AVX-512 lacks). Exact:
// |w| <= 127 and |x| <= 127, so the four-product int32 sums cannot overflow.
HWY_INLINE __m512i BlockPairSumsVNNI(__m512i w, __m512i x) {
  const __m512i zero = _mm512_setzero_si512();
  const __m512i x_signed = _mm512_mask_sub_epi8(x, _mm512_movepi8_mask(w), zero, x);
  return _mm512_dpbusd_epi32(zero, _mm512_abs_epi8(w), x_signed);
}

// Two 256-bit halves; the high one zero when there is no second block.
HWY_INLINE __m512i JoinHalves(__m256i lo, __m256i hi) {
  return _mm512_inserti64x4(_mm512_castsi256_si512(lo), hi, 1);
}

HWY_INLINE __m256i LoadQ8(const BlockQ8_0& block) {
  return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(block.q));
}

// The 32 values (nibble - 8) of a Q4_0 block as int8, elements 0..15 then 16..31.
HWY_INLINE __m256i LoadQ4(const BlockQ4_0& block) {
  const __m128i packed = _mm_loadu_si128(reinterpret_cast<const __m128i*>(block.q));
  const __m128i low_mask = _mm_set1_epi8(0x0F);
  const __m128i lo = _mm_and_si128(packed, low_mask);
  const __m128i hi = _mm_and_si128(_mm_srli_epi16(packed, 4), low_mask);
  const __m256i nibbles = _mm256_inserti128_si256(_mm256_castsi128_si256(lo), hi, 1);
  return _mm256_sub_epi8(nibbles, _mm256_set1_epi8(8));
}

// int32 lanes 0..7 belong to block b, 8..15 to block b + 1; the scale vector matches.
template <class Block, class LoadBlock>
HWY_INLINE float DotBlocksVNNI(const Block* HWY_RESTRICT w, const BlockQ8_0* HWY_RESTRICT x,
                               const float* HWY_RESTRICT x_scale, int64_t nb,
                               const LoadBlock& load_w) {
  __m512 acc0 = _mm512_setzero_ps(), acc1 = _mm512_setzero_ps();
  auto pair = [&](int64_t b, bool has_second) {
    const __m256i zero = _mm256_setzero_si256();
    const __m512i wv = JoinHalves(load_w(w[b]), has_second ? load_w(w[b + 1]) : zero);
    const __m512i xv = JoinHalves(LoadQ8(x[b]), has_second ? LoadQ8(x[b + 1]) : zero);
    const float s0 = ScaleF32(w[b].scale_f16) * x_scale[b];
    const float s1 = has_second ? ScaleF32(w[b + 1].scale_f16) * x_scale[b + 1] : 0.0f;
    const __m512 scale = _mm512_insertf32x8(_mm512_set1_ps(s0), _mm256_set1_ps(s1), 1);
    return _mm512_mul_ps(scale, _mm512_cvtepi32_ps(BlockPairSumsVNNI(wv, xv)));
  };
  int64_t b = 0;
  for (; b + 4 <= nb; b += 4) {
    acc0 = _mm512_add_ps(acc0, pair(b, true));
    acc1 = _mm512_add_ps(acc1, pair(b + 2, true));
  }
  for (; b + 2 <= nb; b += 2) acc0 = _mm512_add_ps(acc0, pair(b, true));
  if (b < nb) acc1 = _mm512_add_ps(acc1, pair(b, false));
  return ReduceSum(_mm512_add_ps(acc0, acc1));
}
#endif  // HWY_TARGET == HWY_AVX3_DL

// One weight row against one activation row; overloaded on the weight block type.
HWY_INLINE float DotRow(const BlockQ8_0* HWY_RESTRICT w, const BlockQ8_0* HWY_RESTRICT x,
                        const float* HWY_RESTRICT x_scale, int64_t nb) {
#if HWY_TARGET == HWY_AVX3_DL
  return DotBlocksVNNI(w, x, x_scale, nb, [](const BlockQ8_0& block) { return LoadQ8(block); });
#else
  return DotBlocks(w, x_scale, nb, [&](int64_t b) { return BlockSumQ8(w[b].q, x[b].q); });
#endif
}

HWY_INLINE float DotRow(const BlockQ4_0* HWY_RESTRICT w, const BlockQ8_0* HWY_RESTRICT x,
                        const float* HWY_RESTRICT x_scale, int64_t nb) {
#if HWY_TARGET == HWY_AVX3_DL
  return DotBlocksVNNI(w, x, x_scale, nb, [](const BlockQ4_0& block) { return LoadQ4(block); });
#else
  return DotBlocks(w, x_scale, nb, [&](int64_t b) { return BlockSumQ4(w[b].q, x[b].q); });
#endif
}

// x: the activations as Q8_0 blocks [M, nb], x_scale their scales as float [M, nb].
template <class Block>
HWY_INLINE void RowsBlocks(const BlockQ8_0* HWY_RESTRICT x, const float* HWY_RESTRICT x_scale,
                           int64_t M, const QuantMatrix& w, float* HWY_RESTRICT out,
                           int64_t n_begin, int64_t n_end) {
  const int64_t N = w.rows, nb = w.cols / kQuantBlock;
  for (int64_t n = n_begin; n < n_end; n++) {
    const auto* wb = static_cast<const Block*>(w.row(n));
    for (int64_t m = 0; m < M; m++) out[m * N + n] = DotRow(wb, x + m * nb, x_scale + m * nb, nb);
  }
}

// Rows [n_begin, n_end) of out[M, w.rows] from activations prepared for w's format.
void Rows(const PreparedActs& acts, const QuantMatrix& w, float* HWY_RESTRICT out, int64_t n_begin,
          int64_t n_end) {
  switch (w.format) {
    case WeightFormat::kBF16:
      RowsBF16(acts.bf16, acts.M, w, out, n_begin, n_end);
      return;
    case WeightFormat::kQ8_0:
      RowsBlocks<BlockQ8_0>(acts.q8, acts.q8_scale, acts.M, w, out, n_begin, n_end);
      return;
    case WeightFormat::kQ4_0:
      RowsBlocks<BlockQ4_0>(acts.q8, acts.q8_scale, acts.M, w, out, n_begin, n_end);
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

// Rounded activations in the layout of one weight format, kept per thread across calls so that
// a decoded token allocates nothing.
struct ActsBuffer {
  std::vector<uint16_t> bf16;   // (2, M, K) hi and lo parts
  std::vector<BlockQ8_0> q8;    // (M, nb)
  std::vector<float> q8_scale;  // (M, nb)
  std::vector<float> scratch;   // (2, K)
};

// Rounds inp[M, K] once for `format` (f32 needs nothing).
PreparedActs prepare_acts(const float* inp, int64_t M, int64_t K, WeightFormat format,
                          ActsBuffer& buf) {
  PreparedActs acts;
  acts.M = M;
  if (format == WeightFormat::kBF16) {
    // hi = bf16(a) and lo = bf16(a - hi), round to nearest even.
    buf.bf16.resize(static_cast<size_t>(2 * M * K));
    buf.scratch.resize(static_cast<size_t>(2 * K));
    float* hi = buf.scratch.data();
    float* residual = hi + K;
    for (int64_t m = 0; m < M; m++) {
      convert_row_f32_to_bf16(inp + m * K, &buf.bf16[m * K], K);
      convert_row_bf16_to_f32(&buf.bf16[m * K], hi, K);
      for (int64_t k = 0; k < K; k++) residual[k] = inp[m * K + k] - hi[k];
      convert_row_f32_to_bf16(residual, &buf.bf16[(M + m) * K], K);
    }
    acts.bf16 = buf.bf16.data();
  } else if (format == WeightFormat::kQ8_0 || format == WeightFormat::kQ4_0) {
    // Q8_0 blocks with float scales. A block that cannot be quantized (inf/NaN, or beyond f16)
    // gets a NaN scale, so its outputs are NaN as in float arithmetic, instead of an exception
    // inside a kernel.
    const int64_t n_blocks = M * (K / kQuantBlock);
    buf.q8.resize(static_cast<size_t>(n_blocks));
    buf.q8_scale.resize(static_cast<size_t>(n_blocks));
    for (int64_t i = 0; i < n_blocks; i++)
      buf.q8_scale[i] = quantize_block_q8_0(inp + i * kQuantBlock, &buf.q8[i])
                            ? f16_to_f32(buf.q8[i].scale_f16)
                            : std::numeric_limits<float>::quiet_NaN();
    acts.q8 = buf.q8.data();
    acts.q8_scale = buf.q8_scale.data();
  }
  return acts;
}

// Enough multiply-adds to be worth waking the OpenMP team.
constexpr int64_t kMinParallelWork = int64_t{1} << 16;

}  // namespace

static bool use_gemm(const QuantMatrix& w, int64_t M) {
  switch (w.format) {
    case WeightFormat::kBF16:
      return M >= kGemmMinRowsBF16;
    case WeightFormat::kQ8_0:
    case WeightFormat::kQ4_0:
      return M >= kGemmMinRowsQuant;
    case WeightFormat::kF32:
      return false;
  }
  return false;
}

void quant_linear_forward(float* out, const float* inp, const QuantMatrix& w, int64_t M) {
  if (M <= 0 || w.rows <= 0) return;
  if (!use_gemm(w, M)) {
    quant_linear_forward_rows(out, inp, w, M);
  } else if (w.format == WeightFormat::kBF16) {
    gemm_bf16_weights(out, inp, M, static_cast<const uint16_t*>(w.row(0)), w.rows, w.cols,
                      static_cast<int64_t>(w.row_bytes / sizeof(uint16_t)));
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
  const PreparedActs acts = prepare_acts(inp, M, K, w.format, buf);
  // Each thread takes one contiguous range of weight rows.
#pragma omp parallel if (M * N * K >= kMinParallelWork)
  {
    const int64_t n_threads = omp_get_num_threads(), t = omp_get_thread_num();
    HWY_DYNAMIC_DISPATCH(Rows)(acts, w, out, N * t / n_threads, N * (t + 1) / n_threads);
  }
}

void quant_linear_forward_group(const QuantJob* jobs, int64_t n_jobs) {
  // Activations rounded once per distinct input (experts' gate and up share theirs).
  thread_local std::vector<ActsBuffer> bufs;
  std::vector<PreparedActs> acts(static_cast<size_t>(n_jobs));
  std::vector<int64_t> row_end(static_cast<size_t>(n_jobs));  // prefix sums of the rows
  int64_t n_prepared = 0, total_rows = 0, work = 0;
  for (int64_t j = 0; j < n_jobs; j++) {
    const QuantJob& job = jobs[j];
    DSMOE_ASSERT(job.w->format != WeightFormat::kF32 && job.M >= 0);
    if (use_gemm(*job.w, job.M)) {  // enough rows for a GEMM of its own (parallel inside)
      quant_linear_forward(job.out, job.inp, *job.w, job.M);
      acts[j].M = 0;
      row_end[j] = total_rows;
      continue;
    }
    int64_t same = -1;
    for (int64_t i = 0; i < j && same < 0; i++)
      if (jobs[i].inp == job.inp && jobs[i].M == job.M && jobs[i].w->cols == job.w->cols &&
          (jobs[i].w->format == WeightFormat::kBF16) == (job.w->format == WeightFormat::kBF16))
        same = i;
    if (same >= 0) {
      acts[j] = acts[same];
    } else {
      if (static_cast<int64_t>(bufs.size()) <= n_prepared) bufs.resize(n_prepared + 1);
      acts[j] = prepare_acts(job.inp, job.M, job.w->cols, job.w->format, bufs[n_prepared++]);
    }
    total_rows += job.M > 0 ? job.w->rows : 0;  // (acts[j].M == job.M)
    row_end[j] = total_rows;
    work += job.M * job.w->rows * job.w->cols;
  }
  // The rows of all jobs as one range, split evenly: one parallel region for the whole group.
#pragma omp parallel if (work >= kMinParallelWork)
  {
    const int64_t n_threads = omp_get_num_threads(), t = omp_get_thread_num();
    const int64_t begin = total_rows * t / n_threads, end = total_rows * (t + 1) / n_threads;
    for (int64_t j = 0; j < n_jobs; j++) {
      const int64_t job_begin = row_end[j] - (acts[j].M > 0 ? jobs[j].w->rows : 0);
      const int64_t lo = std::max(begin, job_begin), hi = std::min(end, row_end[j]);
      if (lo < hi)
        HWY_DYNAMIC_DISPATCH(Rows)
        (acts[j], *jobs[j].w, jobs[j].out, lo - job_begin, hi - job_begin);
    }
  }
}

int64_t quant_compiled_targets() { return HWY_TARGETS; }

int64_t quant_dispatch_target() { return HWY_DYNAMIC_DISPATCH(CompiledTarget)(); }

}  // namespace dsmoe::cpu
#endif  // HWY_ONCE
