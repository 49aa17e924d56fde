// quant.h: weight storage formats for the matrix kernels (float32, bf16, the 32-element block
// formats Q8_0 / Q4_0 of llama.cpp's ggml-common.h, and DeepSeek-V3's FP8: e4m3 with 128 x 128
// block scales), their row conversions, and QuantMatrix, a [rows, cols] weight matrix held in
// one of them. Portable code only: the SIMD products live in
// kernels/cpu/quant_ops.h.
#pragma once
#include <cstddef>
#include <cstdint>
#include <new>
#include <optional>
#include <string_view>
#include <vector>

namespace dsmoe {

// Elements per quantization block (llama.cpp's QK8_0 == QK4_0 == 32).
constexpr int64_t kQuantBlock = 32;

// llama.cpp's block_q8_0: 32 signed bytes and one f16 scale; element i = q[i] * scale.
struct BlockQ8_0 {
  uint16_t scale_f16;
  int8_t q[kQuantBlock];
};
static_assert(sizeof(BlockQ8_0) == 34, "BlockQ8_0 must match llama.cpp's block_q8_0 (34 bytes)");

// llama.cpp's block_q4_0: 32 4-bit values and one f16 scale; element i = (nibble_i - 8) * scale.
// Byte j holds element j in its low nibble and element j + 16 in its high nibble.
struct BlockQ4_0 {
  uint16_t scale_f16;
  uint8_t q[kQuantBlock / 2];
};
static_assert(sizeof(BlockQ4_0) == 18, "BlockQ4_0 must match llama.cpp's block_q4_0 (18 bytes)");

// Row conversions; n must be a multiple of kQuantBlock for the block formats (an Error otherwise).
//  * Q8_0: scale d = max|x| / 127, q = round(x / d) in [-127, 127].
//  * Q4_0: scale d = m / -8, m the element of largest magnitude (with its sign), so m itself maps
//    to nibble 0; nibble = floor(x / d + 8.5) clamped to [0, 15], so elements opposite in sign
//    to m and within 1/16 of its magnitude clamp to 7 d (an error of up to |d|).
//  As in llama.cpp the scale is stored as f16, but where llama.cpp's quantize_row_*_ref rounds it
//  to nearest and quantizes with the unrounded value, we round its magnitude up to the next f16
//  and quantize with the stored value: then every element inside the grid is within |d| / 2 of
//  its dequantized value (with d as stored), also where f16 is coarse (|d| < 2^-14).
//  A non-finite element, or a scale beyond f16's range (|x| > ~8e6 for Q8_0), is an Error.
void quantize_row_q8_0(const float* x, BlockQ8_0* y, int64_t n);
void quantize_row_q4_0(const float* x, BlockQ4_0* y, int64_t n);
// One block of kQuantBlock elements, for the kernels (which never throw): returns false, with the
// block zeroed, where quantize_row_* would fail.
bool quantize_block_q8_0(const float* x, BlockQ8_0* y);
bool quantize_block_q4_0(const float* x, BlockQ4_0* y);
void dequantize_row_q8_0(const BlockQ8_0* x, float* y, int64_t n);
void dequantize_row_q4_0(const BlockQ4_0* x, float* y, int64_t n);
// bf16 bit patterns; float32 -> bf16 rounds to nearest even (see dtype.h).
void convert_row_f32_to_bf16(const float* x, uint16_t* y, int64_t n);
void convert_row_bf16_to_f32(const uint16_t* x, float* y, int64_t n);

enum class WeightFormat { kF32, kBF16, kQ8_0, kQ4_0, kFP8 };

// "f32", "bf16", "q8_0", "q4_0", "fp8".
const char* weight_format_name(WeightFormat format);
// Parses the names above; nullopt when unknown.
std::optional<WeightFormat> parse_weight_format(std::string_view name);
// Bytes of one row of `cols` elements; an Error when a block format gets cols % 32 != 0.
size_t weight_row_bytes(WeightFormat format, int64_t cols);
// Dequantizes one QuantMatrix row of `cols` elements stored in `format` to float32. kFP8 rows
// need their block scales: an Error here (dequantize_matrix_row applies them).
void dequantize_row(WeightFormat format, const void* row, float* y, int64_t cols);

// FP8 as DeepSeek-V3 ships it (its inference/kernel.py, the `weight_scale_inv` tensors): each
// weight one e4m3fn byte (sign, 4 exponent bits with bias 7, 3 mantissa bits; no inf, 0x7F and
// 0xFF are NaN, max 448), and one float32 scale per block of kFp8Block x kFp8Block weights (the
// last blocks of a row or column may be shorter): w[r][c] = e4m3(q[r][c]) * s[r / 128][c / 128].
// Quantizing (DeepSeek's scheme): s = max |w| of the block / 448, q = e4m3(w / s) rounded to
// nearest even; an all-zero block gets s = 0.
constexpr int64_t kFp8Block = 128;
constexpr float kFp8Max = 448.0f;
// Scale blocks of a dimension of n elements: ceil(n / kFp8Block).
constexpr int64_t fp8_blocks(int64_t n) { return (n + kFp8Block - 1) / kFp8Block; }
// The first NaN code (0x7F / 0xFF) among n e4m3 bytes, or -1: the kernels compute with the bits
// of finite values only, so FP8 weights are checked once when they are loaded.
int64_t fp8_first_nan(const uint8_t* bytes, int64_t n);

// bf16 weights may instead be held in the panel layout of the bf16 GEMM (kernels/cpu/gemm_bf16.h),
// which prefill reads as it is stored (no packing per call) and decode streams once: rows in
// groups of kPanelGroupRows, group g at word g * ceil(cols / 2) * kPanelGroupRows; inside a group,
// k pair after k pair, its panels of kPanelLanes rows (fewer panels in a short last group), each
// a run of kPanelLanes 32-bit words, word i holding row (16 j + i)'s bf16 elements 2 kp (low
// half) and 2 kp + 1 (high half). Rows past the end and the element past an odd `cols` are zero.
constexpr int64_t kPanelLanes = 16;
constexpr int64_t kPanelGroupRows = 64;
// Panels in the group whose first row is row0, of a matrix of `rows` rows.
inline int64_t panel_group_panels(int64_t rows, int64_t row0) {
  const int64_t panels = (rows - row0 + kPanelLanes - 1) / kPanelLanes;
  return panels < kPanelGroupRows / kPanelLanes ? panels : kPanelGroupRows / kPanelLanes;
}
// 16-bit units from one k pair of row r to the next (the words of its group's panels).
inline size_t bf16_panel_pair_stride(int64_t rows, int64_t r) {
  const int64_t row0 = r / kPanelGroupRows * kPanelGroupRows;
  return static_cast<size_t>(2 * kPanelLanes * panel_group_panels(rows, row0));
}
// The bf16 element (r, k) of a [rows, cols] panel matrix, as an index of 16-bit units.
inline size_t bf16_panel_index(int64_t rows, int64_t cols, int64_t r, int64_t k) {
  const int64_t group = r / kPanelGroupRows, pairs = (cols + 1) / 2;
  const size_t row_start =
      static_cast<size_t>(2 * (group * pairs * kPanelGroupRows + (r - group * kPanelGroupRows)));
  return row_start + static_cast<size_t>(k / 2) * bf16_panel_pair_stride(rows, r) +
         static_cast<size_t>(k % 2);
}

// A QuantMatrix row in a block format holds the bytes of its llama.cpp blocks reordered: the nb
// f16 scales first, then the nb blocks' quants (32 int8 for Q8_0; 16 bytes of nibbles for Q4_0,
// in the order of block_q4_0), so that a matrix-vector kernel loads 16 scales and 64 bytes of
// quants at a time instead of picking them out of 34- or 18-byte blocks. Same size as the
// blocks; split_blocks / join_blocks convert a row.
constexpr int64_t quant_bytes_per_block(WeightFormat format) {
  return format == WeightFormat::kQ8_0 ? kQuantBlock : kQuantBlock / 2;
}
inline const uint16_t* row_scales(const void* row) { return static_cast<const uint16_t*>(row); }
inline const uint8_t* row_quants(const void* row, int64_t n_blocks) {
  return static_cast<const uint8_t*>(row) + n_blocks * static_cast<int64_t>(sizeof(uint16_t));
}
// blocks[nb] (BlockQ8_0 or BlockQ4_0 as `format` says) -> a row, and back.
void split_blocks(WeightFormat format, const void* blocks, int64_t n_blocks, void* row);
void join_blocks(WeightFormat format, const void* row, int64_t n_blocks, void* blocks);

// Q8_0 / Q4_0 weights may instead be held in block panels (ik_llama.cpp's run-time repacking,
// in the layout of our VNNI GEMM, kernels/cpu/gemm_quant.cpp), where the CPU has AVX-512 VNNI:
// panels of kBlockPanelRows rows (rows past the end zero), each cut into groups of
// kBlockPanelGroup blocks (the last group of a row holds the rest). A group holds its blocks' 16
// f16 scales each (32 bytes a block, block i of the group at 32 i), then the blocks' quants:
// block i at kBlockPanelGroup * 32 + i * 16 * quant_bytes_per_block(format), as 32-bit words
// where word 16 j + r is row r's quant bytes 4j .. 4j + 3 (Q4_0: bytes as block_q4_0 stores them,
// elements 4j .. 4j + 3 in the low nibbles and 16 + 4j .. 16 + 4j + 3 in the high ones). A
// matrix-vector product then takes 16 rows per vpdpbusd with no per-row sums to reduce (decode),
// and the GEMM unpacks a panel instead of gathering it from 16 rows (prefill). Same bytes as the
// rows, up to the padding of the last panel and group.
constexpr int64_t kBlockPanelRows = 16;
constexpr int64_t kBlockPanelGroup = 4;
constexpr int64_t kBlockPanelScaleBytes = kBlockPanelRows * 2;
constexpr int64_t block_panel_quant_bytes(WeightFormat format) {  // of one block of a panel
  return kBlockPanelRows * quant_bytes_per_block(format);
}
constexpr int64_t block_panel_group_bytes(WeightFormat format) {
  return kBlockPanelGroup * (kBlockPanelScaleBytes + block_panel_quant_bytes(format));
}
// Bytes of one panel of `cols` columns, and the offsets of block b's scales and quants in it.
constexpr int64_t block_panel_bytes(WeightFormat format, int64_t cols) {
  return (cols / kQuantBlock + kBlockPanelGroup - 1) / kBlockPanelGroup *
         block_panel_group_bytes(format);
}
constexpr int64_t block_panel_scales_at(WeightFormat format, int64_t b) {
  return b / kBlockPanelGroup * block_panel_group_bytes(format) +
         b % kBlockPanelGroup * kBlockPanelScaleBytes;
}
constexpr int64_t block_panel_quants_at(WeightFormat format, int64_t b) {
  return b / kBlockPanelGroup * block_panel_group_bytes(format) +
         kBlockPanelGroup * kBlockPanelScaleBytes +
         b % kBlockPanelGroup * block_panel_quant_bytes(format);
}

// std::allocator with 64-byte (cache line, AVX-512 vector) alignment.
template <typename T>
struct CacheAlignedAllocator {
  using value_type = T;
  static constexpr std::align_val_t kAlign{64};
  CacheAlignedAllocator() = default;
  template <typename U>
  CacheAlignedAllocator(const CacheAlignedAllocator<U>&) {}
  T* allocate(size_t n) { return static_cast<T*>(::operator new(n * sizeof(T), kAlign)); }
  void deallocate(T* p, size_t) { ::operator delete(p, kAlign); }
  template <typename U>
  bool operator==(const CacheAlignedAllocator<U>&) const {
    return true;
  }
};

// A weight matrix [rows, cols] (a Hugging Face Linear weight: rows = out features, cols = in
// features) stored row after row in `format`; rows are weight_row_bytes(format, cols) apart
// (block formats: scales first, see row_scales; kFP8: the e4m3 bytes, its block scales in
// `block_scales`). bf16, Q8_0 and Q4_0 matrices with `panels` set are in their panel layouts
// above instead (row_bytes still says a row's share), and row() does not apply to them; panel(p)
// is block panel p.
struct QuantMatrix {
  WeightFormat format = WeightFormat::kF32;
  int64_t rows = 0, cols = 0;
  size_t row_bytes = 0;  // bytes a row holds (in the panel layout too)
  bool panels = false;
  std::vector<uint8_t, CacheAlignedAllocator<uint8_t>> data;  // rows * row_bytes, or the panels
  // kFP8 only: [fp8_blocks(rows), fp8_blocks(cols)] scales (the checkpoint's weight_scale_inv).
  std::vector<float> block_scales;

  const void* row(int64_t r) const { return data.data() + static_cast<size_t>(r) * row_bytes; }
  const uint8_t* panel(int64_t p) const {
    return data.data() + static_cast<size_t>(p * block_panel_bytes(format, cols));
  }
  // kFP8: the scales of row r's column blocks.
  const float* row_block_scales(int64_t r) const {
    return block_scales.data() + static_cast<size_t>(r / kFp8Block * fp8_blocks(cols));
  }
  size_t size_bytes() const { return data.size() + block_scales.size() * sizeof(float); }
};

// Converts a float32 matrix w[rows, cols] to `format` (rows in parallel); `panels` (bf16, Q8_0,
// Q4_0) chooses the panel layout.
QuantMatrix quantize_matrix(const float* w, int64_t rows, int64_t cols, WeightFormat format,
                            bool panels = false);
// A [rows, cols] matrix in `format` (zeros), and rows [row_begin, row_begin + n_rows) of it
// converted from float32 w[n_rows, cols] (for converting a large tensor a slice at a time).
// kFP8 scales whole blocks of rows: row_begin must be a multiple of kFp8Block, and n_rows too
// unless the slice ends the matrix (an Error otherwise).
QuantMatrix make_quant_matrix(int64_t rows, int64_t cols, WeightFormat format, bool panels = false);
void quantize_rows(const float* w, int64_t row_begin, int64_t n_rows, QuantMatrix& m);
// Row r of m (either layout) as float32 y[m.cols].
void dequantize_matrix_row(const QuantMatrix& m, int64_t r, float* y);
// Row r of a Q8_0 / Q4_0 matrix in block panels, in the split-row layout (row_scales,
// row_quants): m.row_bytes bytes at row.
void panel_row_to_split(const QuantMatrix& m, int64_t r, void* row);

}  // namespace dsmoe
