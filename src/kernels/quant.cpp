#include "kernels/quant.h"

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstring>
#include <string>
#include <vector>

#include "tensor/dtype.h"
#include "util/check.h"
#include "util/multiversion.h"

namespace dsmoe {
namespace {

void check_blocked(const char* what, int64_t n) {
  DSMOE_CHECK(n % kQuantBlock == 0,
              "{}: row length {} is not a multiple of the block size {}; keep such tensors in "
              "f32 or bf16",
              what, n, kQuantBlock);
}

// Stores the scale as f16, rounded away from zero (to the next f16 of at least its magnitude),
// and returns the value read back, which quantizing divides by: with |stored| >= |scale| every
// element lies inside the grid, so none is clamped, even where f16 is coarse (subnormal scales,
// below 2^-14, have few significant bits). nullopt when the scale was not finite (an inf or NaN
// element) or exceeds f16's range (|scale| > 65504).
std::optional<float> store_scale_f16(float scale, uint16_t* bits) {
  if (!std::isfinite(scale)) return std::nullopt;
  *bits = f32_to_f16(scale);
  // f16 is sign-magnitude: the next encoding up has the next larger magnitude (0x7BFF -> inf).
  if (std::abs(f16_to_f32(*bits)) < std::abs(scale)) ++*bits;
  const float stored = f16_to_f32(*bits);
  if (!std::isfinite(stored)) return std::nullopt;
  return stored;
}

template <typename Block>
void quantize_row(const char* what, bool (*quantize_block)(const float*, Block*), const float* x,
                  Block* y, int64_t n) {
  check_blocked(what, n);
  for (int64_t b = 0; b < n / kQuantBlock; b++)
    if (!quantize_block(x + b * kQuantBlock, y + b)) {
      const float* xb = x + b * kQuantBlock;
      const float amax = std::abs(*std::max_element(
          xb, xb + kQuantBlock, [](float a, float c) { return std::abs(a) < std::abs(c); }));
      fail(
          fmt::format("{}: block {} (elements {}..{}) has a non-finite element or a scale "
                      "beyond f16 (max |x| = {})",
                      what, b, b * kQuantBlock, (b + 1) * kQuantBlock - 1, amax));
    }
}

// The loops below are written so that the compiler vectorizes them (loading a checkpoint
// quantizes billions of weights; decode quantizes every activation row): magnitudes compared as
// integer bit patterns (ordered like the floats for non-NaN values), no library rounding calls.
constexpr uint32_t kAbsMask = 0x7FFFFFFFu, kExponentMask = 0x7F800000u;

uint32_t abs_bits(float v) { return std::bit_cast<uint32_t>(v) & kAbsMask; }

// max |x_i| as bits; >= kExponentMask exactly when some element is inf or NaN.
uint32_t block_amax_bits(const float* x) {
  uint32_t amax = 0;
  for (int64_t i = 0; i < kQuantBlock; i++) amax = std::max(amax, abs_bits(x[i]));
  return amax;
}

// round(v), half away from zero, for |v| < 2^23: v + (0.5 - 2^-25) with v's sign, truncated
// (adding 0.5 itself would round 0.5 - 2^-25 up to 1).
int32_t round_half_away(float v) { return static_cast<int32_t>(v + std::copysign(0.49999997f, v)); }

}  // namespace

// The block functions are multi-versioned (their loops vectorize on AVX-512, same bits): decode
// quantizes every product's activations with quantize_block_q8_0, and loading a Q4_0 model was
// ~20% quantize_block_q4_0.
// llama.cpp's quantize_row_q8_0_ref, per block: d = amax / 127, q = round(x / d).
DSMOE_MULTIVERSION_BODY bool quantize_block_q8_0_body(const float* x, BlockQ8_0* y) {
  const uint32_t amax_bits = block_amax_bits(x);
  const std::optional<float> d =
      amax_bits < kExponentMask
          ? store_scale_f16(std::bit_cast<float>(amax_bits) / 127.0f, &y->scale_f16)
          : std::nullopt;
  if (!d) {
    *y = BlockQ8_0{};
    return false;
  }
  // |x / d| <= 127 since d >= amax / 127; the clamp only guards the float division.
  const float divisor = *d == 0.0f ? 1.0f : *d;  // d == 0: every element is 0
  for (int64_t i = 0; i < kQuantBlock; i++)
    y->q[i] = static_cast<int8_t>(std::clamp(round_half_away(x[i] / divisor), -127, 127));
  return true;
}

bool quantize_block_q8_0(const float* x, BlockQ8_0* y) {
  return multiversion<quantize_block_q8_0_body>(x, y);
}

// llama.cpp's quantize_row_q4_0_ref, per block: d = max / -8 with max the signed element of
// largest magnitude (the first such, so max maps to nibble 0), nibble = (int)(x / d + 8.5)
// clamped to 15; elements 0..15 go to the low nibbles, 16..31 to the high nibbles.
DSMOE_MULTIVERSION_BODY bool quantize_block_q4_0_body(const float* x, BlockQ4_0* y) {
  constexpr int64_t kHalf = kQuantBlock / 2;
  const uint32_t amax_bits = block_amax_bits(x);
  float max = 0.0f;  // (+0 when every element is +-0)
  for (int64_t i = 0; i < kQuantBlock && amax_bits != 0; i++)
    if (abs_bits(x[i]) == amax_bits) {
      max = x[i];
      break;
    }
  const std::optional<float> d =
      amax_bits < kExponentMask ? store_scale_f16(max / -8.0f, &y->scale_f16) : std::nullopt;
  if (!d) {
    *y = BlockQ4_0{};
    return false;
  }
  // floor(v) for v = x / d + 8.5 >= 0 is a truncation; below 0 both clamp to nibble 0. With
  // d == 0 (every element 0) v is 8.5: nibble 8, the value 0.
  const float divisor = *d == 0.0f ? 1.0f : *d;
  uint8_t nibble[kQuantBlock];
  for (int64_t i = 0; i < kQuantBlock; i++)
    nibble[i] = static_cast<uint8_t>(
        std::clamp(static_cast<int32_t>(std::max(x[i] / divisor + 8.5f, 0.0f)), 0, 15));
  for (int64_t j = 0; j < kHalf; j++)
    y->q[j] = static_cast<uint8_t>(nibble[j] | (nibble[j + kHalf] << 4));
  return true;
}

bool quantize_block_q4_0(const float* x, BlockQ4_0* y) {
  return multiversion<quantize_block_q4_0_body>(x, y);
}

void quantize_row_q8_0(const float* x, BlockQ8_0* y, int64_t n) {
  quantize_row("quantize_row_q8_0", quantize_block_q8_0, x, y, n);
}

void quantize_row_q4_0(const float* x, BlockQ4_0* y, int64_t n) {
  quantize_row("quantize_row_q4_0", quantize_block_q4_0, x, y, n);
}

void dequantize_row_q8_0(const BlockQ8_0* x, float* y, int64_t n) {
  check_blocked("dequantize_row_q8_0", n);
  for (int64_t b = 0; b < n / kQuantBlock; b++) {
    const float d = f16_to_f32(x[b].scale_f16);
    for (int64_t i = 0; i < kQuantBlock; i++) y[b * kQuantBlock + i] = x[b].q[i] * d;
  }
}

void dequantize_row_q4_0(const BlockQ4_0* x, float* y, int64_t n) {
  check_blocked("dequantize_row_q4_0", n);
  constexpr int64_t kHalf = kQuantBlock / 2;
  for (int64_t b = 0; b < n / kQuantBlock; b++) {
    const float d = f16_to_f32(x[b].scale_f16);
    float* yb = y + b * kQuantBlock;
    for (int64_t j = 0; j < kHalf; j++) {
      yb[j] = ((x[b].q[j] & 0x0F) - 8) * d;
      yb[j + kHalf] = ((x[b].q[j] >> 4) - 8) * d;
    }
  }
}

void convert_row_f32_to_bf16(const float* x, uint16_t* y, int64_t n) {
  for (int64_t i = 0; i < n; i++) y[i] = f32_to_bf16(x[i]);
}

void convert_row_bf16_to_f32(const uint16_t* x, float* y, int64_t n) {
  for (int64_t i = 0; i < n; i++) y[i] = bf16_to_f32(x[i]);
}

const char* weight_format_name(WeightFormat format) {
  switch (format) {
    case WeightFormat::kF32:
      return "f32";
    case WeightFormat::kBF16:
      return "bf16";
    case WeightFormat::kQ8_0:
      return "q8_0";
    case WeightFormat::kQ4_0:
      return "q4_0";
    case WeightFormat::kFP8:
      return "fp8";
  }
  return "invalid";
}

std::optional<WeightFormat> parse_weight_format(std::string_view name) {
  for (WeightFormat f : {WeightFormat::kF32, WeightFormat::kBF16, WeightFormat::kQ8_0,
                         WeightFormat::kQ4_0, WeightFormat::kFP8})
    if (name == weight_format_name(f)) return f;
  return std::nullopt;
}

size_t weight_row_bytes(WeightFormat format, int64_t cols) {
  DSMOE_CHECK(cols >= 0, "weight_row_bytes: negative column count {}", cols);
  const size_t n = static_cast<size_t>(cols);
  switch (format) {
    case WeightFormat::kF32:
      return n * sizeof(float);
    case WeightFormat::kBF16:
      return n * sizeof(uint16_t);
    case WeightFormat::kQ8_0:
      check_blocked("q8_0 weight", cols);
      return n / kQuantBlock * sizeof(BlockQ8_0);
    case WeightFormat::kQ4_0:
      check_blocked("q4_0 weight", cols);
      return n / kQuantBlock * sizeof(BlockQ4_0);
    case WeightFormat::kFP8:
      return n;
  }
  fail(fmt::format("invalid WeightFormat value {}", static_cast<int>(format)));
}

void dequantize_row(WeightFormat format, const void* row, float* y, int64_t cols) {
  switch (format) {
    case WeightFormat::kF32:
      std::memcpy(y, row, static_cast<size_t>(cols) * sizeof(float));
      return;
    case WeightFormat::kBF16:
      return convert_row_bf16_to_f32(static_cast<const uint16_t*>(row), y, cols);
    case WeightFormat::kQ8_0: {
      check_blocked("dequantize_row (q8_0)", cols);
      std::vector<BlockQ8_0> blocks(static_cast<size_t>(cols / kQuantBlock));
      join_blocks(format, row, cols / kQuantBlock, blocks.data());
      return dequantize_row_q8_0(blocks.data(), y, cols);
    }
    case WeightFormat::kQ4_0: {
      check_blocked("dequantize_row (q4_0)", cols);
      std::vector<BlockQ4_0> blocks(static_cast<size_t>(cols / kQuantBlock));
      join_blocks(format, row, cols / kQuantBlock, blocks.data());
      return dequantize_row_q4_0(blocks.data(), y, cols);
    }
    case WeightFormat::kFP8:
      fail("dequantize_row: an fp8 row needs its block scales (dequantize_matrix_row)");
  }
  fail(fmt::format("invalid WeightFormat value {}", static_cast<int>(format)));
}

namespace {

// The bytes of block b: its scale at offset 0, its quants after (both block types).
template <class Block>
void split_row(const Block* blocks, int64_t n_blocks, uint8_t* row) {
  constexpr size_t kQuants = sizeof(Block::q);
  uint8_t* quants = row + n_blocks * sizeof(uint16_t);
  for (int64_t b = 0; b < n_blocks; b++) {
    std::memcpy(row + b * sizeof(uint16_t), &blocks[b].scale_f16, sizeof(uint16_t));
    std::memcpy(quants + b * kQuants, blocks[b].q, kQuants);
  }
}

template <class Block>
void join_row(const uint8_t* row, int64_t n_blocks, Block* blocks) {
  constexpr size_t kQuants = sizeof(Block::q);
  const uint8_t* quants = row + n_blocks * sizeof(uint16_t);
  for (int64_t b = 0; b < n_blocks; b++) {
    std::memcpy(&blocks[b].scale_f16, row + b * sizeof(uint16_t), sizeof(uint16_t));
    std::memcpy(blocks[b].q, quants + b * kQuants, kQuants);
  }
}

}  // namespace

void split_blocks(WeightFormat format, const void* blocks, int64_t n_blocks, void* row) {
  DSMOE_ASSERT(format == WeightFormat::kQ8_0 || format == WeightFormat::kQ4_0);
  if (format == WeightFormat::kQ8_0)
    split_row(static_cast<const BlockQ8_0*>(blocks), n_blocks, static_cast<uint8_t*>(row));
  else
    split_row(static_cast<const BlockQ4_0*>(blocks), n_blocks, static_cast<uint8_t*>(row));
}

void join_blocks(WeightFormat format, const void* row, int64_t n_blocks, void* blocks) {
  DSMOE_ASSERT(format == WeightFormat::kQ8_0 || format == WeightFormat::kQ4_0);
  if (format == WeightFormat::kQ8_0)
    join_row(static_cast<const uint8_t*>(row), n_blocks, static_cast<BlockQ8_0*>(blocks));
  else
    join_row(static_cast<const uint8_t*>(row), n_blocks, static_cast<BlockQ4_0*>(blocks));
}

QuantMatrix make_quant_matrix(int64_t rows, int64_t cols, WeightFormat format, bool panels) {
  DSMOE_CHECK(rows >= 0, "quantize_matrix: negative row count {}", rows);
  const bool block_format = format == WeightFormat::kQ8_0 || format == WeightFormat::kQ4_0;
  DSMOE_CHECK(!panels || format == WeightFormat::kBF16 || block_format,
              "quantize_matrix: the panel layouts are for bf16, q8_0 and q4_0 weights, not {}",
              weight_format_name(format));
  QuantMatrix m;
  m.format = format;
  m.rows = rows;
  m.cols = cols;
  m.row_bytes = weight_row_bytes(format, cols);  // checks cols % 32 for the block formats
  m.panels = panels;
  if (format == WeightFormat::kFP8)
    m.block_scales.resize(static_cast<size_t>(fp8_blocks(rows) * fp8_blocks(cols)));
  const int64_t groups = (rows + kPanelGroupRows - 1) / kPanelGroupRows;
  const int64_t block_panels = (rows + kBlockPanelRows - 1) / kBlockPanelRows;
  if (panels && block_format)
    m.data.resize(static_cast<size_t>(block_panels * block_panel_bytes(format, cols)));
  else
    m.data.resize(panels ? static_cast<size_t>(groups * (cols + 1) / 2 * kPanelGroupRows) * 4
                         : static_cast<size_t>(rows) * m.row_bytes);
  return m;
}

namespace {

// One row quantized to llama.cpp blocks, stored in a QuantMatrix row (split_blocks).
template <class Block>
void quantize_split_row(void (*quantize_row)(const float*, Block*, int64_t), const float* src,
                        int64_t cols, void* dst) {
  thread_local std::vector<Block> blocks;
  blocks.resize(static_cast<size_t>(cols / kQuantBlock));
  quantize_row(src, blocks.data(), cols);
  split_row(blocks.data(), cols / kQuantBlock, static_cast<uint8_t*>(dst));
}

// Row r of a block-panel matrix (quant.h) from / into its llama.cpp blocks.
template <class Block>
void put_panel_row(const Block* blocks, int64_t r, QuantMatrix& m) {
  constexpr int64_t kQuants = sizeof(Block::q);
  uint8_t* panel = m.data.data() + r / kBlockPanelRows * block_panel_bytes(m.format, m.cols);
  const int64_t lane = r % kBlockPanelRows;
  for (int64_t b = 0; b < m.cols / kQuantBlock; b++) {
    std::memcpy(panel + block_panel_scales_at(m.format, b) + 2 * lane, &blocks[b].scale_f16, 2);
    uint8_t* quants = panel + block_panel_quants_at(m.format, b);
    for (int64_t j = 0; j < kQuants / 4; j++)
      std::memcpy(quants + 4 * (kBlockPanelRows * j + lane), blocks[b].q + 4 * j, 4);
  }
}

template <class Block>
void get_panel_row(const QuantMatrix& m, int64_t r, Block* blocks) {
  constexpr int64_t kQuants = sizeof(Block::q);
  const uint8_t* panel = m.panel(r / kBlockPanelRows);
  const int64_t lane = r % kBlockPanelRows;
  for (int64_t b = 0; b < m.cols / kQuantBlock; b++) {
    std::memcpy(&blocks[b].scale_f16, panel + block_panel_scales_at(m.format, b) + 2 * lane, 2);
    const uint8_t* quants = panel + block_panel_quants_at(m.format, b);
    for (int64_t j = 0; j < kQuants / 4; j++)
      std::memcpy(blocks[b].q + 4 * j, quants + 4 * (kBlockPanelRows * j + lane), 4);
  }
}

// One row quantized to llama.cpp blocks, stored in a block-panel matrix.
template <class Block>
void quantize_panel_row(void (*quantize_row)(const float*, Block*, int64_t), const float* src,
                        int64_t r, QuantMatrix& m) {
  thread_local std::vector<Block> blocks;
  blocks.resize(static_cast<size_t>(m.cols / kQuantBlock));
  quantize_row(src, blocks.data(), m.cols);
  put_panel_row(blocks.data(), r, m);
}

// quantize_rows for a panel matrix: the 64-row groups the rows fall in, in parallel.
void convert_rows_to_panels(const float* w, int64_t row_begin, int64_t n_rows, QuantMatrix& m) {
  auto* dst = reinterpret_cast<uint16_t*>(m.data.data());
  const int64_t row_end = row_begin + n_rows, cols = m.cols;
  const int64_t first_group = row_begin / kPanelGroupRows;
  const int64_t n_groups = n_rows == 0 ? 0 : (row_end - 1) / kPanelGroupRows - first_group + 1;
#pragma omp parallel for schedule(static) if (n_rows * cols > (1 << 16))
  for (int64_t g = first_group; g < first_group + n_groups; g++) {
    const int64_t r0 = std::max(row_begin, g * kPanelGroupRows);
    const int64_t r1 = std::min(row_end, (g + 1) * kPanelGroupRows);
    for (int64_t r = r0; r < r1; r++) {
      const float* src = w + (r - row_begin) * cols;
      uint16_t* row0 = dst + bf16_panel_index(m.rows, cols, r, 0);
      const size_t pair_stride = bf16_panel_pair_stride(m.rows, r);
      for (int64_t k = 0; k < cols; k++)
        row0[static_cast<size_t>(k / 2) * pair_stride + k % 2] = f32_to_bf16(src[k]);
    }
  }
}

// amax / 448 of the block [r0, r1) x [c0, c1) of w (rows from w's first), or nullopt when an
// element is not finite.
std::optional<float> fp8_block_scale(const float* w, int64_t cols, int64_t r0, int64_t r1,
                                     int64_t c0, int64_t c1) {
  uint32_t amax = 0;
  for (int64_t r = r0; r < r1; r++)
    for (int64_t c = c0; c < c1; c++) amax = std::max(amax, abs_bits(w[r * cols + c]));
  if (amax >= kExponentMask) return std::nullopt;
  return std::bit_cast<float>(amax) / kFp8Max;
}

// quantize_rows for kFP8 (DeepSeek's scheme, quant.h), one block of rows per iteration.
void quantize_rows_fp8(const float* w, int64_t row_begin, int64_t n_rows, QuantMatrix& m) {
  const int64_t cols = m.cols, col_blocks = fp8_blocks(cols);
  DSMOE_CHECK(
      row_begin % kFp8Block == 0 && (n_rows % kFp8Block == 0 || row_begin + n_rows == m.rows),
      "quantize_rows (fp8): rows {}..{} do not cover whole {}-row scale blocks", row_begin,
      row_begin + n_rows, kFp8Block);
  std::string error;
#pragma omp parallel for schedule(static) if (n_rows * cols > (1 << 16))
  for (int64_t r0 = 0; r0 < n_rows; r0 += kFp8Block) {
    const int64_t r1 = std::min(r0 + kFp8Block, n_rows);
    for (int64_t cb = 0; cb < col_blocks; cb++) {
      const int64_t c0 = cb * kFp8Block, c1 = std::min(c0 + kFp8Block, cols);
      const std::optional<float> scale = fp8_block_scale(w, cols, r0, r1, c0, c1);
      if (!scale) {
#pragma omp critical(dsmoe_quantize_matrix_error)
        if (error.empty())
          error = fmt::format("block of rows {}..{}, columns {}..{} has a non-finite element",
                              row_begin + r0, row_begin + r1 - 1, c0, c1 - 1);
        continue;
      }
      m.block_scales[static_cast<size_t>((row_begin + r0) / kFp8Block * col_blocks + cb)] = *scale;
      const float divisor = *scale == 0.0f ? 1.0f : *scale;  // (an all-zero block)
      for (int64_t r = r0; r < r1; r++) {
        uint8_t* dst = m.data.data() + static_cast<size_t>(row_begin + r) * m.row_bytes;
        for (int64_t c = c0; c < c1; c++) dst[c] = f32_to_f8e4m3(w[r * cols + c] / divisor);
      }
    }
  }
  if (!error.empty()) fail(fmt::format("quantize_matrix (fp8): {}", error));
}

}  // namespace

int64_t fp8_first_nan(const uint8_t* bytes, int64_t n) {
  // (vectorized: an OR-reduction of the test per chunk, then the position within the chunk)
  constexpr int64_t kChunk = 4096;
  for (int64_t begin = 0; begin < n; begin += kChunk) {
    const int64_t end = std::min(n, begin + kChunk);
    bool any = false;
    for (int64_t i = begin; i < end; i++) any |= (bytes[i] & 0x7F) == 0x7F;
    if (!any) continue;
    for (int64_t i = begin; i < end; i++)
      if ((bytes[i] & 0x7F) == 0x7F) return i;
  }
  return -1;
}

void quantize_rows(const float* w, int64_t row_begin, int64_t n_rows, QuantMatrix& m) {
  DSMOE_CHECK(row_begin >= 0 && n_rows >= 0 && row_begin + n_rows <= m.rows,
              "quantize_rows: rows {}..{} outside a matrix of {}", row_begin, row_begin + n_rows,
              m.rows);
  const int64_t cols = m.cols;
  const WeightFormat format = m.format;
  if (m.panels && format == WeightFormat::kBF16)
    return convert_rows_to_panels(w, row_begin, n_rows, m);
  if (format == WeightFormat::kFP8) return quantize_rows_fp8(w, row_begin, n_rows, m);
  // Rows are independent; an Error (a non-finite element, an f16 scale overflow) is caught inside
  // the parallel region, since an exception must not leave an OpenMP structured block.
  std::string error;
#pragma omp parallel for schedule(static) if (n_rows * cols > (1 << 16))
  for (int64_t i = 0; i < n_rows; i++) {
    const float* src = w + i * cols;
    void* dst = m.data.data() + static_cast<size_t>(row_begin + i) * m.row_bytes;
    try {
      switch (format) {
        case WeightFormat::kF32:
          std::memcpy(dst, src, m.row_bytes);
          break;
        case WeightFormat::kBF16:
          convert_row_f32_to_bf16(src, static_cast<uint16_t*>(dst), cols);
          break;
        case WeightFormat::kQ8_0:
          if (m.panels)
            quantize_panel_row(quantize_row_q8_0, src, row_begin + i, m);
          else
            quantize_split_row(quantize_row_q8_0, src, cols, dst);
          break;
        case WeightFormat::kQ4_0:
          if (m.panels)
            quantize_panel_row(quantize_row_q4_0, src, row_begin + i, m);
          else
            quantize_split_row(quantize_row_q4_0, src, cols, dst);
          break;
        case WeightFormat::kFP8:  // (quantize_rows_fp8 above)
          break;
      }
    } catch (const Error& e) {
#pragma omp critical(dsmoe_quantize_matrix_error)
      if (error.empty()) error = fmt::format("row {}: {}", row_begin + i, e.what());
    }
  }
  if (!error.empty())
    fail(fmt::format("quantize_matrix ({}): {}", weight_format_name(format), error));
}

QuantMatrix quantize_matrix(const float* w, int64_t rows, int64_t cols, WeightFormat format,
                            bool panels) {
  QuantMatrix m = make_quant_matrix(rows, cols, format, panels);
  quantize_rows(w, 0, rows, m);
  return m;
}

void dequantize_matrix_row(const QuantMatrix& m, int64_t r, float* y) {
  DSMOE_ASSERT(r >= 0 && r < m.rows);
  if (m.format == WeightFormat::kFP8) {
    // The expanded checkpoint's arithmetic (io/safetensors.cpp): e4m3 as float32, times its
    // block's scale (one rounding).
    convert_to_f32(m.row(r), DType::kF8_E4M3, static_cast<size_t>(m.cols), y);
    const float* scales = m.row_block_scales(r);
    for (int64_t c = 0; c < m.cols; c++) y[c] *= scales[c / kFp8Block];
    return;
  }
  if (!m.panels) return dequantize_row(m.format, m.row(r), y, m.cols);
  if (m.format == WeightFormat::kQ8_0) {
    std::vector<BlockQ8_0> blocks(static_cast<size_t>(m.cols / kQuantBlock));
    get_panel_row(m, r, blocks.data());
    return dequantize_row_q8_0(blocks.data(), y, m.cols);
  }
  if (m.format == WeightFormat::kQ4_0) {
    std::vector<BlockQ4_0> blocks(static_cast<size_t>(m.cols / kQuantBlock));
    get_panel_row(m, r, blocks.data());
    return dequantize_row_q4_0(blocks.data(), y, m.cols);
  }
  const auto* bits = reinterpret_cast<const uint16_t*>(m.data.data());
  const size_t first = bf16_panel_index(m.rows, m.cols, r, 0);
  const size_t pair_stride = bf16_panel_pair_stride(m.rows, r);
  for (int64_t k = 0; k < m.cols; k++)
    y[k] = bf16_to_f32(bits[first + static_cast<size_t>(k / 2) * pair_stride + k % 2]);
}

void panel_row_to_split(const QuantMatrix& m, int64_t r, void* row) {
  DSMOE_ASSERT(m.panels && r >= 0 && r < m.rows);
  const int64_t nb = m.cols / kQuantBlock;
  if (m.format == WeightFormat::kQ8_0) {
    std::vector<BlockQ8_0> blocks(static_cast<size_t>(nb));
    get_panel_row(m, r, blocks.data());
    return split_blocks(m.format, blocks.data(), nb, row);
  }
  DSMOE_ASSERT(m.format == WeightFormat::kQ4_0);
  std::vector<BlockQ4_0> blocks(static_cast<size_t>(nb));
  get_panel_row(m, r, blocks.data());
  split_blocks(m.format, blocks.data(), nb, row);
}

}  // namespace dsmoe
