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
// Weights in rows are packed per call (each thread its own panels, two at a time and a run of
// blocks at a time, into a thread-local buffer); weights in block panels (kernels/quant.h, the
// same vectors as signed bytes or nibble pairs) are read in place and made unsigned in
// registers. The threads claim chunks of panels (and of activation rows where the panels run
// short) of one product or of a group of them (gemm_quant_group); every output element is
// computed by the same instructions whichever thread runs it.

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
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <string>
#include <utility>
#include <vector>

#include "kernels/cpu/isa_dispatch.h"
#include "kernels/cpu/quant_ops.h"
#include "kernels/quant.h"
#include "util/check.h"

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
// The scales of the `count` (<= 16) blocks at x: d[i], NaN where block i cannot be quantized.
HWY_INLINE void ScalesOf16Blocks(const float* HWY_RESTRICT x, int64_t count, float* d) {
  constexpr int kNonFinite = 0x01 | 0x08 | 0x10 | 0x80;  // fpclass: QNaN, +inf, -inf, SNaN
  alignas(64) float amax[16] = {};
  uint32_t failed = 0;
  for (int64_t i = 0; i < count; i++) {
    const __m512 lo = _mm512_loadu_ps(x + i * kQuantBlock);
    const __m512 hi = _mm512_loadu_ps(x + i * kQuantBlock + 16);
    if (_mm512_fpclass_ps_mask(lo, kNonFinite) | _mm512_fpclass_ps_mask(hi, kNonFinite))
      failed |= 1u << i;
    amax[i] = ReduceMax(_mm512_max_ps(_mm512_abs_ps(lo), _mm512_abs_ps(hi)));
  }
  _mm512_storeu_ps(d, BlockScales(_mm512_load_ps(amax)));
  for (int64_t i = 0; i < count; i++)
    if (((failed >> i) & 1) || !std::isfinite(d[i])) d[i] = std::numeric_limits<float>::quiet_NaN();
}

void QuantizeRow(const float* HWY_RESTRICT x, int64_t m, int64_t nb, int32_t zero_point,
                 QuantizedActivations& acts) {
  const int64_t tile = m / kRowTile, row = m % kRowTile;
  auto* q = reinterpret_cast<int8_t*>(acts.q.data());
  for (int64_t b0 = 0; b0 < nb; b0 += 16) {
    const int64_t count = std::min<int64_t>(16, nb - b0);
    float d[16];
    ScalesOf16Blocks(x + b0 * kQuantBlock, count, d);
    for (int64_t i = 0; i < count; i++) {
      const int64_t slot = (tile * nb + b0 + i) * kRowTile + row;
      QuantizeBlock(x + (b0 + i) * kQuantBlock, d[i], q + slot * kQuantBlock, &acts.scale[slot],
                    &acts.correction[slot], zero_point);
    }
  }
}

// quantize_block_q8_0 (kernels/quant.h) for the nb blocks at x, bit for bit, as QuantizeRow does
// it: blocks into y, their scales as float into scale (NaN where a block failed: y zero). Decode
// rounds every product's activations with it (the block-by-block version took 3% of a token).
bool QuantizeBlocksQ8_0VNNI(const float* HWY_RESTRICT x, int64_t nb, BlockQ8_0* HWY_RESTRICT y,
                            float* HWY_RESTRICT scale) {
  for (int64_t b0 = 0; b0 < nb; b0 += 16) {
    const int64_t count = std::min<int64_t>(16, nb - b0);
    float d[16];
    ScalesOf16Blocks(x + b0 * kQuantBlock, count, d);
    for (int64_t i = 0; i < count; i++) {
      BlockQ8_0& block = y[b0 + i];
      int32_t correction = 0;
      QuantizeBlock(x + (b0 + i) * kQuantBlock, d[i], block.q, &scale[b0 + i], &correction, 0);
      block.scale_f16 = std::isnan(d[i]) ? 0 : _cvtss_sh(d[i], _MM_FROUND_TO_NEAREST_INT);
    }
  }
  return true;
}

#include "kernels/cpu/gemm_quant_pack-inl.h"

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

// Where a micro-kernel reads the weights: panels packed per call (PackPanel), or a matrix's
// block panels in place (kernels/quant.h), converted in registers as PackBlockPanel would (Q8_0:
// + 128; Q4_0: a stored vector's low nibbles are vector i, its high ones vector i + 4; the f16
// scales to float). In place saves the packing pass, which cost ~10% of a Q4_0 prefill on Zen 5.
enum class WeightSource { kPacked, kPanelsQ8, kPanelsQ4 };

struct TileArgs {
  const uint8_t* panel;           // packed panels, or the first panel of w (in place)
  int64_t panel_stride;           // bytes from a panel to the next
  int64_t first_block;            // in place: the run's first block
  const int8_t* q;                // the tile's first slot
  const float* scale;             // its scales
  const int32_t* correction;      // its corrections
  int64_t blocks;                 // how many blocks to add
  bool accumulate;                // add to out (a later run of blocks) rather than overwrite it
  float* out;                     // out[tile row 0, first panel's column 0]
  int64_t out_stride;             // N
  __mmask16 columns[kMaxPanels];  // each panel's columns inside N
};

// Weight vector j (bytes 4j .. 4j + 3 of the 16 rows, unsigned) of a block whose quants are at q.
template <WeightSource kSource>
HWY_INLINE __m512i WeightVector(const uint8_t* HWY_RESTRICT q, int j) {
  if constexpr (kSource == WeightSource::kPacked) return _mm512_load_si512(q + 64 * j);
  if constexpr (kSource == WeightSource::kPanelsQ8)
    return _mm512_xor_si512(_mm512_load_si512(q + 64 * j),
                            _mm512_set1_epi8(static_cast<char>(0x80)));
  const __m512i packed = _mm512_load_si512(q + 64 * (j % (kGroups / 2)));
  return _mm512_and_si512(j < kGroups / 2 ? packed : _mm512_srli_epi16(packed, 4),
                          _mm512_set1_epi8(0x0F));
}

// The 16 weight scales of block b (the run's b-th) of the panel at `panel`, and its quants.
template <WeightSource kSource>
HWY_INLINE const uint8_t* BlockQuants(const TileArgs& a, const uint8_t* panel, int64_t b) {
  if constexpr (kSource == WeightSource::kPacked) return panel + b * kPanelBlockBytes;
  constexpr WeightFormat kFormat =
      kSource == WeightSource::kPanelsQ8 ? WeightFormat::kQ8_0 : WeightFormat::kQ4_0;
  return panel + block_panel_quants_at(kFormat, a.first_block + b);
}
template <WeightSource kSource>
HWY_INLINE __m512 BlockScalesOf(const TileArgs& a, const uint8_t* panel, int64_t b) {
  if constexpr (kSource == WeightSource::kPacked)
    return _mm512_load_ps(panel + b * kPanelBlockBytes + kGroups * 64);
  constexpr WeightFormat kFormat =
      kSource == WeightSource::kPanelsQ8 ? WeightFormat::kQ8_0 : WeightFormat::kQ4_0;
  return _mm512_cvtph_ps(_mm256_load_si256(
      reinterpret_cast<const __m256i*>(panel + block_panel_scales_at(kFormat, a.first_block + b))));
}

template <int kRows, int kPanels, WeightSource kSource>
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
    const uint8_t* w = BlockQuants<kSource>(a, a.panel, b);
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
      for (int p = 0; p < kPanels; p++) wv[p] = WeightVector<kSource>(w + p * a.panel_stride, j);
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
      w_scale[p] = BlockScalesOf<kSource>(a, a.panel + p * a.panel_stride, b);
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
using MicroKernelTable = std::array<std::array<MicroKernelFn, kRowTile>, kMaxPanels>;

template <int kPanels, WeightSource kSource, size_t... kRowsMinus1>
constexpr std::array<MicroKernelFn, sizeof...(kRowsMinus1)> MakeMicroKernels(
    std::index_sequence<kRowsMinus1...>) {
  return {&MicroKernel<static_cast<int>(kRowsMinus1) + 1, kPanels, kSource>...};
}

// MicroKernels<source>()[panels - 1][rows - 1] handles a tile of `rows` rows against `panels`
// panels.
template <WeightSource kSource>
constexpr MicroKernelTable MicroKernels() {
  return {MakeMicroKernels<1, kSource>(std::make_index_sequence<kRowTile>()),
          MakeMicroKernels<2, kSource>(std::make_index_sequence<kRowTile>())};
}

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
// Whether the GEMM reads block panels in place (default) or packs them per call as it packs
// rows (DSMOE_GEMM_PACK_PANELS=1: the comparison's baseline).
bool PanelsInPlace() {
  static const bool in_place = [] {
    const char* v = std::getenv("DSMOE_GEMM_PACK_PANELS");
    return v == nullptr || std::string(v) != "1";
  }();
  return in_place;
}

template <class Block>
void RunRange(const QuantMatrix& w, const QuantizedActivations& acts, int64_t M, float* out,
              int64_t panel_begin, int64_t panel_end, int64_t tile_begin, int64_t tile_end) {
  const int64_t N = w.rows, nb = w.cols / kQuantBlock;
  constexpr bool kQ8 = sizeof(Block::q) == kQuantBlock;
  constexpr int64_t kPanelStride = kKBlocks * kPanelBlockBytes;
  static constexpr MicroKernelTable kPacked = MicroKernels<WeightSource::kPacked>();
  static constexpr MicroKernelTable kInPlace =
      MicroKernels < kQ8 ? WeightSource::kPanelsQ8 : WeightSource::kPanelsQ4 > ();
  const bool in_place = w.panels && PanelsInPlace();
  const MicroKernelTable& kernels = in_place ? kInPlace : kPacked;
  uint8_t* panels = in_place ? nullptr : PanelBuffer(kMaxPanels * kPanelStride);
  const auto* q = reinterpret_cast<const int8_t*>(acts.q.data());
  auto run = [&](int64_t p0, int64_t b0) {
    const int64_t count = std::min<int64_t>(kMaxPanels, panel_end - p0);
    const int64_t blocks = std::min(kKBlocks, nb - b0);
    TileArgs args{panels, kPanelStride, 0,       nullptr, nullptr, nullptr,
                  blocks, b0 > 0,       nullptr, N,       {}};
    if (in_place) {
      args.panel = w.panel(p0);
      args.panel_stride = block_panel_bytes(w.format, w.cols);
      args.first_block = b0;
    }
    for (int64_t i = 0; i < count; i++) {
      if (!in_place) PackPanel<Block>(w, p0 + i, b0, b0 + blocks, panels + i * kPanelStride);
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
      kernels[count - 1][rows - 1](args);
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

// A group of products (gemm_quant_group): the jobs' rows quantized once per distinct input, then
// chunks of (job, panels, tiles) claimed by the threads as they come, all in one parallel region
// (prefill's MoE layer: the gate and up products of every expert, then their down products, each
// group waking the threads once instead of once per product). Each output element is computed by
// the same instructions whatever the chunks and the thread count.
struct GemmChunk {
  int64_t job, panel_begin, panel_end, tile_begin, tile_end;
};

int32_t ZeroPoint(const QuantMatrix& w) { return w.format == WeightFormat::kQ8_0 ? 128 : 8; }

// Chunks per thread for the whole group: enough for the threads to even out at the end.
constexpr int64_t kChunksPerThread = 8;

// The chunks of the group, in job order: each job's panels (pairs kept whole) cut so that a
// chunk costs about `target` multiply-adds, its tiles too where the panels run short.
void MakeChunks(const QuantJob* jobs, int64_t n_jobs, int64_t target,
                std::vector<GemmChunk>& chunks) {
  chunks.clear();
  for (int64_t j = 0; j < n_jobs; j++) {
    const QuantJob& job = jobs[j];
    if (job.M <= 0 || job.w->rows <= 0) continue;
    const int64_t panels = (job.w->rows + kPanelRows - 1) / kPanelRows;
    const int64_t tiles = (job.M + kRowTile - 1) / kRowTile;
    const int64_t cost = job.M * job.w->rows * job.w->cols;
    const int64_t wanted = std::max<int64_t>(1, (cost + target - 1) / target);
    const int64_t pairs = (panels + kMaxPanels - 1) / kMaxPanels;
    const int64_t panel_parts = std::min(pairs, wanted);
    const int64_t tile_parts = std::min(tiles, (wanted + panel_parts - 1) / panel_parts);
    for (int64_t pp = 0; pp < panel_parts; pp++)
      for (int64_t tp = 0; tp < tile_parts; tp++)
        chunks.push_back({j, std::min(panels, pairs * pp / panel_parts * kMaxPanels),
                          std::min(panels, pairs * (pp + 1) / panel_parts * kMaxPanels),
                          tiles * tp / tile_parts, tiles * (tp + 1) / tile_parts});
  }
}

bool GemmQuantGroupVNNI(const QuantJob* jobs, int64_t n_jobs) {
  // The calling thread's, shared with the team through the references (grown only).
  thread_local std::vector<QuantizedActivations> caller_sets;
  thread_local std::vector<int64_t> caller_set_of, caller_set_job, caller_row_begin;
  thread_local std::vector<GemmChunk> caller_chunks;
  std::vector<QuantizedActivations>& sets = caller_sets;
  std::vector<int64_t>& set_of = caller_set_of;        // per job: its activations
  std::vector<int64_t>& set_job = caller_set_job;      // per set: the first job that reads it
  std::vector<int64_t>& row_begin = caller_row_begin;  // per set: its first row of all sets'
  std::vector<GemmChunk>& chunks = caller_chunks;
  set_of.assign(static_cast<size_t>(n_jobs), -1);
  set_job.clear();
  row_begin.assign(1, 0);
  int64_t work = 0;
  for (int64_t j = 0; j < n_jobs; j++) {
    const QuantJob& job = jobs[j];
    if (job.M <= 0 || job.w->rows <= 0) continue;
    work += job.M * job.w->rows * job.w->cols;
    for (int64_t i = 0; i < j && set_of[j] < 0; i++)
      if (set_of[i] >= 0 && jobs[i].inp == job.inp && jobs[i].M == job.M &&
          jobs[i].w->cols == job.w->cols && ZeroPoint(*jobs[i].w) == ZeroPoint(*job.w))
        set_of[j] = set_of[i];
    if (set_of[j] >= 0) continue;
    set_of[j] = static_cast<int64_t>(set_job.size());
    set_job.push_back(j);
    row_begin.push_back(row_begin.back() + job.M);
    if (sets.size() < set_job.size()) sets.resize(set_job.size());
    const int64_t tiles = (job.M + kRowTile - 1) / kRowTile;
    sets[set_of[j]].reserve_slots(tiles * (job.w->cols / kQuantBlock) * kRowTile);
  }
  const int64_t n_sets = static_cast<int64_t>(set_job.size()), n_rows = row_begin.back();
  const int64_t n_threads = omp_get_max_threads();
  MakeChunks(jobs, n_jobs, std::max<int64_t>(1, work / (n_threads * kChunksPerThread)), chunks);
  const auto n_chunks = static_cast<int64_t>(chunks.size());
  std::atomic<int64_t> next_chunk{0};
#pragma omp parallel if (work >= kMinParallelWork)
  {
#pragma omp for schedule(static)
    for (int64_t r = 0; r < n_rows; r++) {
      const int64_t s = std::upper_bound(row_begin.begin(), row_begin.begin() + n_sets, r) -
                        row_begin.begin() - 1;
      const QuantJob& job = jobs[set_job[s]];
      const int64_t m = r - row_begin[s], K = job.w->cols;
      QuantizeRow(job.inp + m * K, m, K / kQuantBlock, ZeroPoint(*job.w), sets[s]);
    }
    // (the implicit barrier of the loop: all rows are quantized before any chunk runs)
    for (int64_t c = next_chunk.fetch_add(1); c < n_chunks; c = next_chunk.fetch_add(1)) {
      const GemmChunk& chunk = chunks[c];
      const QuantJob& job = jobs[chunk.job];
      const QuantizedActivations& acts = sets[set_of[chunk.job]];
      if (job.w->format == WeightFormat::kQ8_0)
        RunRange<BlockQ8_0>(*job.w, acts, job.M, job.out, chunk.panel_begin, chunk.panel_end,
                            chunk.tile_begin, chunk.tile_end);
      else
        RunRange<BlockQ4_0>(*job.w, acts, job.M, job.out, chunk.panel_begin, chunk.panel_end,
                            chunk.tile_begin, chunk.tile_end);
    }
  }
  return true;
}

#else  // HWY_TARGET != HWY_AVX3_DL

bool GemmQuantGroupVNNI(const QuantJob*, int64_t) { return false; }
bool QuantizeBlocksQ8_0VNNI(const float*, int64_t, BlockQ8_0*, float*) { return false; }

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

HWY_EXPORT(GemmQuantGroupVNNI);
HWY_EXPORT(QuantizeBlocksQ8_0VNNI);
HWY_EXPORT(NativeTarget);
namespace {
// DSMOE_MAX_ISA holds before the first dispatch (kernels/cpu/isa_dispatch.h).
[[maybe_unused]] const int64_t kIsaCapApplied = apply_isa_cap();
}  // namespace

bool gemm_quant_native() { return HWY_DYNAMIC_DISPATCH(NativeTarget)(); }

bool quantize_blocks_q8_0_native(const float* x, int64_t nb, BlockQ8_0* y, float* scale) {
  return HWY_DYNAMIC_DISPATCH(QuantizeBlocksQ8_0VNNI)(x, nb, y, scale);
}

void gemm_quant(float* out, const float* x, int64_t M, const QuantMatrix& w) {
  const QuantJob job{out, x, &w, M};
  gemm_quant_group(&job, 1);
}

void gemm_quant_group(const QuantJob* jobs, int64_t n_jobs) {
  for (int64_t j = 0; j < n_jobs; j++)
    DSMOE_ASSERT(jobs[j].w->format == WeightFormat::kQ8_0 ||
                 jobs[j].w->format == WeightFormat::kQ4_0);
  if (HWY_DYNAMIC_DISPATCH(GemmQuantGroupVNNI)(jobs, n_jobs)) return;
  for (int64_t j = 0; j < n_jobs; j++)
    quant_linear_forward_rows(jobs[j].out, jobs[j].inp, *jobs[j].w, jobs[j].M);
}

}  // namespace dsmoe::cpu
#endif  // HWY_ONCE
