// gemm_quant.cpp (cpu): Q8_0 / Q4_0 weight matrix products for M > 1 on AVX-512 VNNI (vpdpbusd).
// Compiled per x86 target through hwy/foreach_target.h as kernels/cpu/quant_ops.cpp is; only the
// AVX3_DL copy (AVX-512 with VNNI) has a kernel, the others return false and gemm_quant falls
// back to quant_linear_forward_rows.
//
// Layout (oneDNN's int8 GEMM): the 16 int32 lanes of a vector hold 16 weight rows (a "panel").
// vpdpbusd(acc, u8, s8) adds to each lane the 4 products of 4 consecutive bytes, so a panel is
// packed per block as 8 vectors, vector j holding bytes 4j..4j+3 of each of the 16 rows, then
// the 16 rows' block scales as float. Only vpdpbusd's second source can be a broadcast from
// memory, and its first source is the unsigned one: the weights go unsigned (Q4_0 nibbles as
// they are, Q8_0 + 128) and the activations stay signed int8, broadcast 4 bytes at a time. The
// zero point z (8 or 128) is taken out exactly: sum_k (u_k - z) x_k = sum_k u_k x_k - z sum_k x_k,
// with -z sum_k x_k per (row, block) the starting value of the block's int32 accumulator.
//
// Threads split the N panels (each packs its own, two at a time and a run of blocks at a time,
// into a thread-local buffer) and, when there are fewer panels than threads, the activation
// rows; every output element is computed by the same instructions whichever thread runs it.

// Highway 1.0.3 leaves AVX3_DL out of the dispatch set unless asked for. foreach_target.h comes
// first (it re-includes this file once per target), hence no clang-format include sorting here.
// clang-format off
#ifndef HWY_WANT_AVX3_DL
#define HWY_WANT_AVX3_DL
#endif
#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "kernels/cpu/gemm_quant.cpp"
#include "hwy/foreach_target.h"  // IWYU pragma: keep
#include "hwy/highway.h"
// clang-format on

#include "kernels/cpu/gemm_quant.h"

#include <omp.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <utility>
#include <vector>

#include "kernels/cpu/isa_dispatch.h"
#include "kernels/cpu/quant_ops.h"
#include "kernels/quant.h"

HWY_BEFORE_NAMESPACE();
#if HWY_TARGET == HWY_AVX3_DL
// As in quant_ops.cpp: Highway 1.0.3's AVX3_DL attribute string lacks avx512vnni.
HWY_PUSH_ATTRIBUTES("avx512vnni")
#endif
namespace dsmoe::cpu {
namespace HWY_NAMESPACE {

#if HWY_TARGET == HWY_AVX3_DL

constexpr int64_t kPanelRows = 16;  // weight rows per panel: int32 lanes
static_assert(kPanelRows == kBlockPanelRows, "block panels (kernels/quant.h) are GEMM panels");
constexpr int64_t kGroups = kQuantBlock / 4;              // 4-byte groups per block: 8 vectors
constexpr int64_t kPanelBlockBytes = (kGroups + 1) * 64;  // 8 weight vectors + 16 float scales
// Panels per micro-kernel call (see MicroKernel).
constexpr int kMaxPanels = 2;
// Activation rows per micro-kernel call (see MicroKernel).
constexpr int64_t kRowTile = 6;
// Blocks per micro-kernel call (K = 2048 in one run): a run of two panels is 72 KB, in L2 while
// the tiles pass. Against 16 blocks (18 KB, in L1) whole infer-lite8 prefills at Q8_0 ran ~10%
// faster, interleaved runs on the bench machine: packing reads each weight row in longer
// pieces, and the float sums pass through out fewer times.
constexpr int64_t kKBlocks = 64;
// Activation bytes (int8) that stay in L2 (1 MB on Zen 4 / 5) next to the packed panels.
constexpr int64_t kActivationsInL2 = int64_t{384} << 10;
// Enough multiply-adds to be worth waking the OpenMP team.
constexpr int64_t kMinParallelWork = int64_t{1} << 16;

using AlignedBytes = std::vector<uint8_t, CacheAlignedAllocator<uint8_t>>;

// The activations as Q8_0, in tiles of kRowTile rows so that a micro-kernel call reads one
// contiguous stream: slot (tile, block, row in tile) holds 32 int8 at q[slot * 32], the block
// scale as float (NaN where the block could not be quantized) and -z * (sum of the 32 int8).
struct QuantizedActivations {
  AlignedBytes q;
  std::vector<float, CacheAlignedAllocator<float>> scale;
  std::vector<int32_t, CacheAlignedAllocator<int32_t>> correction;

  // Grows only, so that calls after the first allocate nothing.
  void reserve_slots(int64_t slots) {
    const auto n = static_cast<size_t>(slots);
    if (scale.size() < n) {
      q.resize(n * kQuantBlock);
      scale.resize(n);
      correction.resize(n);
    }
  }
};

// Largest lane / sum of the lanes (_mm512_reduce_* trip GCC 12's -Wuninitialized).
HWY_INLINE float ReduceMax(__m512 v) {
  const __m256 m8 = _mm256_max_ps(_mm512_castps512_ps256(v), _mm512_extractf32x8_ps(v, 1));
  __m128 m4 = _mm_max_ps(_mm256_castps256_ps128(m8), _mm256_extractf128_ps(m8, 1));
  m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
  return _mm_cvtss_f32(_mm_max_ss(m4, _mm_movehdup_ps(m4)));
}

HWY_INLINE int32_t ReduceSum(__m512i v) {
  const __m256i s8 = _mm256_add_epi32(_mm512_castsi512_si256(v), _mm512_extracti64x4_epi64(v, 1));
  __m128i s4 = _mm_add_epi32(_mm256_castsi256_si128(s8), _mm256_extracti128_si256(s8, 1));
  s4 = _mm_add_epi32(s4, _mm_unpackhi_epi64(s4, s4));
  return _mm_cvtsi128_si32(_mm_add_epi32(s4, _mm_shuffle_epi32(s4, 1)));
}

// round(v / d) clamped to [-127, 127], as int32: std::round (halves away from zero) is the
// truncation plus one step away from zero where the exact remainder is at least one half.
HWY_INLINE __m512i QuantizeLanes(__m512 v, __m512 d) {
  const __m512 ratio = _mm512_div_ps(v, d);
  const __m512 whole = _mm512_roundscale_ps(ratio, _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC);
  const __m512 rest = _mm512_sub_ps(ratio, whole);  // exact: |ratio| < 2^23
  const __m512 half = _mm512_set1_ps(0.5f), one = _mm512_set1_ps(1.0f);
  __m512 q = _mm512_mask_add_ps(whole, _mm512_cmp_ps_mask(rest, half, _CMP_GE_OQ), whole, one);
  q = _mm512_mask_sub_ps(
      q, _mm512_cmp_ps_mask(rest, _mm512_sub_ps(_mm512_setzero_ps(), half), _CMP_LE_OQ), q, one);
  q = _mm512_min_ps(_mm512_max_ps(q, _mm512_set1_ps(-127.0f)), _mm512_set1_ps(127.0f));
  return _mm512_cvtps_epi32(q);
}

// store_scale_f16 of kernels/quant.cpp for 16 blocks at once, with F16C's conversions (round to
// nearest even, like f32_to_f16): the f16 scale, as float, of blocks whose largest magnitude is
// amax: amax / 127 rounded to the nearest f16, one f16 step up where that fell below. Scales
// beyond f16 come out inf.
HWY_INLINE __m512 BlockScales(__m512 amax) {
  const __m512 wanted = _mm512_div_ps(amax, _mm512_set1_ps(127.0f));
  __m256i bits = _mm512_cvtps_ph(wanted, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  const __mmask16 below = _mm512_cmp_ps_mask(_mm512_cvtph_ps(bits), wanted, _CMP_LT_OQ);
  bits = _mm256_mask_add_epi16(bits, below, bits, _mm256_set1_epi16(1));
  return _mm512_cvtph_ps(bits);
}

// The rest of quantize_block_q8_0 for one block of scale d (NaN: the block failed): the 32 int8
// go to q, d to scale, -zero_point * sum(q) to correction.
HWY_INLINE void QuantizeBlock(const float* HWY_RESTRICT x, float d, int8_t* HWY_RESTRICT q,
                              float* scale, int32_t* correction, int32_t zero_point) {
  *scale = d;
  if (!(d > 0.0f)) {  // 0 (all elements 0, or too small for a float scale) or NaN
    std::memset(q, 0, kQuantBlock);
    *correction = 0;
    return;
  }
  const __m512 dv = _mm512_set1_ps(d);
  const __m512i q_lo = QuantizeLanes(_mm512_loadu_ps(x), dv);
  const __m512i q_hi = QuantizeLanes(_mm512_loadu_ps(x + 16), dv);
  _mm_storeu_si128(reinterpret_cast<__m128i*>(q), _mm512_cvtepi32_epi8(q_lo));
  _mm_storeu_si128(reinterpret_cast<__m128i*>(q + 16), _mm512_cvtepi32_epi8(q_hi));
  *correction = -zero_point * ReduceSum(_mm512_add_epi32(q_lo, q_hi));
}

// Quantizes activation row m (K = nb * 32 floats at x) into its slots: quantize_block_q8_0
// (kernels/quant.cpp) bit for bit, vectorized (the scalar version divides element by element,
// which cost as much as the product at M = 512), 16 blocks' scales at a time so that the blocks'
// divisions overlap. A block with a non-finite element or a scale beyond f16 gets scale NaN
// (and zero q).
void QuantizeRow(const float* HWY_RESTRICT x, int64_t m, int64_t nb, int32_t zero_point,
                 QuantizedActivations& acts) {
  const int64_t tile = m / kRowTile, row = m % kRowTile;
  auto* q = reinterpret_cast<int8_t*>(acts.q.data());
  constexpr int kNonFinite = 0x01 | 0x08 | 0x10 | 0x80;  // fpclass: QNaN, +inf, -inf, SNaN
  for (int64_t b0 = 0; b0 < nb; b0 += 16) {
    const int64_t count = std::min<int64_t>(16, nb - b0);
    alignas(64) float amax[16] = {}, d[16];
    uint32_t failed = 0;
    for (int64_t i = 0; i < count; i++) {
      const __m512 lo = _mm512_loadu_ps(x + (b0 + i) * kQuantBlock);
      const __m512 hi = _mm512_loadu_ps(x + (b0 + i) * kQuantBlock + 16);
      if (_mm512_fpclass_ps_mask(lo, kNonFinite) | _mm512_fpclass_ps_mask(hi, kNonFinite))
        failed |= 1u << i;
      amax[i] = ReduceMax(_mm512_max_ps(_mm512_abs_ps(lo), _mm512_abs_ps(hi)));
    }
    _mm512_store_ps(d, BlockScales(_mm512_load_ps(amax)));
    for (int64_t i = 0; i < count; i++) {
      const bool ok = !((failed >> i) & 1) && std::isfinite(d[i]);
      const int64_t slot = (tile * nb + b0 + i) * kRowTile + row;
      QuantizeBlock(x + (b0 + i) * kQuantBlock, ok ? d[i] : std::numeric_limits<float>::quiet_NaN(),
                    q + slot * kQuantBlock, &acts.scale[slot], &acts.correction[slot], zero_point);
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Packing one panel of 16 weight rows.

// 16 rows x 8 dwords -> 8 vectors of 16 dwords: rows[i] holds row i in its low 256 bits and row
// i + 8 in its high 256 bits; vector j (dword j of rows 0..15) goes to dst + 64 j. The classic
// 8x8 transpose (unpack 32, unpack 64 within 128-bit lanes, then 128-bit lanes across), done on
// both 256-bit halves at once.
HWY_INLINE void TransposeStore(const __m512i (&rows)[8], uint8_t* HWY_RESTRICT dst) {
  __m512i pairs[8], quads[8];
  for (int i = 0; i < 4; i++) {
    pairs[2 * i] = _mm512_unpacklo_epi32(rows[2 * i], rows[2 * i + 1]);
    pairs[2 * i + 1] = _mm512_unpackhi_epi32(rows[2 * i], rows[2 * i + 1]);
  }
  // quads[c] (c < 4): dword c (lanes 0, 2) and c + 4 (lanes 1, 3) of rows 0..3 (+8);
  // quads[c + 4]: the same for rows 4..7 (+8).
  for (int h = 0; h < 2; h++) {
    const __m512i* p = pairs + 4 * h;
    quads[4 * h + 0] = _mm512_unpacklo_epi64(p[0], p[2]);
    quads[4 * h + 1] = _mm512_unpackhi_epi64(p[0], p[2]);
    quads[4 * h + 2] = _mm512_unpacklo_epi64(p[1], p[3]);
    quads[4 * h + 3] = _mm512_unpackhi_epi64(p[1], p[3]);
  }
  const __m512i low_lanes = _mm512_setr_epi64(0, 1, 8, 9, 4, 5, 12, 13);
  const __m512i high_lanes = _mm512_setr_epi64(2, 3, 10, 11, 6, 7, 14, 15);
  for (int c = 0; c < 4; c++) {
    _mm512_store_si512(dst + 64 * c, _mm512_permutex2var_epi64(quads[c], low_lanes, quads[c + 4]));
    _mm512_store_si512(dst + 64 * (c + 4),
                       _mm512_permutex2var_epi64(quads[c], high_lanes, quads[c + 4]));
  }
}

// The 32 weights of a block (quants at lo, hi: see row_quants) as unsigned bytes u = q + 128,
// rows lo and hi as 256-bit halves.
HWY_INLINE __m512i LoadRowPair(const BlockQ8_0*, const uint8_t* lo, const uint8_t* hi) {
  const __m256i a = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(lo));
  const __m256i b = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(hi));
  return _mm512_xor_si512(_mm512_inserti64x4(_mm512_castsi256_si512(a), b, 1),
                          _mm512_set1_epi8(static_cast<char>(0x80)));
}

// The 32 nibbles of a block as bytes 0..15 (elements 0..15 from the low nibbles, 16..31 from the
// high ones), rows lo and hi as 256-bit halves.
HWY_INLINE __m512i LoadRowPair(const BlockQ4_0*, const uint8_t* lo, const uint8_t* hi) {
  const __m128i a = _mm_loadu_si128(reinterpret_cast<const __m128i*>(lo));
  const __m128i b = _mm_loadu_si128(reinterpret_cast<const __m128i*>(hi));
  const __m512i ab = _mm512_castsi256_si512(_mm256_set_m128i(b, a));
  const __m512i packed = _mm512_shuffle_i64x2(ab, ab, 0x50);  // 128-bit lanes a, a, b, b
  // 128-bit lanes 1 and 3 (16-bit words 8..15, 24..31) take the high nibbles.
  const __m512i shifted = _mm512_mask_srli_epi16(packed, 0xFF00FF00u, packed, 4);
  return _mm512_and_si512(shifted, _mm512_set1_epi8(0x0F));
}

// PackPanel for a matrix in block panels (kernels/quant.h): its quant words are the packed
// vectors already (Q4_0: vector i < 4 the low nibbles of word run i, vector i + 4 its high ones);
// they become unsigned bytes, the f16 scales float.
template <class Block>
void PackBlockPanel(const QuantMatrix& w, int64_t panel, int64_t block_begin, int64_t block_end,
                    uint8_t* HWY_RESTRICT dst) {
  constexpr bool kQ8 = sizeof(Block::q) == kQuantBlock;
  constexpr WeightFormat kFormat = kQ8 ? WeightFormat::kQ8_0 : WeightFormat::kQ4_0;
  const uint8_t* src = w.panel(panel);
  const __m512i low_mask = _mm512_set1_epi8(0x0F);
  const __m512i to_unsigned = _mm512_set1_epi8(static_cast<char>(0x80));
  for (int64_t b = block_begin; b < block_end; b++) {
    uint8_t* out = dst + (b - block_begin) * kPanelBlockBytes;
    const uint8_t* q = src + block_panel_quants_at(kFormat, b);
    if constexpr (kQ8) {
      for (int i = 0; i < kGroups; i++)
        _mm512_store_si512(out + 64 * i,
                           _mm512_xor_si512(_mm512_load_si512(q + 64 * i), to_unsigned));
    } else {
      for (int i = 0; i < kGroups / 2; i++) {
        const __m512i packed = _mm512_load_si512(q + 64 * i);
        _mm512_store_si512(out + 64 * i, _mm512_and_si512(packed, low_mask));
        _mm512_store_si512(out + 64 * (i + kGroups / 2),
                           _mm512_and_si512(_mm512_srli_epi16(packed, 4), low_mask));
      }
    }
    _mm512_store_ps(out + kGroups * 64,
                    _mm512_cvtph_ps(_mm256_load_si256(reinterpret_cast<const __m256i*>(
                        src + block_panel_scales_at(kFormat, b)))));
  }
}

// Packs blocks [block_begin, block_end) of rows 16 p .. 16 p + 15 of w (rows past the end repeat
// the last row; their outputs are never stored) into dst: per block, kPanelBlockBytes (see the
// top of the file).
template <class Block>
void PackPanel(const QuantMatrix& w, int64_t panel, int64_t block_begin, int64_t block_end,
               uint8_t* HWY_RESTRICT dst) {
  if (w.panels) return PackBlockPanel<Block>(w, panel, block_begin, block_end, dst);
  const int64_t first = panel * kPanelRows, nb = w.cols / kQuantBlock;
  constexpr int64_t kQuantBytes = sizeof(Block::q);
  const uint8_t* quants[kPanelRows];
  alignas(64) int32_t offsets[kPanelRows];  // byte offsets of the rows from row `first`
  for (int64_t i = 0; i < kPanelRows; i++) {
    const int64_t r = std::min(first + i, w.rows - 1);
    quants[i] = row_quants(w.row(r), nb);
    offsets[i] = static_cast<int32_t>((r - first) * static_cast<int64_t>(w.row_bytes));
  }
  const __m512i scale_offsets = _mm512_load_si512(offsets);
  const auto* first_row = static_cast<const uint8_t*>(w.row(first));
  for (int64_t b = block_begin; b < block_end; b++) {
    uint8_t* out = dst + (b - block_begin) * kPanelBlockBytes;
    __m512i pairs[8];
    for (int i = 0; i < 8; i++)
      pairs[i] = LoadRowPair(static_cast<const Block*>(nullptr), quants[i] + b * kQuantBytes,
                             quants[i + 8] + b * kQuantBytes);
    TransposeStore(pairs, out);
    // The rows start with their f16 scales: gather the 16 dwords at scale b of each row, keep
    // the low halves (the last scale's dword reaches 2 bytes into the quants: still the row).
    const __m512i words =
        _mm512_i32gather_epi32(scale_offsets, first_row + b * sizeof(uint16_t), 1);
    _mm512_store_ps(out + kGroups * 64, _mm512_cvtph_ps(_mm512_cvtepi32_epi16(words)));
  }
}

// Prefetches into L2 blocks [b0, b0 + kKBlocks) of the rows of panels p0, p0 + 1 (< panel_end).
template <class Block>
void PrefetchRun(const QuantMatrix& w, int64_t p0, int64_t panel_end, int64_t b0) {
  const int64_t row_end = std::min(std::min(panel_end, p0 + kMaxPanels) * kPanelRows, w.rows);
  const int64_t nb = w.cols / kQuantBlock;
  constexpr int64_t kQuantBytes = sizeof(Block::q);
  if (w.panels) {  // block panels: the groups that hold the run, one stretch per panel
    constexpr WeightFormat kFormat =
        kQuantBytes == kQuantBlock ? WeightFormat::kQ8_0 : WeightFormat::kQ4_0;
    const int64_t b1 = std::min(nb, b0 + kKBlocks);
    const int64_t begin = block_panel_scales_at(kFormat, b0);
    const int64_t end = block_panel_quants_at(kFormat, b1 - 1) + block_panel_quant_bytes(kFormat);
    for (int64_t p = p0; p < std::min(panel_end, p0 + kMaxPanels); p++)
      for (int64_t offset = begin; offset < end; offset += 64)
        _mm_prefetch(reinterpret_cast<const char*>(w.panel(p)) + offset, _MM_HINT_T1);
    return;
  }
  const int64_t bytes = std::min(kKBlocks, nb - b0) * kQuantBytes;
  for (int64_t r = p0 * kPanelRows; r < row_end; r++) {
    // (the scales, at the row's start, are one or two cache lines: left to the hardware)
    const auto* start = reinterpret_cast<const char*>(row_quants(w.row(r), nb) + b0 * kQuantBytes);
    for (int64_t offset = 0; offset < bytes + 63; offset += 64)
      _mm_prefetch(start + std::min(offset, bytes - 1), _MM_HINT_T1);
  }
}

// ---------------------------------------------------------------------------------------------
// Micro-kernel: kRows activation rows (one tile) x kPanels panels (16 or 32 weight rows), a run
// of blocks. Per block, 8 weight vectors per panel are loaded once and used for all rows; each
// row's 4 activation bytes are broadcast once and used for all panels; per (row, panel) the
// block's int32 sum starts at the zero-point correction, takes 8 vpdpbusd, and is added to the
// float accumulator times scale_w * scale_x. With kRows = 6 and kPanels = 2: 12 int32 and 12
// float accumulators, 2 weight vectors, 2 scale vectors and the broadcast fit the 32 registers.
// On Zen 5 vpdpbusd and the float multiply / FMA share two ports, so 2 float ops per 8 vpdpbusd
// cap the kernel at 80% of the vpdpbusd peak; measured alone (L1-hot) it reaches ~96% of that
// (one panel x 12 rows: ~90%).

struct TileArgs {
  const uint8_t* panel;  // packed panels, panel_stride bytes apart
  int64_t panel_stride;
  const int8_t* q;                // the tile's first slot
  const float* scale;             // its scales
  const int32_t* correction;      // its corrections
  int64_t blocks;                 // how many blocks to add
  bool accumulate;                // add to out (a later run of blocks) rather than overwrite it
  float* out;                     // out[tile row 0, first panel's column 0]
  int64_t out_stride;             // N
  __mmask16 columns[kMaxPanels];  // each panel's columns inside N
};

template <int kRows, int kPanels>
void MicroKernel(const TileArgs& a) {
  __m512 acc[kRows][kPanels];
#pragma GCC unroll 16
  for (int m = 0; m < kRows; m++)
#pragma GCC unroll 2
    for (int p = 0; p < kPanels; p++)
      acc[m][p] = a.accumulate ? _mm512_maskz_loadu_ps(a.columns[p],
                                                       a.out + m * a.out_stride + p * kPanelRows)
                               : _mm512_setzero_ps();
  for (int64_t b = 0; b < a.blocks; b++) {
    const uint8_t* w = a.panel + b * kPanelBlockBytes;
    const int64_t slot = b * kRowTile;
    const int8_t* x = a.q + slot * kQuantBlock;
    __m512i sum[kRows][kPanels];
#pragma GCC unroll 16
    for (int m = 0; m < kRows; m++) {
      const __m512i correction = _mm512_set1_epi32(a.correction[slot + m]);
#pragma GCC unroll 2
      for (int p = 0; p < kPanels; p++) sum[m][p] = correction;
    }
#pragma GCC unroll 8
    for (int j = 0; j < kGroups; j++) {
      __m512i wv[kPanels];
#pragma GCC unroll 2
      for (int p = 0; p < kPanels; p++) wv[p] = _mm512_load_si512(w + p * a.panel_stride + 64 * j);
#pragma GCC unroll 16
      for (int m = 0; m < kRows; m++) {
        int32_t four_bytes;
        std::memcpy(&four_bytes, x + m * kQuantBlock + 4 * j, sizeof(four_bytes));
        const __m512i xv = _mm512_set1_epi32(four_bytes);
#pragma GCC unroll 2
        for (int p = 0; p < kPanels; p++) sum[m][p] = _mm512_dpbusd_epi32(sum[m][p], wv[p], xv);
      }
    }
    // The int32 sums are exact (|sum| <= 32 * 255 * 127 + 128 * 32 * 127) and so are their
    // float conversions (< 2^24 after the correction) and the product of two f16-valued scales.
    __m512 w_scale[kPanels];
#pragma GCC unroll 2
    for (int p = 0; p < kPanels; p++)
      w_scale[p] = _mm512_load_ps(w + p * a.panel_stride + kGroups * 64);
#pragma GCC unroll 16
    for (int m = 0; m < kRows; m++) {
      const __m512 x_scale = _mm512_set1_ps(a.scale[slot + m]);
#pragma GCC unroll 2
      for (int p = 0; p < kPanels; p++)
        acc[m][p] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(sum[m][p]),
                                    _mm512_mul_ps(w_scale[p], x_scale), acc[m][p]);
    }
  }
#pragma GCC unroll 16
  for (int m = 0; m < kRows; m++)
#pragma GCC unroll 2
    for (int p = 0; p < kPanels; p++)
      _mm512_mask_storeu_ps(a.out + m * a.out_stride + p * kPanelRows, a.columns[p], acc[m][p]);
}

using MicroKernelFn = void (*)(const TileArgs&);

template <int kPanels, size_t... kRowsMinus1>
constexpr std::array<MicroKernelFn, sizeof...(kRowsMinus1)> MakeMicroKernels(
    std::index_sequence<kRowsMinus1...>) {
  return {&MicroKernel<static_cast<int>(kRowsMinus1) + 1, kPanels>...};
}

// kMicroKernels[panels - 1][rows - 1] handles a tile of `rows` rows against `panels` panels.
constexpr std::array<std::array<MicroKernelFn, kRowTile>, kMaxPanels> kMicroKernels = {
    MakeMicroKernels<1>(std::make_index_sequence<kRowTile>()),
    MakeMicroKernels<2>(std::make_index_sequence<kRowTile>())};

// ---------------------------------------------------------------------------------------------
// Driver.

// The packed panel of the calling thread, grown once to the largest size seen.
uint8_t* PanelBuffer(int64_t bytes) {
  thread_local AlignedBytes buffer;
  if (buffer.size() < static_cast<size_t>(bytes)) buffer.resize(static_cast<size_t>(bytes));
  return buffer.data();
}

// Panels [panel_begin, panel_end) x tiles [tile_begin, tile_end), two panels at a time, in runs
// of kKBlocks blocks: each pair of panels' run stays in L2 while the tiles pass, and the float
// sums go through out, in the same order as without runs. When the activations fit in L2 the
// panels go outermost, so that each weight row is read in one sweep; otherwise the runs do
// (BLIS's order), so that the activations' run for all tiles stays in L2 while the panels pass.
template <class Block>
void RunRange(const QuantMatrix& w, const QuantizedActivations& acts, int64_t M, float* out,
              int64_t panel_begin, int64_t panel_end, int64_t tile_begin, int64_t tile_end) {
  const int64_t N = w.rows, nb = w.cols / kQuantBlock;
  constexpr int64_t kPanelStride = kKBlocks * kPanelBlockBytes;
  uint8_t* panels = PanelBuffer(kMaxPanels * kPanelStride);
  const auto* q = reinterpret_cast<const int8_t*>(acts.q.data());
  auto run = [&](int64_t p0, int64_t b0) {
    const int64_t count = std::min<int64_t>(kMaxPanels, panel_end - p0);
    const int64_t blocks = std::min(kKBlocks, nb - b0);
    TileArgs args{panels, kPanelStride, nullptr, nullptr, nullptr, blocks, b0 > 0, nullptr, N, {}};
    for (int64_t i = 0; i < count; i++) {
      PackPanel<Block>(w, p0 + i, b0, b0 + blocks, panels + i * kPanelStride);
      const int64_t columns = std::min(kPanelRows, N - (p0 + i) * kPanelRows);
      args.columns[i] = static_cast<__mmask16>((1u << columns) - 1);
    }
    for (int64_t t = tile_begin; t < tile_end; t++) {
      const int64_t rows = std::min(kRowTile, M - t * kRowTile);
      const int64_t slot = (t * nb + b0) * kRowTile;
      args.q = q + slot * kQuantBlock;
      args.scale = acts.scale.data() + slot;
      args.correction = acts.correction.data() + slot;
      args.out = out + t * kRowTile * N + p0 * kPanelRows;
      kMicroKernels[count - 1][rows - 1](args);
    }
  };
  const int64_t runs = (nb + kKBlocks - 1) / kKBlocks;
  const int64_t pairs = (panel_end - panel_begin + kMaxPanels - 1) / kMaxPanels;
  const bool panels_outer = (tile_end - tile_begin) * kRowTile * w.cols <= kActivationsInL2;
  auto panel_of = [&](int64_t i) {
    return panel_begin + (panels_outer ? i / runs : i % pairs) * kMaxPanels;
  };
  auto block_of = [&](int64_t i) { return (panels_outer ? i % runs : i / pairs) * kKBlocks; };
  for (int64_t i = 0; i < runs * pairs; i++) {
    // The weight rows of the next run are read from L3 or memory, 32 short pieces: ask for them
    // now, while the tiles of this one run.
    if (i + 1 < runs * pairs) PrefetchRun<Block>(w, panel_of(i + 1), panel_end, block_of(i + 1));
    run(panel_of(i), block_of(i));
  }
}

template <class Block>
void GemmBlocks(float* out, const float* x, int64_t M, const QuantMatrix& w, int32_t zero_point) {
  const int64_t N = w.rows, K = w.cols, nb = K / kQuantBlock;
  const int64_t panels = (N + kPanelRows - 1) / kPanelRows;
  const int64_t tiles = (M + kRowTile - 1) / kRowTile;
  thread_local QuantizedActivations caller_acts;  // the calling thread's; shared with the team
  QuantizedActivations& acts = caller_acts;
  acts.reserve_slots(tiles * nb * kRowTile);
#pragma omp parallel if (M * N * K >= kMinParallelWork)
  {
#pragma omp for schedule(static)
    for (int64_t m = 0; m < M; m++) QuantizeRow(x + m * K, m, nb, zero_point, acts);
    // (the implicit barrier of the loop: all rows are quantized before any tile runs)
    // A grid of threads: panel groups first, tile groups only when panels run short.
    const int64_t threads = omp_get_num_threads(), thread = omp_get_thread_num();
    const int64_t panel_groups = std::min(threads, panels);
    const int64_t tile_groups = std::min(threads / panel_groups, tiles);
    if (thread < panel_groups * tile_groups) {
      const int64_t pg = thread % panel_groups, tg = thread / panel_groups;
      RunRange<Block>(w, acts, M, out, panels * pg / panel_groups, panels * (pg + 1) / panel_groups,
                      tiles * tg / tile_groups, tiles * (tg + 1) / tile_groups);
    }
  }
}

bool GemmQuantVNNI(float* out, const float* x, int64_t M, const QuantMatrix& w) {
  if (w.format == WeightFormat::kQ8_0)
    GemmBlocks<BlockQ8_0>(out, x, M, w, 128);
  else
    GemmBlocks<BlockQ4_0>(out, x, M, w, 8);
  return true;
}

#else  // HWY_TARGET != HWY_AVX3_DL

bool GemmQuantVNNI(float*, const float*, int64_t, const QuantMatrix&) { return false; }

#endif  // HWY_TARGET == HWY_AVX3_DL

bool NativeTarget() { return HWY_TARGET == HWY_AVX3_DL; }

}  // namespace HWY_NAMESPACE
}  // namespace dsmoe::cpu
#if HWY_TARGET == HWY_AVX3_DL
HWY_POP_ATTRIBUTES
#endif
HWY_AFTER_NAMESPACE();

#if HWY_ONCE
namespace dsmoe::cpu {

HWY_EXPORT(GemmQuantVNNI);
HWY_EXPORT(NativeTarget);
namespace {
// DSMOE_MAX_ISA holds before the first dispatch (kernels/cpu/isa_dispatch.h).
[[maybe_unused]] const int64_t kIsaCapApplied = apply_isa_cap();
}  // namespace

bool gemm_quant_native() { return HWY_DYNAMIC_DISPATCH(NativeTarget)(); }

void gemm_quant(float* out, const float* x, int64_t M, const QuantMatrix& w) {
  if (M <= 0 || w.rows <= 0) return;
  if (!HWY_DYNAMIC_DISPATCH(GemmQuantVNNI)(out, x, M, w)) quant_linear_forward_rows(out, x, w, M);
}

}  // namespace dsmoe::cpu
#endif  // HWY_ONCE
