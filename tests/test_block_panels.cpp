// Tests for Q8_0 / Q4_0 weights in block panels (QuantMatrix::panels, kernels/quant.h): the
// layout holds the blocks of the rows, the VNNI GEMM packs it into the bits it packs from the rows
// (same results), the matrix-vector kernel gives every activation row its own bits however many
// it takes at once, grouped products equal single ones, and without VNNI the row kernels read the
// panels one row at a time with the results of the rows. The products' accuracy against the scalar
// model is in tests/test_gemm_quant.cpp (every case on both layouts).
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <random>
#include <vector>

#include "hwy/targets.h"
#include "kernels/cpu/gemm_quant.h"
#include "kernels/cpu/isa_dispatch.h"
#include "kernels/cpu/quant_ops.h"
#include "kernels/quant.h"
#include "util/check.h"

namespace dsmoe {
namespace {

struct Dims {
  int64_t rows, cols;
};
// Short last panels and groups (K = 32, 96, 160: 1, 3, 5 blocks), one panel, several.
constexpr Dims kDims[] = {{1, 32},   {5, 96},    {16, 128},  {17, 160},
                          {40, 512}, {100, 224}, {130, 1024}};
constexpr WeightFormat kFormats[] = {WeightFormat::kQ8_0, WeightFormat::kQ4_0};

std::vector<float> random_vector(std::mt19937& rng, int64_t n) {
  std::normal_distribution<float> dist;
  std::vector<float> v(static_cast<size_t>(n));
  for (float& x : v) x = dist(rng);
  return v;
}

struct Case {
  std::vector<float> w, x;
  QuantMatrix rows, panels;
};
Case make_case(std::mt19937& rng, WeightFormat format, Dims d, int64_t M) {
  Case c{random_vector(rng, d.rows * d.cols), random_vector(rng, M * d.cols), {}, {}};
  c.rows = quantize_matrix(c.w.data(), d.rows, d.cols, format);
  c.panels = quantize_matrix(c.w.data(), d.rows, d.cols, format, /*panels=*/true);
  return c;
}

TEST(BlockPanels, LayoutHoldsTheRowsBlocks) {
  std::mt19937 rng(1);
  for (const WeightFormat format : kFormats)
    for (const Dims d : kDims) {
      const Case c = make_case(rng, format, d, 1);
      ASSERT_TRUE(c.panels.panels);
      EXPECT_EQ(c.panels.data.size(),
                static_cast<size_t>((d.rows + 15) / 16 * block_panel_bytes(format, d.cols)));
      std::vector<uint8_t> split(c.rows.row_bytes);
      std::vector<float> from_rows(d.cols), from_panels(d.cols);
      for (int64_t r = 0; r < d.rows; r++) {
        panel_row_to_split(c.panels, r, split.data());
        ASSERT_EQ(std::memcmp(split.data(), c.rows.row(r), c.rows.row_bytes), 0)
            << weight_format_name(format) << " row " << r << " of " << d.rows << " x " << d.cols;
        dequantize_matrix_row(c.rows, r, from_rows.data());
        dequantize_matrix_row(c.panels, r, from_panels.data());
        ASSERT_EQ(from_panels, from_rows) << r;
      }
      // Converted a slice of rows at a time (as the loader does), the same bytes.
      QuantMatrix sliced = make_quant_matrix(d.rows, d.cols, format, true);
      for (int64_t begin = 0; begin < d.rows; begin += 7)
        quantize_rows(c.w.data() + begin * d.cols, begin, std::min<int64_t>(7, d.rows - begin),
                      sliced);
      EXPECT_EQ(sliced.data, c.panels.data) << d.rows << " x " << d.cols;
    }
}

// The GEMM's packing of a panel is the panel's own words made unsigned: the rows' bits exactly.
TEST(BlockPanels, GemmGivesTheBitsOfTheRows) {
  std::mt19937 rng(2);
  for (const WeightFormat format : kFormats)
    for (const Dims d : kDims)
      for (const int64_t M : {2, 7, 40}) {
        const Case c = make_case(rng, format, d, M);
        std::vector<float> expected(M * d.rows), got(M * d.rows);
        cpu::gemm_quant(expected.data(), c.x.data(), M, c.rows);
        cpu::gemm_quant(got.data(), c.x.data(), M, c.panels);
        ASSERT_EQ(got, expected) << weight_format_name(format) << " M " << M << " " << d.rows
                                 << " x " << d.cols;
      }
}

// Batched decode and speculative verification (passes of up to 4 activation rows) give each row
// the bits of that row alone, through the single and the grouped products.
TEST(BlockPanels, RowsTogetherGiveEachRowItsOwnBits) {
  std::mt19937 rng(3);
  for (const WeightFormat format : kFormats)
    for (const Dims d : kDims)
      for (const int64_t M : {2, 4, 5, 9}) {
        const Case c = make_case(rng, format, d, M);
        std::vector<float> together(M * d.rows), alone(d.rows);
        cpu::quant_linear_forward_rows(together.data(), c.x.data(), c.panels, M);
        for (int64_t m = 0; m < M; m++) {
          cpu::quant_linear_forward_rows(alone.data(), c.x.data() + m * d.cols, c.panels, 1);
          for (int64_t n = 0; n < d.rows; n++)
            ASSERT_EQ(together[m * d.rows + n], alone[n])
                << weight_format_name(format) << " row " << m << " of " << M << ", output " << n
                << ", " << d.rows << " x " << d.cols;
        }
      }
}

TEST(BlockPanels, GroupedProductsMatchSingleProducts) {
  std::mt19937 rng(4);
  std::vector<QuantMatrix> matrices;
  std::vector<std::vector<float>> inputs, outputs;
  const Dims dims[] = {{64, 128}, {17, 64}, {300, 128}, {130, 96}, {512, 32}, {1408, 256}};
  for (const WeightFormat format : kFormats)
    for (const Dims d : dims) {
      const std::vector<float> w = random_vector(rng, d.rows * d.cols);
      matrices.push_back(quantize_matrix(w.data(), d.rows, d.cols, format, true));
      inputs.push_back(random_vector(rng, d.cols));
      outputs.emplace_back(d.rows);
    }
  // The third job shares the first one's input (same K: rounded once for both).
  inputs[2] = inputs[0];
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

// Without VNNI (a test narrowing Highway's targets after the weights were stored in panels) the
// row kernels read each panel row in the split-row layout: the rows' results, bit for bit.
TEST(BlockPanels, WithoutVnniTheRowKernelsGiveTheRowsResults) {
  std::mt19937 rng(5);
  for (const int64_t target : {int64_t{HWY_AVX3}, int64_t{HWY_AVX2}}) {
    if (!(cpu::supported_targets() & target)) continue;
    for (const WeightFormat format : kFormats)
      for (const Dims d : kDims) {
        const Case c = make_case(rng, format, d, 3);
        std::vector<float> got(3 * d.rows), want(3 * d.rows);
        hwy::SetSupportedTargetsForTest(target);
        cpu::quant_linear_forward_rows(got.data(), c.x.data(), c.panels, 3);
        cpu::quant_linear_forward_rows(want.data(), c.x.data(), c.rows, 3);
        hwy::SetSupportedTargetsForTest(0);
        ASSERT_EQ(got, want) << hwy::TargetName(target) << " " << weight_format_name(format) << " "
                             << d.rows << " x " << d.cols;
      }
  }
}

}  // namespace
}  // namespace dsmoe
