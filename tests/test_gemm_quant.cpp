// Tests for cpu::gemm_quant (kernels/cpu/gemm_quant.h), the VNNI Q8_0 / Q4_0 matrix product for
// prefill, against a scalar model of its semantics and against cpu::quant_linear_forward, on
// weights in rows and in block panels (QuantMatrix::panels; tests/test_block_panels.cpp has the
// layout's own tests).
//
// The scalar model quantizes the activations with quantize_block_q8_0 as the kernels do (NaN
// scale for a block that fails), takes exact integer block sums and accumulates
// scale_w * scale_x * sum in double. Both kernels sum nb float32 terms (nb = K / 32) plus at most
// a 16-lane reduction, so they differ from it by at most (nb + 16) u sum_b |term_b|; with
// K <= 2080 that is below 1e-5 sum_b |term_b|, the bound checked here.
#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "hwy/targets.h"
#include "kernels/cpu/gemm_quant.h"
#include "kernels/cpu/isa_dispatch.h"
#include "kernels/cpu/quant_ops.h"
#include "kernels/quant.h"
#include "tensor/dtype.h"
#include "test_util.h"
#include "util/threads.h"

namespace dsmoe {
namespace {

constexpr double kRelTol = 1e-5;

std::vector<float> random_vector(std::mt19937& rng, size_t n, float lo = -1.0f, float hi = 1.0f) {
  std::uniform_real_distribution<float> dist(lo, hi);
  std::vector<float> v(n);
  for (float& x : v) x = dist(rng);
  return v;
}

// Rows whose blocks span magnitudes 2^-8 .. 2^8, so that scales of many exponents meet.
std::vector<float> varied_matrix(std::mt19937& rng, int64_t rows, int64_t cols) {
  std::vector<float> v = random_vector(rng, static_cast<size_t>(rows * cols));
  for (int64_t i = 0; i < rows * cols; i += kQuantBlock) {
    const float scale = std::ldexp(1.0f, static_cast<int>((i / kQuantBlock * 7) % 17) - 8);
    for (int64_t j = 0; j < kQuantBlock; j++) v[i + j] *= scale;
  }
  return v;
}

// The weights of block b of row n as integers (q for Q8_0, nibble - 8 for Q4_0) and its scale
// (QuantMatrix rows: the scales first, then the quants; see row_scales in kernels/quant.h; block
// panels are read through panel_row_to_split).
float weight_block(const QuantMatrix& w, int64_t n, int64_t b, int32_t* values) {
  const int64_t nb = w.cols / kQuantBlock;
  std::vector<uint8_t> split(w.panels ? w.row_bytes : 0);
  if (w.panels) panel_row_to_split(w, n, split.data());
  const void* row = w.panels ? static_cast<const void*>(split.data()) : w.row(n);
  const float scale = f16_to_f32(row_scales(row)[b]);
  const uint8_t* q = row_quants(row, nb) + b * quant_bytes_per_block(w.format);
  if (w.format == WeightFormat::kQ8_0) {
    for (int64_t i = 0; i < kQuantBlock; i++) values[i] = static_cast<int8_t>(q[i]);
    return scale;
  }
  for (int64_t i = 0; i < kQuantBlock / 2; i++) {
    values[i] = (q[i] & 0x0F) - 8;
    values[i + kQuantBlock / 2] = (q[i] >> 4) - 8;
  }
  return scale;
}

// The scalar model: want[m, n], the sum of |terms| (one per block) it was made of, and the
// sum of |products| (one per element, scales included). quant_linear_forward's AVX3_DL path
// rounds partial sums of 4 products within a block, which may cancel, so its error is bounded
// by the latter only.
struct Reference {
  std::vector<double> want, magnitude, product_magnitude;
};

Reference reference(const float* x, int64_t M, const QuantMatrix& w) {
  const int64_t N = w.rows, nb = w.cols / kQuantBlock;
  std::vector<BlockQ8_0> xq(static_cast<size_t>(M * nb));
  std::vector<float> x_scale(static_cast<size_t>(M * nb));
  for (int64_t i = 0; i < M * nb; i++)
    x_scale[i] = quantize_block_q8_0(x + i * kQuantBlock, &xq[i])
                     ? f16_to_f32(xq[i].scale_f16)
                     : std::numeric_limits<float>::quiet_NaN();
  const std::vector<double> zeros(M * N, 0.0);
  Reference ref{zeros, zeros, zeros};
  int32_t values[kQuantBlock];
  for (int64_t n = 0; n < N; n++)
    for (int64_t b = 0; b < nb; b++) {
      const double w_scale = weight_block(w, n, b, values);
      for (int64_t m = 0; m < M; m++) {
        int64_t sum = 0, abs_sum = 0;
        for (int64_t i = 0; i < kQuantBlock; i++) {
          sum += values[i] * xq[m * nb + b].q[i];
          abs_sum += std::abs(values[i] * xq[m * nb + b].q[i]);
        }
        const double scale = w_scale * x_scale[m * nb + b];
        ref.want[m * N + n] += scale * static_cast<double>(sum);
        ref.magnitude[m * N + n] += std::abs(scale * static_cast<double>(sum));
        ref.product_magnitude[m * N + n] += std::abs(scale * static_cast<double>(abs_sum));
      }
    }
  return ref;
}

// got against the model within kRelTol of the summed magnitudes; NaN exactly where it has NaN.
void expect_close(const std::vector<float>& got, const Reference& ref,
                  const std::vector<double>& magnitude, int64_t N, const std::string& what) {
  for (size_t i = 0; i < got.size(); i++) {
    const double want = ref.want[i];
    if (std::isnan(want)) {
      ASSERT_TRUE(std::isnan(got[i])) << what << " at m=" << i / N << " n=" << i % N;
      continue;
    }
    ASSERT_LE(std::abs(static_cast<double>(got[i]) - want), kRelTol * magnitude[i])
        << what << " at m=" << i / N << " n=" << i % N << " got " << got[i] << " want " << want;
  }
}

// gemm_quant and quant_linear_forward against the model.
void check_product(const std::vector<float>& x, int64_t M, const QuantMatrix& w,
                   const std::string& what) {
  const int64_t N = w.rows;
  const Reference ref = reference(x.data(), M, w);
  std::vector<float> got(M * N, -1.0f), old(M * N, -1.0f);
  cpu::gemm_quant(got.data(), x.data(), M, w);
  cpu::quant_linear_forward_rows(old.data(), x.data(), w, M);
  // Without AVX512-VNNI (or under DSMOE_MAX_ISA=avx2) gemm_quant is quant_linear_forward_rows.
  const bool native = cpu::gemm_quant_native();
  expect_close(got, ref, native ? ref.magnitude : ref.product_magnitude, N, what + " gemm_quant");
  expect_close(old, ref, ref.product_magnitude, N, what + " quant_linear_forward");
}

struct Shape {
  int64_t M, N, K;
};

// Edges of both tilings: M around the 12-row tile, N around the 16-row panel, K from one block.
constexpr Shape kShapes[] = {{1, 1, 32},      {2, 15, 64}, {3, 16, 96},     {5, 17, 1024},
                             {8, 33, 2080},   {9, 64, 96}, {17, 100, 1024}, {48, 64, 2080},
                             {130, 33, 1024}, {13, 1, 64}, {12, 16, 32},    {25, 100, 64},
                             {130, 17, 96}};

// A weight format in rows or in block panels (QuantMatrix::panels).
struct Layout {
  WeightFormat format;
  bool panels;
};

class GemmQuantFormats : public testing::TestWithParam<Layout> {
 protected:
  WeightFormat format() const { return GetParam().format; }
  QuantMatrix weights(const std::vector<float>& w, int64_t rows, int64_t cols) const {
    return quantize_matrix(w.data(), rows, cols, GetParam().format, GetParam().panels);
  }
};

TEST_P(GemmQuantFormats, MatchesTheScalarModelAndQuantLinear) {
  std::mt19937 rng(1);
  for (const Shape& s : kShapes) {
    const QuantMatrix w = weights(varied_matrix(rng, s.N, s.K), s.N, s.K);
    const std::vector<float> x = varied_matrix(rng, s.M, s.K);
    check_product(x, s.M, w, fmt::format("M={} N={} K={}", s.M, s.N, s.K));
    if (HasFatalFailure()) return;
  }
}

// With one block (K = 32) each output is one rounding of an exact product, fma(sum, s_w s_x, 0)
// (s_w s_x has at most 22 significant bits), so it must equal the model's double result rounded
// to float: this checks the kernel's own activation quantization bit for bit, on ties (x / d
// = k + 1/2, rounded away from zero), scales of every f16 exponent, zero scales, and scales
// past f16.
TEST_P(GemmQuantFormats, OneBlockIsExact) {
  if (!cpu::gemm_quant_native())
    GTEST_SKIP() << "no AVX512-VNNI (or DSMOE_MAX_ISA caps it): gemm_quant runs "
                    "quant_linear_forward_rows, checked by FallsBackWithoutVNNI";
  std::mt19937 rng(6);
  const int64_t N = 17, K = kQuantBlock;
  std::vector<float> x = varied_matrix(rng, 150, K);
  auto add_row = [&](std::vector<float> row) {
    row.resize(K, row.back());
    x.insert(x.end(), row.begin(), row.end());
  };
  // Blocks at magnitudes 2^-40 .. 2^23: f16 scales from subnormal to past the range.
  std::uniform_int_distribution<int> exponent(-40, 23);
  for (int r = 0; r < 100; r++) {
    std::vector<float> row = random_vector(rng, K);
    const int e = exponent(rng);
    for (float& v : row) v = std::ldexp(v, e);
    add_row(row);
  }
  add_row({127.0f, 2.5f, -2.5f, 0.5f, -0.5f, 1.5f, -1.5f, 126.5f, -126.5f, 3.49999f, -0.49999f});
  add_row({-254.0f, 1.0f, -1.0f, 3.0f, -3.0f, 5.0f, 253.0f, -253.0f});  // d = 2: the odd ones tie
  add_row({1e-6f, -3e-7f, 5e-7f, 2e-8f});                               // subnormal f16 scale
  add_row({1e-44f, -1e-44f});                                           // scale 0 in float
  add_row({0.0f});                                                      // all zero
  add_row({8e6f, -1.0f});                                               // scale 62992, in range
  add_row({8.4e6f, 1.0f});                                              // scale past f16: NaN
  const int64_t M = static_cast<int64_t>(x.size()) / K;
  const QuantMatrix w = weights(varied_matrix(rng, N, K), N, K);
  const Reference ref = reference(x.data(), M, w);
  std::vector<float> got(M * N);
  cpu::gemm_quant(got.data(), x.data(), M, w);
  for (int64_t i = 0; i < M * N; i++) {
    const float want = static_cast<float>(ref.want[i]);
    if (std::isnan(want))
      ASSERT_TRUE(std::isnan(got[i])) << "m=" << i / N << " n=" << i % N;
    else
      ASSERT_EQ(got[i], want) << "m=" << i / N << " n=" << i % N;
  }
  EXPECT_TRUE(std::isnan(got[(M - 1) * N]));
}

// Every quant byte set to `byte` (all -127 / 127 for Q8_0, all nibbles 0 / 15 for Q4_0) and
// every block scale to `scale_f16`.
QuantMatrix uniform_matrix(WeightFormat format, bool panels, int64_t rows, int64_t cols,
                           uint8_t byte, uint16_t scale_f16) {
  QuantMatrix w = make_quant_matrix(rows, cols, format, panels);
  std::fill(w.data.begin(), w.data.end(), byte);
  const int64_t nb = cols / kQuantBlock;
  if (panels) {  // every scale slot of every panel (rows past the end too: never stored)
    for (int64_t p = 0; p * kBlockPanelRows < rows; p++)
      for (int64_t b = 0; b < nb; b++)
        for (int64_t lane = 0; lane < kBlockPanelRows; lane++)
          std::memcpy(&w.data[p * block_panel_bytes(format, cols) +
                              block_panel_scales_at(format, b) + 2 * lane],
                      &scale_f16, sizeof(scale_f16));
    return w;
  }
  for (int64_t r = 0; r < rows; r++)  // the scales lead each row
    for (int64_t b = 0; b < nb; b++)
      std::memcpy(&w.data[r * w.row_bytes + b * sizeof(uint16_t)], &scale_f16, sizeof(scale_f16));
  return w;
}

TEST_P(GemmQuantFormats, ExtremeValuesStayExact) {
  const int64_t M = 13, N = 33, K = 2080;
  const bool q8 = format() == WeightFormat::kQ8_0;
  // Q8_0: 0x81 = -127 and 0x7F = 127; Q4_0: 0x00 = nibbles 0 (-8), 0xFF = nibbles 15 (7).
  // Scales -0.5 (f16 0xB800) and the largest f16, 65504 (0x7BFF).
  for (uint8_t byte : q8 ? std::vector<uint8_t>{0x81, 0x7F} : std::vector<uint8_t>{0x00, 0xFF})
    for (uint16_t scale : {uint16_t{0xB800}, uint16_t{0x7BFF}}) {
      const QuantMatrix w = uniform_matrix(format(), GetParam().panels, N, K, byte, scale);
      // Activations at +-1e6 (the largest Q8_0 block is ~8e6): every quantized value is +-127.
      std::vector<float> x(M * K);
      for (int64_t i = 0; i < M * K; i++) x[i] = (i / K) % 2 ? 1e6f : -1e6f;
      check_product(x, M, w, fmt::format("byte {:#x} scale {:#x}", byte, scale));
      if (HasFatalFailure()) return;
    }
}

TEST_P(GemmQuantFormats, NonFiniteActivationBlocksGiveNaN) {
  std::mt19937 rng(2);
  const int64_t M = 20, N = 40, K = 128;
  const QuantMatrix w = weights(varied_matrix(rng, N, K), N, K);
  std::vector<float> x = varied_matrix(rng, M, K);
  x[3 * K + 70] = std::numeric_limits<float>::quiet_NaN();
  x[14 * K + 1] = std::numeric_limits<float>::infinity();
  check_product(x, M, w, "NaN");
  std::vector<float> got(M * N);
  cpu::gemm_quant(got.data(), x.data(), M, w);
  for (int64_t n = 0; n < N; n++) {
    EXPECT_TRUE(std::isnan(got[3 * N + n]));
    EXPECT_TRUE(std::isnan(got[14 * N + n]));
    EXPECT_TRUE(std::isfinite(got[4 * N + n]));
  }
}

// quantize_blocks_q8_0_native (decode's activation rounding) gives quantize_block_q8_0's bytes
// and scales for every kind of block: random, all zero, tiny (scale below the f16 normals),
// huge (scale beyond f16), with a NaN or an infinity, and 1..40 blocks (the 16-block groups'
// tails).
TEST(QuantizeBlocksNative, MatchesQuantizeBlockQ8_0BitForBit) {
  if (!cpu::gemm_quant_native()) GTEST_SKIP() << "no AVX-512 VNNI";
  std::mt19937 rng(11);
  for (int64_t nb = 1; nb <= 40; nb++) {
    std::vector<float> x = random_vector(rng, static_cast<size_t>(nb * kQuantBlock), -3.0f, 3.0f);
    auto block = [&](int64_t b) { return x.data() + (b % nb) * kQuantBlock; };
    std::fill_n(block(1), kQuantBlock, 0.0f);
    for (int64_t i = 0; i < kQuantBlock; i++) block(2)[i] *= 1e-9f;
    for (int64_t i = 0; i < kQuantBlock; i++) block(3)[i] *= 1e38f;
    block(4)[7] = std::numeric_limits<float>::quiet_NaN();
    block(5)[31] = -std::numeric_limits<float>::infinity();
    block(6)[0] = 65504.0f * 127.0f;  // the scale on the edge of f16
    std::vector<BlockQ8_0> want(nb), got(nb);
    std::vector<float> got_scale(nb);
    ASSERT_TRUE(cpu::quantize_blocks_q8_0_native(x.data(), nb, got.data(), got_scale.data()));
    for (int64_t b = 0; b < nb; b++) {
      const bool ok = quantize_block_q8_0(x.data() + b * kQuantBlock, &want[b]);
      EXPECT_EQ(std::memcmp(&want[b], &got[b], sizeof(BlockQ8_0)), 0) << "nb " << nb << " b " << b;
      if (ok)
        EXPECT_EQ(got_scale[b], f16_to_f32(want[b].scale_f16)) << "nb " << nb << " b " << b;
      else
        EXPECT_TRUE(std::isnan(got_scale[b])) << "nb " << nb << " b " << b;
    }
  }
}

TEST_P(GemmQuantFormats, OneAndTwoThreadsAgreeBitwise) {
  std::mt19937 rng(3);
  // Many panels (split between threads), one panel (the rows split), and a ragged mix.
  for (const Shape& s : {Shape{48, 100, 1024}, Shape{130, 16, 256}, Shape{37, 33, 2080}}) {
    const QuantMatrix w = weights(varied_matrix(rng, s.N, s.K), s.N, s.K);
    const std::vector<float> x = varied_matrix(rng, s.M, s.K);
    std::vector<float> one(s.M * s.N), two(s.M * s.N);
    set_num_threads(1);
    cpu::gemm_quant(one.data(), x.data(), s.M, w);
    set_num_threads(2);
    cpu::gemm_quant(two.data(), x.data(), s.M, w);
    set_num_threads(1);
    EXPECT_EQ(std::memcmp(one.data(), two.data(), one.size() * sizeof(float)), 0)
        << "M=" << s.M << " N=" << s.N << " K=" << s.K;
  }
}

// gemm_quant_group gives each job gemm_quant's bits, with inputs shared by several jobs
// (quantized once), M from 1 to past the L2 split, K of different lengths, one and two threads.
TEST_P(GemmQuantFormats, GroupGivesEachJobsBits) {
  std::mt19937 rng(5);
  const std::vector<Shape> shapes = {{48, 100, 1024}, {48, 37, 1024},  {1, 40, 256},
                                     {7, 16, 256},    {200, 64, 2048}, {13, 300, 96}};
  std::vector<QuantMatrix> w;
  std::vector<std::vector<float>> x;
  for (const Shape& s : shapes) {
    w.push_back(weights(varied_matrix(rng, s.N, s.K), s.N, s.K));
    x.push_back(varied_matrix(rng, s.M, s.K));
  }
  for (int threads : {1, 2}) {
    set_num_threads(threads);
    std::vector<std::vector<float>> want, got;
    std::vector<cpu::QuantJob> jobs;
    for (size_t i = 0; i < shapes.size(); i++) {
      const Shape& s = shapes[i];
      // Jobs 0 and 1 read one input, as an expert's gate and up projections do.
      const std::vector<float>& input = i == 1 ? x[0] : x[i];
      want.emplace_back(s.M * s.N);
      got.emplace_back(s.M * s.N, -1.0f);
      cpu::gemm_quant(want.back().data(), input.data(), s.M, w[i]);
      jobs.push_back({nullptr, input.data(), &w[i], s.M});
    }
    for (size_t i = 0; i < jobs.size(); i++) jobs[i].out = got[i].data();
    cpu::gemm_quant_group(jobs.data(), static_cast<int64_t>(jobs.size()));
    for (size_t i = 0; i < shapes.size(); i++)
      EXPECT_EQ(std::memcmp(got[i].data(), want[i].data(), got[i].size() * sizeof(float)), 0)
          << "job " << i << " threads " << threads;
  }
  set_num_threads(1);
}

// Q8_0 and Q4_0 jobs reading one input (zero points 128 and 8: quantized apart).
TEST(GemmQuantGroup, FormatsMixedOnOneInput) {
  std::mt19937 rng(6);
  const int64_t M = 20, N = 48, K = 256;
  const std::vector<float> x = varied_matrix(rng, M, K), weights = varied_matrix(rng, N, K);
  const QuantMatrix q8 = quantize_matrix(weights.data(), N, K, WeightFormat::kQ8_0, true);
  const QuantMatrix q4 = quantize_matrix(weights.data(), N, K, WeightFormat::kQ4_0, false);
  std::vector<float> want8(M * N), want4(M * N), got8(M * N), got4(M * N);
  cpu::gemm_quant(want8.data(), x.data(), M, q8);
  cpu::gemm_quant(want4.data(), x.data(), M, q4);
  const cpu::QuantJob jobs[] = {{got8.data(), x.data(), &q8, M}, {got4.data(), x.data(), &q4, M}};
  cpu::gemm_quant_group(jobs, 2);
  EXPECT_EQ(std::memcmp(got8.data(), want8.data(), got8.size() * sizeof(float)), 0);
  EXPECT_EQ(std::memcmp(got4.data(), want4.data(), got4.size() * sizeof(float)), 0);
}

// Without VNNI (Highway restricted to plain AVX-512 or AVX2) gemm_quant is
// quant_linear_forward_rows.
TEST_P(GemmQuantFormats, FallsBackWithoutVNNI) {
  std::mt19937 rng(4);
  const int64_t M = 9, N = 20, K = 96;
  const QuantMatrix w = weights(varied_matrix(rng, N, K), N, K);
  const std::vector<float> x = varied_matrix(rng, M, K);
  for (int64_t target : {int64_t{HWY_AVX3}, int64_t{HWY_AVX2}}) {
    if (!(cpu::supported_targets() & target)) continue;
    hwy::SetSupportedTargetsForTest(target);
    EXPECT_FALSE(cpu::gemm_quant_native());
    std::vector<float> got(M * N), want(M * N);
    cpu::gemm_quant(got.data(), x.data(), M, w);
    cpu::quant_linear_forward_rows(want.data(), x.data(), w, M);
    hwy::SetSupportedTargetsForTest(0);
    EXPECT_EQ(std::memcmp(got.data(), want.data(), got.size() * sizeof(float)), 0)
        << hwy::TargetName(target);
  }
}

INSTANTIATE_TEST_SUITE_P(Formats, GemmQuantFormats,
                         testing::Values(Layout{WeightFormat::kQ8_0, false},
                                         Layout{WeightFormat::kQ4_0, false},
                                         Layout{WeightFormat::kQ8_0, true},
                                         Layout{WeightFormat::kQ4_0, true}),
                         [](const testing::TestParamInfo<Layout>& info) {
                           return std::string(weight_format_name(info.param.format)) +
                                  (info.param.panels ? "_panels" : "");
                         });

// ---------------------------------------------------------------------------------------------
// By hand: OMP_WAIT_POLICY=passive OMP_NUM_THREADS=2 ./test_gemm_quant
//   --gtest_also_run_disabled_tests --gtest_filter='*Speed*'
// GOP/s counts 2 M N K. Each line gives the fraction of 1000 GOP/s (the int8 VNNI peak measured
// once on 2 threads) and of the peak measured just before it (a register-only vpdpbusd loop on
// every thread): the shared machine's peak moves with its load, and the SMT siblings.

// Best-of-runs seconds of run().
double best_seconds(const std::function<void()>& run) {
  run();  // warm up (and grow the scratch buffers)
  double best = 1e30;
  const auto start = std::chrono::steady_clock::now();
  for (int i = 0; i < 50; i++) {
    const auto t0 = std::chrono::steady_clock::now();
    run();
    const auto t1 = std::chrono::steady_clock::now();
    best = std::min(best, std::chrono::duration<double>(t1 - t0).count());
    if (i >= 3 && std::chrono::duration<double>(t1 - start).count() > 0.5) break;
  }
  return best;
}

// 12 independent vpdpbusd chains, `iterations` times: 12 * 64 multiply-adds per iteration.
__attribute__((target("avx512f,avx512vnni"))) void vnni_loop(int64_t iterations) {
  asm volatile(
      "1:\n"
      "vpdpbusd %%zmm14, %%zmm15, %%zmm0\n vpdpbusd %%zmm14, %%zmm15, %%zmm1\n"
      "vpdpbusd %%zmm14, %%zmm15, %%zmm2\n vpdpbusd %%zmm14, %%zmm15, %%zmm3\n"
      "vpdpbusd %%zmm14, %%zmm15, %%zmm4\n vpdpbusd %%zmm14, %%zmm15, %%zmm5\n"
      "vpdpbusd %%zmm14, %%zmm15, %%zmm6\n vpdpbusd %%zmm14, %%zmm15, %%zmm7\n"
      "vpdpbusd %%zmm14, %%zmm15, %%zmm8\n vpdpbusd %%zmm14, %%zmm15, %%zmm9\n"
      "vpdpbusd %%zmm14, %%zmm15, %%zmm10\n vpdpbusd %%zmm14, %%zmm15, %%zmm11\n"
      "dec %0\n jnz 1b\n"
      : "+r"(iterations)
      :
      : "xmm0", "xmm1", "xmm2", "xmm3", "xmm4", "xmm5", "xmm6", "xmm7", "xmm8", "xmm9", "xmm10",
        "xmm11", "cc");
}

// GOP/s of vnni_loop on all threads now.
double vnni_peak() {
  constexpr int64_t kIterations = 1 << 20;
  const double seconds = best_seconds([] {
#pragma omp parallel
    vnni_loop(kIterations);
  });
  return 2.0 * 12 * 64 * kIterations * num_threads() / seconds * 1e-9;
}

TEST(GemmQuant, DISABLED_Speed) {
  if (!cpu::gemm_quant_native()) GTEST_SKIP() << "no AVX512-VNNI";
  const char* env_threads = std::getenv("OMP_NUM_THREADS");
  set_num_threads(env_threads ? std::atoi(env_threads) : 2);
  std::printf("%d threads\n", num_threads());
  std::mt19937 rng(5);
  for (const auto& [N, K] : {std::pair<int64_t, int64_t>{1408, 2048}, {2048, 1408}})
    for (WeightFormat f : {WeightFormat::kQ8_0, WeightFormat::kQ4_0}) {
      const char* panels_env = std::getenv("DSMOE_SPEED_PANELS");  // 1: block panels
      const bool panels = panels_env != nullptr && std::string(panels_env) == "1";
      const QuantMatrix w = quantize_matrix(random_vector(rng, N * K).data(), N, K, f, panels);
      for (int64_t M : {16, 48, 128, 512}) {
        const std::vector<float> x = random_vector(rng, M * K);
        std::vector<float> out(M * N);
        const double giga_ops = 2e-9 * M * N * K, peak = vnni_peak();
        const double fast =
            giga_ops / best_seconds([&] { cpu::gemm_quant(out.data(), x.data(), M, w); });
        const double slow = giga_ops / best_seconds([&] {
                              cpu::quant_linear_forward_rows(out.data(), x.data(), w, M);
                            });
        std::printf(
            "%s M=%4lld N=%lld K=%lld: gemm_quant %6.1f GOP/s = %4.1f%% of 1000, %4.1f%% of "
            "the peak now (%6.1f); quant_linear_forward %6.1f GOP/s\n",
            weight_format_name(f), static_cast<long long>(M), static_cast<long long>(N),
            static_cast<long long>(K), fast, fast / 10, 100 * fast / peak, peak, slow);
      }
    }
  set_num_threads(1);
}

}  // namespace
}  // namespace dsmoe
