// Tests for bf16 weights in the panel layout (QuantMatrix::panels, kernels/quant.h): the layout
// holds the same bf16 elements as the rows, cpu::gemm_bf16_panels gives the bits of
// cpu::gemm_bf16_weights on the rows, and the matrix-vector kernel (cpu::bf16_panel_rows, behind
// quant_linear_forward and the grouped products) follows the row kernels to float32 rounding.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <initializer_list>
#include <random>
#include <vector>

#include "kernels/cpu/bf16_panels.h"
#include "kernels/cpu/gemm_bf16.h"
#include "kernels/cpu/quant_acts.h"
#include "kernels/cpu/quant_ops.h"
#include "kernels/quant.h"
#include "util/check.h"

namespace dsmoe {
namespace {

struct Dims {
  int64_t rows, cols;
};
// Short last groups and panels, odd and tiny K, several groups.
constexpr Dims kDims[] = {{1, 2},   {5, 7},    {16, 32},   {17, 33},  {64, 64},
                          {70, 48}, {130, 96}, {200, 301}, {256, 512}};

std::vector<float> random_vector(std::mt19937& rng, int64_t n) {
  std::normal_distribution<float> dist;
  std::vector<float> v(static_cast<size_t>(n));
  for (float& x : v) x = dist(rng);
  return v;
}

// One product's inputs: w[rows, cols] in both layouts and x[M, cols].
struct Case {
  std::vector<float> w, x;
  QuantMatrix rows, panels;
};
Case make_case(std::mt19937& rng, Dims d, int64_t M) {
  Case c{random_vector(rng, d.rows * d.cols), random_vector(rng, M * d.cols), {}, {}};
  c.rows = quantize_matrix(c.w.data(), d.rows, d.cols, WeightFormat::kBF16);
  c.panels = quantize_matrix(c.w.data(), d.rows, d.cols, WeightFormat::kBF16, /*panels=*/true);
  return c;
}

// Runs body(case, dims, M, portable) for every kDims x Ms case, with the bf16 kernels' fast
// path on, then forced off.
template <class Body>
void for_each_case(std::mt19937& rng, std::initializer_list<int64_t> Ms, Body body) {
  for (const bool portable : {false, true}) {
    cpu::gemm_bf16_force_portable(portable);
    for (const Dims d : kDims)
      for (const int64_t M : Ms) body(make_case(rng, d, M), d, M, portable);
  }
  cpu::gemm_bf16_force_portable(false);
}

// The bf16 weight rows of w (either layout), as float32.
std::vector<float> weight_rows(const QuantMatrix& w) {
  std::vector<float> out(static_cast<size_t>(w.rows * w.cols));
  for (int64_t r = 0; r < w.rows; r++) dequantize_matrix_row(w, r, out.data() + r * w.cols);
  return out;
}

TEST(Bf16Panels, LayoutHoldsTheRowsElements) {
  std::mt19937 rng(1);
  for (const Dims d : kDims) {
    const std::vector<float> w = random_vector(rng, d.rows * d.cols);
    const QuantMatrix rows = quantize_matrix(w.data(), d.rows, d.cols, WeightFormat::kBF16);
    const QuantMatrix panels =
        quantize_matrix(w.data(), d.rows, d.cols, WeightFormat::kBF16, /*panels=*/true);
    EXPECT_TRUE(panels.panels);
    EXPECT_EQ(weight_rows(panels), weight_rows(rows)) << d.rows << " x " << d.cols;
    // Converted a slice of rows at a time (as the loader does), the same bytes.
    QuantMatrix sliced = make_quant_matrix(d.rows, d.cols, WeightFormat::kBF16, true);
    for (int64_t begin = 0; begin < d.rows; begin += 37)
      quantize_rows(w.data() + begin * d.cols, begin, std::min<int64_t>(37, d.rows - begin),
                    sliced);
    EXPECT_EQ(sliced.data, panels.data) << d.rows << " x " << d.cols;
  }
  EXPECT_THROW(make_quant_matrix(4, 32, WeightFormat::kFP8, true), Error);
  EXPECT_THROW(make_quant_matrix(4, 32, WeightFormat::kF32, true), Error);
}

TEST(Bf16Panels, GemmGivesTheBitsOfTheRowGemm) {
  std::mt19937 rng(2);
  for_each_case(rng, {1, 3, 8, 13, 40}, [](const Case& c, Dims d, int64_t M, bool portable) {
    std::vector<float> expected(M * d.rows), got(M * d.rows);
    cpu::gemm_bf16_weights(expected.data(), c.x.data(), M,
                           reinterpret_cast<const uint16_t*>(c.rows.data.data()), d.rows, d.cols,
                           d.cols);
    cpu::gemm_bf16_panels(got.data(), c.x.data(), M,
                          reinterpret_cast<const uint16_t*>(c.panels.data.data()), d.rows, d.cols);
    EXPECT_EQ(got, expected) << M << " x " << d.rows << " x " << d.cols << " portable " << portable;
  });
}

// quant_linear_forward (row kernels below 8 rows, the GEMMs from 8) on panels against the same
// on rows: the GEMMs take the same exact bf16 products, summed in another order; the row kernels
// on panels take the float32 activations whole, those on rows their bf16 hi + lo parts
// (|x - hi - lo| <= 2^-18 |x|).
TEST(Bf16Panels, ProductsFollowTheRowLayout) {
  std::mt19937 rng(3);
  for_each_case(rng, {1, 2, 5, 9, 33}, [](const Case& c, Dims d, int64_t M, bool portable) {
    std::vector<float> expected(M * d.rows), got(M * d.rows);
    std::vector<float> expected_rows(M * d.rows), got_rows(M * d.rows);
    cpu::quant_linear_forward(expected.data(), c.x.data(), c.rows, M);
    cpu::quant_linear_forward(got.data(), c.x.data(), c.panels, M);
    cpu::quant_linear_forward_rows(expected_rows.data(), c.x.data(), c.rows, M);
    cpu::quant_linear_forward_rows(got_rows.data(), c.x.data(), c.panels, M);
    for (int64_t i = 0; i < M * d.rows; i++) {
      // sum |x w| bounds both float32 sums' rounding: K u |x| |w|, generously; plus the hi + lo
      // split of the activations.
      double magnitude = 0;
      const int64_t m = i / d.rows, n = i % d.rows;
      for (int64_t k = 0; k < d.cols; k++)
        magnitude += std::fabs(c.x[m * d.cols + k] * c.w[n * d.cols + k]);
      const double bound = (1e-6 * (d.cols + 2) + std::ldexp(1.0, -18)) * magnitude + 1e-30;
      ASSERT_NEAR(got[i], expected[i], bound)
          << i << " M " << M << " " << d.rows << " x " << d.cols << " portable " << portable;
      ASSERT_NEAR(got_rows[i], expected_rows[i], bound) << i;
    }
  });
}

// The matrix-vector kernel on several rows at once (speculative verification and batched
// decode: passes of up to 7 rows, fewer panels per pass from 3 rows on) gives each row the
// bits of that row alone, natively and on the scalar path.
TEST(Bf16Panels, RowsTogetherGiveEachRowItsOwnBits) {
  std::mt19937 rng(4);
  for_each_case(rng, {3, 4, 15}, [](const Case& c, Dims d, int64_t M, bool) {
    std::vector<float> together(M * d.rows), alone(d.rows);
    cpu::quant_linear_forward_rows(together.data(), c.x.data(), c.panels, M);
    for (int64_t m = 0; m < M; m++) {
      cpu::quant_linear_forward_rows(alone.data(), c.x.data() + m * d.cols, c.panels, 1);
      for (int64_t n = 0; n < d.rows; n++)
        ASSERT_EQ(together[m * d.rows + n], alone[n])
            << "row " << m << " of " << M << ", output " << n << ", " << d.rows << " x " << d.cols;
    }
  });
}

// The AVX-512 matrix-vector kernel and the scalar one take the same FMAs in the same order.
TEST(Bf16Panels, RowsNativeAndScalarGiveTheSameBits) {
  if (!cpu::gemm_bf16_native()) GTEST_SKIP() << "no AVX512-BF16: the scalar path only";
  std::mt19937 rng(5);
  for (const Dims d : kDims)
    for (const int64_t M : {1, 2, 9}) {
      const Case c = make_case(rng, d, M);
      std::vector<float> native(M * d.rows), scalar(M * d.rows);
      cpu::quant_linear_forward_rows(native.data(), c.x.data(), c.panels, M);
      cpu::gemm_bf16_force_portable(true);
      cpu::quant_linear_forward_rows(scalar.data(), c.x.data(), c.panels, M);
      cpu::gemm_bf16_force_portable(false);
      EXPECT_EQ(native, scalar) << M << " x " << d.rows << " x " << d.cols;
    }
}

// The grouped products (decode) on panels: each job's result is that of its own product.
TEST(Bf16Panels, GroupedProductsMatchSingleProducts) {
  std::mt19937 rng(4);
  std::vector<QuantMatrix> matrices;
  std::vector<std::vector<float>> inputs, outputs;
  const Dims dims[] = {{64, 128}, {17, 64}, {300, 128}, {130, 96}, {512, 16}};
  for (const Dims d : dims) {
    const std::vector<float> w = random_vector(rng, d.rows * d.cols);
    matrices.push_back(quantize_matrix(w.data(), d.rows, d.cols, WeightFormat::kBF16, true));
    inputs.push_back(random_vector(rng, d.cols));
    outputs.emplace_back(d.rows);
  }
  std::vector<cpu::QuantJob> jobs;
  for (size_t j = 0; j < matrices.size(); j++)
    jobs.push_back({outputs[j].data(), inputs[j].data(), &matrices[j], 1});
  cpu::quant_linear_forward_group(jobs.data(), static_cast<int64_t>(jobs.size()));
  for (size_t j = 0; j < matrices.size(); j++) {
    std::vector<float> expected(matrices[j].rows);
    cpu::quant_linear_forward(expected.data(), inputs[j].data(), matrices[j], 1);
    EXPECT_EQ(outputs[j], expected) << "job " << j;
  }
}

TEST(Bf16Panels, BoundariesAreGroupStarts) {
  EXPECT_EQ(cpu::bf16_panel_boundary(0, 100), 0);
  EXPECT_EQ(cpu::bf16_panel_boundary(31, 100), 0);
  EXPECT_EQ(cpu::bf16_panel_boundary(32, 100), 64);
  EXPECT_EQ(cpu::bf16_panel_boundary(95, 100), 64);
  EXPECT_EQ(cpu::bf16_panel_boundary(96, 100), 100);
  EXPECT_EQ(cpu::bf16_panel_boundary(1, 1), 1);
  EXPECT_EQ(cpu::bf16_panel_boundary(100, 100), 100);
}

}  // namespace
}  // namespace dsmoe
