// Tests for kernels/quant.h (bf16 and llama.cpp's Q8_0 / Q4_0 block formats) and for
// cpu::quant_linear_forward (kernels/cpu/quant_ops.h) against ref::quant_linear_forward, on every
// Highway target this machine supports.
//
// Error bounds (u = FLT_EPSILON = 2^-23; magnitudes computed in double from the inputs; w_k is
// the dequantized weight, which the reference uses exactly):
//  * Q8_0 round trip: |x - deq(x)| <= d / 2, d the stored (f16) scale of x's block, because we
//    round the scale up to f16 and quantize by dividing by the stored value (see quant.h).
//  * Q4_0 round trip: d = max / -8 maps the block max to nibble 0, so the grid covers x / d in
//    [-8, 7]: |x - deq(x)| <= |d| / 2 for x / d <= 7.5; elements beyond (opposite in sign to the
//    max, within 1/16 of its magnitude) clamp to nibble 15, with |x - deq(x)| = x - 7d <= |d|.
//  * bf16 round trip: |x - bf16(x)| <= 2^-8 |x| (round to nearest, 8 significant bits).
//  * bf16 product: the kernel rounds x to bf16 (error <= 2^-8 sum_k |x_k w_k|, doubled for slack)
//    and sums exact bf16 products in float32 (8 u sqrt(K + 2) sum_k |x_k w_k|, the probabilistic
//    dot-product bound of tests/test_kernels.cpp):
//      |cpu - ref| <= (2 * 2^-8 + 8 u sqrt(K + 2)) sum_k |x_k w_k|.
//  * Q8_0 / Q4_0 product: the kernel quantizes x to Q8_0 with per-block scale
//    d_b <= max|x_b| / 127 * (1 + 2^-10) + 2^-24 (rounded up to f16: less than one f16 step,
//    2^-10 relative or the subnormal step 2^-24), so |x_k - xq_k| <= d_b / 2; the int32
//    block sums and the product of two f16 scales are exact in float32, which leaves one rounding
//    per block (the FMA) plus the final reduction across lanes, at most nb + 8 roundings:
//      |cpu - ref| <= sum_k |w_k| d_b(k) / 2 + (nb + 8) u sum_k |w_k| (|x_k| + d_b(k) / 2).
//  * f32 (BLAS): 8 u sqrt(K + 2) sum_k |x_k w_k|, as in tests/test_kernels.cpp.
#include <gtest/gtest.h>

#include <algorithm>
#include <cfloat>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <limits>
#include <ostream>
#include <random>
#include <string>
#include <vector>

#include "hwy/targets.h"
#include "kernels/cpu/gemm_bf16.h"
#include "kernels/cpu/isa_dispatch.h"
#include "kernels/cpu/quant_ops.h"
#include "kernels/quant.h"
#include "kernels/ref/quant_ops.h"
#include "tensor/dtype.h"
#include "test_util.h"
#include "util/check.h"

namespace dsmoe {

// For gtest's parameter messages.
void PrintTo(WeightFormat f, std::ostream* os) { *os << weight_format_name(f); }

namespace {

constexpr double kEps = FLT_EPSILON;
constexpr WeightFormat kAllFormats[] = {WeightFormat::kF32, WeightFormat::kBF16,
                                        WeightFormat::kQ8_0, WeightFormat::kQ4_0};

std::vector<float> random_vector(std::mt19937& rng, size_t n, float lo = -1.0f, float hi = 1.0f) {
  std::uniform_real_distribution<float> dist(lo, hi);
  std::vector<float> v(n);
  for (float& x : v) x = dist(rng);
  return v;
}

// Random rows with per-block magnitudes spread over 2^-12 .. 2^4, an all-zero block, and an
// outlier, so the scales exercise f16 rounding at several exponents.
std::vector<float> varied_row(std::mt19937& rng, int64_t n) {
  std::vector<float> x = random_vector(rng, n);
  for (int64_t b = 0; b < n / kQuantBlock; b++) {
    const float block_scale = std::ldexp(1.0f, static_cast<int>(b % 17) - 12);
    for (int64_t i = 0; i < kQuantBlock; i++) x[b * kQuantBlock + i] *= block_scale;
  }
  if (n >= 2 * kQuantBlock) std::fill(x.begin() + kQuantBlock, x.begin() + 2 * kQuantBlock, 0.0f);
  if (n > 3) x[3] = 40.0f;
  return x;
}

// ---------------------------------------------------------------------------------------------
// Formats and layouts

TEST(QuantFormat, NamesParseAndRowBytes) {
  for (WeightFormat f : kAllFormats) EXPECT_EQ(parse_weight_format(weight_format_name(f)), f);
  EXPECT_FALSE(parse_weight_format("q5_1").has_value());
  EXPECT_EQ(weight_row_bytes(WeightFormat::kF32, 48), 192u);
  EXPECT_EQ(weight_row_bytes(WeightFormat::kBF16, 48), 96u);
  EXPECT_EQ(weight_row_bytes(WeightFormat::kQ8_0, 64), 68u);
  EXPECT_EQ(weight_row_bytes(WeightFormat::kQ4_0, 64), 36u);
  EXPECT_THROW(weight_row_bytes(WeightFormat::kQ8_0, 48), Error);
  EXPECT_THROW(weight_row_bytes(WeightFormat::kQ4_0, 33), Error);
}

TEST(QuantFormat, RowsNotMultipleOf32AreAnError) {
  std::vector<float> x(64, 1.0f);
  std::vector<BlockQ8_0> q8(2);
  std::vector<BlockQ4_0> q4(2);
  EXPECT_THROW(quantize_row_q8_0(x.data(), q8.data(), 33), Error);
  EXPECT_THROW(quantize_row_q4_0(x.data(), q4.data(), 48), Error);
  EXPECT_THROW(quantize_matrix(x.data(), 2, 24, WeightFormat::kQ8_0), Error);
  EXPECT_NO_THROW(quantize_matrix(x.data(), 2, 24, WeightFormat::kBF16));
  x[40] = std::numeric_limits<float>::infinity();
  EXPECT_THROW(quantize_row_q8_0(x.data(), q8.data(), 64), Error);
  EXPECT_THROW(quantize_matrix(x.data(), 1, 64, WeightFormat::kQ4_0), Error);
}

// The ramp 0, 1, ..., 31, worked by hand.
TEST(QuantBlocks, Q8_0LayoutOfARamp) {
  std::vector<float> x(kQuantBlock);
  for (int i = 0; i < kQuantBlock; i++) x[i] = static_cast<float>(i);
  BlockQ8_0 block;
  quantize_row_q8_0(x.data(), &block, kQuantBlock);
  // d = 31 / 127 = 0.244094... = 1999.6 * 2^-13 rounds up to the next f16 (11 significant bits,
  // step 2^-13 in [1/8, 1/4)), 2000 * 2^-13 = 0.244140625: exponent field 15 - 3 = 12, mantissa
  // 2000 - 1024 = 976.
  EXPECT_EQ(block.scale_f16, (12 << 10) | 976);  // 0x33D0
  // q_i = round(i / 0.244140625) = round(4.096 i).
  const int8_t expected[kQuantBlock] = {0,  4,  8,  12,  16,  20,  25,  29,  33,  37, 41,
                                        45, 49, 53, 57,  61,  66,  70,  74,  78,  82, 86,
                                        90, 94, 98, 102, 106, 111, 115, 119, 123, 127};
  for (int i = 0; i < kQuantBlock; i++) EXPECT_EQ(block.q[i], expected[i]) << "element " << i;
  // The raw bytes are llama.cpp's block_q8_0: little-endian f16 scale, then the 32 int8.
  const auto* bytes = reinterpret_cast<const uint8_t*>(&block);
  EXPECT_EQ(bytes[0], 0xD0);
  EXPECT_EQ(bytes[1], 0x33);
  EXPECT_EQ(bytes[2 + 31], 127);
}

TEST(QuantBlocks, Q4_0LayoutOfARamp) {
  std::vector<float> x(kQuantBlock);
  for (int i = 0; i < kQuantBlock; i++) x[i] = static_cast<float>(i);
  BlockQ4_0 block;
  quantize_row_q4_0(x.data(), &block, kQuantBlock);
  // max = 31, d = 31 / -8 = -3.875 = -1.9375 * 2^1, exact in f16: sign, exponent field 16,
  // mantissa 0.9375 * 1024 = 960.
  EXPECT_EQ(block.scale_f16, 0x8000 | (16 << 10) | 960);  // 0xC3C0
  // nibble_i = floor(i / -3.875 + 8.5) = floor(8.5 - 0.258 i): 8 8 7 7 7 7 6 6 6 6 5 5 5 5 4 4
  // for i = 0..15 and 4 4 3 3 3 3 2 2 2 2 1 1 1 1 0 0 for i = 16..31 (31 gives exactly 0.5).
  // Byte j = nibble_j | nibble_{j+16} << 4.
  const uint8_t expected[kQuantBlock / 2] = {0x48, 0x48, 0x37, 0x37, 0x37, 0x37, 0x26, 0x26,
                                             0x26, 0x26, 0x15, 0x15, 0x15, 0x15, 0x04, 0x04};
  for (int j = 0; j < kQuantBlock / 2; j++) EXPECT_EQ(block.q[j], expected[j]) << "byte " << j;
  std::vector<float> y(kQuantBlock);
  dequantize_row_q4_0(&block, y.data(), kQuantBlock);
  EXPECT_EQ(y[0], 0.0f);    // (8 - 8) * d
  EXPECT_EQ(y[2], 3.875f);  // (7 - 8) * d
  EXPECT_EQ(y[31], 31.0f);  // (0 - 8) * d, the max is exact
  EXPECT_EQ(y[17], 15.5f);  // (4 - 8) * d
}

TEST(QuantBlocks, Q8_0RoundTripWithinHalfAScale) {
  std::mt19937 rng(7);
  const int64_t n = 64 * kQuantBlock;
  const std::vector<float> x = varied_row(rng, n);
  std::vector<BlockQ8_0> q(n / kQuantBlock);
  std::vector<float> y(n);
  quantize_row_q8_0(x.data(), q.data(), n);
  dequantize_row_q8_0(q.data(), y.data(), n);
  for (int64_t i = 0; i < n; i++) {
    const double d = f16_to_f32(q[i / kQuantBlock].scale_f16);
    // |x - q d| <= d / 2, plus a hair because x / d is rounded in float before rounding to an
    // integer; q d itself is exact in float (7 x 11 significant bits).
    ASSERT_LE(std::abs(static_cast<double>(x[i]) - y[i]), d / 2 * (1 + 1e-6)) << "element " << i;
  }
}

TEST(QuantBlocks, Q4_0RoundTripWithinHalfAScaleInsideTheGrid) {
  std::mt19937 rng(8);
  const int64_t n = 64 * kQuantBlock;
  const std::vector<float> x = varied_row(rng, n);
  std::vector<BlockQ4_0> q(n / kQuantBlock);
  std::vector<float> y(n);
  quantize_row_q4_0(x.data(), q.data(), n);
  dequantize_row_q4_0(q.data(), y.data(), n);
  int64_t n_clamped = 0;
  for (int64_t i = 0; i < n; i++) {
    const double d = f16_to_f32(q[i / kQuantBlock].scale_f16);
    const double err = std::abs(static_cast<double>(x[i]) - y[i]);
    // "tiny": x / d is evaluated in float before it is rounded to an integer.
    const double tiny = 1e-6 * std::abs(d);
    if (d == 0) {
      ASSERT_EQ(err, 0.0) << "element " << i;
    } else if (x[i] / d <= 7.5) {
      ASSERT_LE(err, std::abs(d) / 2 + tiny) << "element " << i;
    } else {
      n_clamped++;
      ASSERT_LE(err, std::abs(d) + tiny) << "element " << i;
      ASSERT_EQ(y[i], static_cast<float>(7 * d)) << "element " << i;
    }
  }
  RecordProperty("clamped_elements", static_cast<int>(n_clamped));
}

TEST(QuantBlocks, BF16RoundTripWithinHalfAnUlp) {
  std::mt19937 rng(9);
  const int64_t n = 4096;
  const std::vector<float> x = varied_row(rng, n);
  std::vector<uint16_t> b(n);
  std::vector<float> y(n);
  convert_row_f32_to_bf16(x.data(), b.data(), n);
  convert_row_bf16_to_f32(b.data(), y.data(), n);
  for (int64_t i = 0; i < n; i++)
    ASSERT_LE(std::abs(static_cast<double>(x[i]) - y[i]), std::ldexp(std::abs(x[i]), -8)) << i;
}

TEST(QuantMatrix, RowsMatchTheRowConversions) {
  std::mt19937 rng(10);
  const int64_t rows = 5, cols = 96;
  const std::vector<float> w = random_vector(rng, rows * cols);
  for (WeightFormat f : kAllFormats) {
    SCOPED_TRACE(weight_format_name(f));
    const QuantMatrix m = quantize_matrix(w.data(), rows, cols, f);
    EXPECT_EQ(m.format, f);
    EXPECT_EQ(m.rows, rows);
    EXPECT_EQ(m.cols, cols);
    EXPECT_EQ(m.row_bytes, weight_row_bytes(f, cols));
    EXPECT_EQ(m.size_bytes(), rows * m.row_bytes);
    EXPECT_EQ(reinterpret_cast<uintptr_t>(m.row(0)) % 64, 0u);
    std::vector<float> got(cols), want(cols);
    std::vector<BlockQ8_0> q8(cols / kQuantBlock);
    std::vector<BlockQ4_0> q4(cols / kQuantBlock);
    std::vector<uint16_t> bf(cols);
    for (int64_t r = 0; r < rows; r++) {
      const float* src = &w[r * cols];
      dequantize_row(f, m.row(r), got.data(), cols);
      switch (f) {
        case WeightFormat::kF32:
          want.assign(src, src + cols);
          break;
        case WeightFormat::kBF16:
          convert_row_f32_to_bf16(src, bf.data(), cols);
          convert_row_bf16_to_f32(bf.data(), want.data(), cols);
          break;
        case WeightFormat::kQ8_0:
          quantize_row_q8_0(src, q8.data(), cols);
          dequantize_row_q8_0(q8.data(), want.data(), cols);
          break;
        case WeightFormat::kQ4_0:
          quantize_row_q4_0(src, q4.data(), cols);
          dequantize_row_q4_0(q4.data(), want.data(), cols);
          break;
        case WeightFormat::kFP8:  // (not in kAllFormats: tests/test_fp8.cpp)
          break;
      }
      EXPECT_EQ(got, want) << "row " << r;
    }
  }
}

// ---------------------------------------------------------------------------------------------
// cpu::quant_linear_forward against ref::quant_linear_forward

// The bound of the header comment for out[m, n].
double product_bound(WeightFormat f, const float* x, const float* w, int64_t K) {
  double abs_xw = 0;
  for (int64_t k = 0; k < K; k++) abs_xw += std::abs(static_cast<double>(x[k]) * w[k]);
  switch (f) {
    case WeightFormat::kF32:
      return 8 * kEps * std::sqrt(K + 2.0) * abs_xw;
    case WeightFormat::kBF16:
      return (2 * std::ldexp(1.0, -8) + 8 * kEps * std::sqrt(K + 2.0)) * abs_xw;
    case WeightFormat::kQ8_0:
    case WeightFormat::kQ4_0: {
      const int64_t nb = K / kQuantBlock;
      double quant = 0, magnitude = 0;
      for (int64_t b = 0; b < nb; b++) {
        double amax = 0;
        for (int64_t i = 0; i < kQuantBlock; i++)
          amax = std::max(amax, std::abs(static_cast<double>(x[b * kQuantBlock + i])));
        const double scale_bound = amax / 127 * (1 + std::ldexp(1.0, -10)) + std::ldexp(1.0, -24);
        const double half_step = scale_bound / 2;
        for (int64_t i = 0; i < kQuantBlock; i++) {
          const double aw = std::abs(static_cast<double>(w[b * kQuantBlock + i]));
          quant += aw * half_step;
          magnitude += aw * (std::abs(static_cast<double>(x[b * kQuantBlock + i])) + half_step);
        }
      }
      return quant + (nb + 8) * kEps * magnitude;
    }
    case WeightFormat::kFP8:  // (not in kAllFormats: tests/test_fp8.cpp)
      break;
  }
  return 0;
}

// The activations [M, K] as the kernel rounds them: to bf16 hi + lo parts for bf16 weights (16
// significant bits) in the row kernels and two-pass GEMMs, to bf16 in the single-pass GEMM
// (M >= kGemmSinglePassMinRowsBF16), not at all where the GEMMs run on float32
// (cpu::bf16_products_prefer_f32), to Q8_0
// blocks for the block formats (both conversions are tested above), unchanged for f32.
std::vector<float> rounded_activations(WeightFormat f, const std::vector<float>& x, int64_t M) {
  const int64_t n = static_cast<int64_t>(x.size());
  std::vector<float> y(x);
  if (f == WeightFormat::kBF16 && M >= cpu::kGemmMinRowsBF16 && cpu::bf16_products_prefer_f32())
    return y;
  if (f == WeightFormat::kBF16 && M >= cpu::kGemmSinglePassMinRowsBF16) {
    std::vector<uint16_t> bits(n);
    convert_row_f32_to_bf16(x.data(), bits.data(), n);
    convert_row_bf16_to_f32(bits.data(), y.data(), n);
  } else if (f == WeightFormat::kBF16) {
    std::vector<uint16_t> bits(n);
    std::vector<float> hi(n), residual(n), lo(n);
    convert_row_f32_to_bf16(x.data(), bits.data(), n);
    convert_row_bf16_to_f32(bits.data(), hi.data(), n);
    for (int64_t i = 0; i < n; i++) residual[i] = x[i] - hi[i];
    convert_row_f32_to_bf16(residual.data(), bits.data(), n);
    convert_row_bf16_to_f32(bits.data(), lo.data(), n);
    for (int64_t i = 0; i < n; i++) y[i] = hi[i] + lo[i];
  } else if (f == WeightFormat::kQ8_0 || f == WeightFormat::kQ4_0) {
    std::vector<BlockQ8_0> blocks(n / kQuantBlock);
    quantize_row_q8_0(x.data(), blocks.data(), n);
    dequantize_row_q8_0(blocks.data(), y.data(), n);
  }
  return y;
}

// Compares the kernel with the reference for all shapes in one format, on the current target,
// twice: with the bound of the header comment against ref on the float32 activations, and, to
// catch small slips that bound would hide at large K (a lost block, a wrong scale), against ref
// on the activations rounded as the kernel rounds them, where only float32 summation error is
// left: 8 u sqrt(K + 2) sum_k |xr_k w_k| for f32 and bf16, (nb + 8) u sum_k |xr_k w_k| for the
// block formats (xr: the rounded activations).
void check_quant_linear(WeightFormat f) {
  const bool blocked = f == WeightFormat::kQ8_0 || f == WeightFormat::kQ4_0;
  std::vector<int64_t> Ks = {32, 64, 4096 + 32};
  if (!blocked) Ks.insert(Ks.end(), {5, 100});  // vector tails; f32 and bf16 take any K
  for (int64_t M : {1, 3, 17, 40})              // 40: the GEMMs of every format
    for (int64_t K : Ks)
      for (int64_t N : {1, 7, 300}) {
        SCOPED_TRACE(testing::Message()
                     << weight_format_name(f) << " M=" << M << " K=" << K << " N=" << N);
        std::mt19937 rng(static_cast<uint32_t>(99 + M * 131 + K * 7 + N));
        const std::vector<float> x = random_vector(rng, M * K), w = random_vector(rng, N * K);
        const QuantMatrix qw = quantize_matrix(w.data(), N, K, f);
        std::vector<float> w_deq(N * K);
        for (int64_t n = 0; n < N; n++) dequantize_row(f, qw.row(n), &w_deq[n * K], K);
        const std::vector<float> xr = rounded_activations(f, x, M);
        std::vector<float> got(M * N, std::numeric_limits<float>::quiet_NaN());
        std::vector<float> want(M * N), want_rounded(M * N);
        cpu::quant_linear_forward(got.data(), x.data(), qw, M);
        ref::quant_linear_forward(want.data(), x.data(), qw, M);
        ref::quant_linear_forward(want_rounded.data(), xr.data(), qw, M);
        const double summation =
            blocked ? (K / kQuantBlock + 8) * kEps : 8 * kEps * std::sqrt(K + 2.0);
        for (int64_t m = 0; m < M; m++)
          for (int64_t n = 0; n < N; n++) {
            const float g = got[m * N + n];
            const double bound = product_bound(f, &x[m * K], &w_deq[n * K], K);
            ASSERT_LE(std::abs(static_cast<double>(g) - want[m * N + n]), bound)
                << "at m=" << m << " n=" << n << " got " << g << " want " << want[m * N + n];
            double abs_xw = 0;
            for (int64_t k = 0; k < K; k++)
              abs_xw += std::abs(static_cast<double>(xr[m * K + k]) * w_deq[n * K + k]);
            ASSERT_LE(std::abs(static_cast<double>(g) - want_rounded[m * N + n]),
                      summation * abs_xw)
                << "at m=" << m << " n=" << n << " got " << g << " want (rounded x) "
                << want_rounded[m * N + n];
          }
      }
}

// Every target the kernels were compiled for that this CPU can run, best first.
std::vector<int64_t> runnable_targets() {
  const int64_t mask = cpu::supported_targets() & cpu::quant_compiled_targets();
  std::vector<int64_t> targets;
  for (int bit = 0; bit < 63; bit++)
    if (mask & (int64_t{1} << bit)) targets.push_back(int64_t{1} << bit);
  return targets;
}

TEST(QuantLinear, DispatchesToTheBestTarget) {
  const std::vector<int64_t> targets = runnable_targets();
  ASSERT_FALSE(targets.empty());
  const int64_t chosen = cpu::quant_dispatch_target();
  std::printf("quant kernels: dispatch chose %s; compiled and runnable here:",
              hwy::TargetName(chosen));
  for (int64_t t : targets) std::printf(" %s", hwy::TargetName(t));
  std::printf("\n");
  EXPECT_EQ(chosen, targets.front());  // lower Highway bits are better targets
}

class QuantLinearEveryTarget : public testing::TestWithParam<WeightFormat> {};

TEST_P(QuantLinearEveryTarget, MatchesReference) {
  for (int64_t target : runnable_targets()) {
    SCOPED_TRACE(hwy::TargetName(target));
    ScopedTarget scoped(target);
    ASSERT_EQ(cpu::quant_dispatch_target(), target);
    check_quant_linear(GetParam());
    if (HasFatalFailure()) return;
  }
}

INSTANTIATE_TEST_SUITE_P(Formats, QuantLinearEveryTarget, testing::ValuesIn(kAllFormats),
                         [](const testing::TestParamInfo<WeightFormat>& info) {
                           return std::string(weight_format_name(info.param));
                         });

TEST(QuantLinear, NonFiniteActivationsGiveNaNNotAnError) {
  std::mt19937 rng(11);
  const int64_t K = 64, N = 3;
  std::vector<float> x = random_vector(rng, 2 * K);
  x[K + 5] = std::numeric_limits<float>::infinity();  // row 1 only
  const std::vector<float> w = random_vector(rng, N * K);
  for (WeightFormat f : {WeightFormat::kQ8_0, WeightFormat::kQ4_0}) {
    const QuantMatrix qw = quantize_matrix(w.data(), N, K, f);
    std::vector<float> out(2 * N);
    cpu::quant_linear_forward(out.data(), x.data(), qw, 2);
    for (int64_t n = 0; n < N; n++) {
      EXPECT_TRUE(std::isfinite(out[n])) << weight_format_name(f);
      EXPECT_TRUE(std::isnan(out[N + n])) << weight_format_name(f);
    }
  }
}

// A group runs each job exactly as quant_linear_forward does: bitwise equal results, whatever
// the jobs share (inputs, shapes) and however their rows fall between the threads.
TEST(QuantLinear, GroupEqualsSingleProducts) {
  std::mt19937 rng(13);
  const int64_t K = 1024;  // enough work for the threads to split the rows
  const std::vector<float> x = random_vector(rng, 3 * K), y = random_vector(rng, 2 * K);
  struct Case {
    WeightFormat format;
    int64_t rows;
    const float* inp;
    int64_t M;
  };
  const std::vector<Case> cases = {
      {WeightFormat::kQ8_0, 37, x.data(), 3}, {WeightFormat::kQ4_0, 5, x.data(), 3},
      {WeightFormat::kQ4_0, 64, y.data(), 2}, {WeightFormat::kBF16, 19, x.data(), 1},
      {WeightFormat::kBF16, 1, y.data(), 2},  {WeightFormat::kQ8_0, 7, x.data(), 0}};
  std::vector<QuantMatrix> weights;
  for (const Case& c : cases) {
    const std::vector<float> w = random_vector(rng, c.rows * K);
    weights.push_back(quantize_matrix(w.data(), c.rows, K, c.format));
  }
  std::vector<std::vector<float>> got(cases.size()), want(cases.size());
  std::vector<cpu::QuantJob> jobs;
  for (size_t i = 0; i < cases.size(); i++) {
    got[i].assign(std::max<int64_t>(cases[i].M, 1) * cases[i].rows, -1.0f);
    want[i] = got[i];
    cpu::quant_linear_forward(want[i].data(), cases[i].inp, weights[i], cases[i].M);
    jobs.push_back({got[i].data(), cases[i].inp, &weights[i], cases[i].M});
  }
  cpu::quant_linear_forward_group(jobs.data(), static_cast<int64_t>(jobs.size()));
  for (size_t i = 0; i < cases.size(); i++) EXPECT_EQ(got[i], want[i]) << "job " << i;
}

// ---------------------------------------------------------------------------------------------
// By hand: ./test_quant --gtest_also_run_disabled_tests --gtest_filter='QuantSpeed.*'
// A decode-sized matrix-vector product (w [2048, 11008]) per format; reports weight bytes read
// per second. Timings on a shared machine are indicative only.
TEST(QuantSpeed, DISABLED_ReportOnly) {
  const int64_t N = 2048, K = 11008, kRepeats = 20;
  std::mt19937 rng(12);
  const std::vector<float> w = random_vector(rng, N * K), x = random_vector(rng, K);
  std::vector<float> out(N);
  std::printf("target %s, w [%lld, %lld], best / median of %lld runs\n",
              hwy::TargetName(cpu::quant_dispatch_target()), static_cast<long long>(N),
              static_cast<long long>(K), static_cast<long long>(kRepeats));
  for (WeightFormat f : kAllFormats) {
    const QuantMatrix qw = quantize_matrix(w.data(), N, K, f);
    cpu::quant_linear_forward(out.data(), x.data(), qw, 1);  // warm up
    std::vector<double> seconds;
    for (int64_t r = 0; r < kRepeats; r++) {
      const auto start = std::chrono::steady_clock::now();
      cpu::quant_linear_forward(out.data(), x.data(), qw, 1);
      seconds.push_back(
          std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
    }
    std::sort(seconds.begin(), seconds.end());
    const double gb = static_cast<double>(qw.size_bytes()) / 1e9;
    std::printf("  %-5s %7.1f MB  best %7.3f ms  %6.1f GB/s   median %7.3f ms  %6.1f GB/s\n",
                weight_format_name(f), gb * 1e3, seconds.front() * 1e3, gb / seconds.front(),
                seconds[seconds.size() / 2] * 1e3, gb / seconds[seconds.size() / 2]);
  }
}

}  // namespace
}  // namespace dsmoe
