// gemm_bf16.cpp (cpu): bf16 x bf16 -> float32 GEMM: vdpbf16ps micro-kernels on AVX512-BF16
// CPUs, a portable loop with the same arithmetic elsewhere (see gemm_bf16.h for the contract).
// Compiled for every x86 target through hwy/foreach_target.h like quant_ops.cpp; only the
// AVX3_DL copy has the fast path, behind a run-time check for AVX512-BF16 (Ice Lake is AVX3_DL
// too but lacks it). The fast path is the BLIS structure:
//  * op(A) is packed once per call into row blocks of kBlockRows rows: per k pair, kAStride
//    32-bit words (bf16 k in the low half, k + 1 in the high half; the last two zero),
//    broadcast by the kernel.
//  * op(B) is packed per K block and chunk of groups (a group: kGroupPanels panels of 16
//    columns) by the thread that uses it: per k pair, one 64-byte vector per panel, 16 columns
//    x (k, k + 1).
//  * The micro-kernel keeps a kBlockRows x (16 * kGroupPanels) tile of float sums in zmm
//    registers and adds one K block into C.
// Threads split the N groups (or the row blocks, when N is narrow), never K.

// Highway 1.0.3 leaves AVX3_DL out of the dispatch set unless asked for.
#ifndef HWY_WANT_AVX3_DL
#define HWY_WANT_AVX3_DL
#endif
#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "kernels/cpu/gemm_bf16.cpp"
#include "kernels/cpu/gemm_bf16.h"

#include <omp.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cfloat>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <memory>
#include <vector>

#include "hwy/foreach_target.h"  // IWYU pragma: keep
#include "hwy/highway.h"
#include "kernels/cpu/isa_dispatch.h"
#include "kernels/quant.h"
#include "tensor/dtype.h"
#include "util/cpu_cap.h"

// Definitions shared by all targets (this file is compiled once per target).
#ifndef DSMOE_KERNELS_CPU_GEMM_BF16_SHARED_
#define DSMOE_KERNELS_CPU_GEMM_BF16_SHARED_
namespace dsmoe::cpu::gemm_bf16_detail {

// K is summed in blocks of kBlockK (even, so that a k pair never straddles two blocks): the
// packed B block of one panel group then stays in L1/L2 while every row block uses it. The
// portable path sums in the same blocks, so both give the same rounding.
constexpr int64_t kBlockK = 256;
// Enough multiply-adds to be worth waking the OpenMP team.
constexpr int64_t kMinParallelWork = int64_t{1} << 18;

// One product, as the public functions describe it. B is float32 (gemm_bf16), bf16 rows [N, K]
// (gemm_bf16_weights: b_bf16 set, trans_b) or bf16 panels (gemm_bf16_panels: b_panels set).
struct GemmArgs {
  bool trans_a, trans_b;
  int64_t M, N, K;
  float alpha, beta;
  const float* A;
  int64_t lda;
  const float* B;
  const uint16_t* b_bf16;
  const uint32_t* b_panels;
  int64_t ldb;
  float* C;
  int64_t ldc;
};

// A 64-byte aligned buffer of 32-bit words, grown on demand and kept between calls.
class AlignedWords {
 public:
  uint32_t* reserve(size_t words) {
    if (words > capacity_) {
      const size_t bytes = (words * sizeof(uint32_t) + 63) / 64 * 64;
      data_.reset(static_cast<uint32_t*>(std::aligned_alloc(64, bytes)));
      capacity_ = bytes / sizeof(uint32_t);
    }
    return data_.get();
  }

 private:
  struct Free {
    void operator()(uint32_t* p) const { std::free(p); }
  };
  std::unique_ptr<uint32_t[], Free> data_;
  size_t capacity_ = 0;
};

}  // namespace dsmoe::cpu::gemm_bf16_detail
#endif  // DSMOE_KERNELS_CPU_GEMM_BF16_SHARED_

HWY_BEFORE_NAMESPACE();
namespace dsmoe::cpu {
namespace HWY_NAMESPACE {
namespace detail = gemm_bf16_detail;

#if HWY_TARGET == HWY_AVX3_DL
// Functions using AVX512-BF16 instructions; everything they inline must carry it too.
#define DSMOE_BF16 __attribute__((target("avx512bf16")))

constexpr int kLanes = 16;       // float32 lanes per zmm = columns per B panel
constexpr int kBlockRows = 6;    // rows of a micro-tile (Mr)
constexpr int kAStride = 8;      // words per k pair of a packed row block (rows, then zeros)
constexpr int kGroupPanels = 4;  // panels of a micro-tile (Np): 6 x 4 = 24 zmm sums
constexpr int kGroupCols = kLanes * kGroupPanels;
// Groups packed together: each row of a [K, N] B is then read in runs of kChunkGroups * 256
// bytes, and the chunk (256 KiB for kBlockK = 256) stays in L2 while it is used.
constexpr int64_t kChunkGroups = 8;
// Weights stored in the panel layout (kernels/quant.h) are what PackBFromRowsN makes of them.
static_assert(kGroupCols == kPanelGroupRows && kLanes == kPanelLanes);

bool CpuHasAvx512Bf16() {
  static const bool has = cpu_allows_avx512_bf16();
  return has;
}

HWY_INLINE __mmask16 LaneMask(int64_t n) {
  return n >= kLanes ? __mmask16(0xFFFF)
                     : static_cast<__mmask16>((1u << std::max<int64_t>(n, 0)) - 1);
}

// Panels in the group starting at column n0 (fewer than kGroupPanels at the right edge).
HWY_INLINE int GroupPanels(int64_t N, int64_t n0) {
  return static_cast<int>(std::min<int64_t>(kGroupPanels, (N - n0 + kLanes - 1) / kLanes));
}

// 32 floats (lo: 0..15, hi: 16..31) -> 32 bf16 in order (nearest even), i.e. 16 pair words.
DSMOE_BF16 HWY_INLINE __m512i ToBf16(__m512 lo, __m512 hi) {
  return (__m512i)_mm512_cvtne2ps_pbh(hi, lo);
}

// Two rows of 16 floats (k and k + 1) -> 16 words (bf16(k[i]) | bf16(k1[i]) << 16).
DSMOE_BF16 HWY_INLINE __m512i InterleavePair(__m512 row_k, __m512 row_k1) {
  alignas(64) static constexpr uint16_t kIndex[32] = {0,  16, 1,  17, 2,  18, 3,  19, 4,  20, 5,
                                                      21, 6,  22, 7,  23, 8,  24, 9,  25, 10, 26,
                                                      11, 27, 12, 28, 13, 29, 14, 30, 15, 31};
  return _mm512_permutexvar_epi16(_mm512_load_si512(kIndex), ToBf16(row_k, row_k1));
}

// 32 consecutive k of one row (those before k_len; zeros after) as 16 pair words.
DSMOE_BF16 HWY_INLINE __m512i LoadPairRow(const float* p, int64_t k_len) {
  const __m512 lo = _mm512_maskz_loadu_ps(LaneMask(k_len), p);
  const __m512 hi = k_len > kLanes ? _mm512_maskz_loadu_ps(LaneMask(k_len - kLanes), p + kLanes)
                                   : _mm512_setzero_ps();
  return ToBf16(lo, hi);
}
DSMOE_BF16 HWY_INLINE __m512i LoadPairRow(const uint16_t* p, int64_t k_len) {
  const __mmask32 mask = k_len >= 32 ? ~__mmask32{0} : (__mmask32{1} << k_len) - 1;
  return _mm512_maskz_loadu_epi16(mask, p);
}

// rows[i] word j -> rows[j] word i, for 16 x 16 32-bit words (unpack 32, unpack 64, then two
// rounds of 128-bit lane shuffles).
HWY_INLINE void Transpose16x16(__m512i rows[16]) {
  __m512i t[16], u[16], v[16];
  for (int i = 0; i < 16; i += 2) {
    t[i] = _mm512_unpacklo_epi32(rows[i], rows[i + 1]);
    t[i + 1] = _mm512_unpackhi_epi32(rows[i], rows[i + 1]);
  }
  for (int q = 0; q < 16; q += 4) {  // u[q + c], lane L: column 4L + c of rows q..q+3
    u[q] = _mm512_unpacklo_epi64(t[q], t[q + 2]);
    u[q + 1] = _mm512_unpackhi_epi64(t[q], t[q + 2]);
    u[q + 2] = _mm512_unpacklo_epi64(t[q + 1], t[q + 3]);
    u[q + 3] = _mm512_unpackhi_epi64(t[q + 1], t[q + 3]);
  }
  for (int c = 0; c < 4; c++) {
    v[c] = _mm512_shuffle_i32x4(u[c], u[4 + c], 0x88);
    v[4 + c] = _mm512_shuffle_i32x4(u[c], u[4 + c], 0xDD);
    v[8 + c] = _mm512_shuffle_i32x4(u[8 + c], u[12 + c], 0x88);
    v[12 + c] = _mm512_shuffle_i32x4(u[8 + c], u[12 + c], 0xDD);
  }
  for (int c = 0; c < 4; c++) {
    rows[c] = _mm512_shuffle_i32x4(v[c], v[8 + c], 0x88);
    rows[8 + c] = _mm512_shuffle_i32x4(v[c], v[8 + c], 0xDD);
    rows[4 + c] = _mm512_shuffle_i32x4(v[4 + c], v[12 + c], 0x88);
    rows[12 + c] = _mm512_shuffle_i32x4(v[4 + c], v[12 + c], 0xDD);
  }
}

// ---------------------------------------------------------------------------------------------
// Packing B: columns [n0, n0 + 16 * panels) and k in [k0, k0 + kc) into
// dst[kp][panel][16 words]; columns past N and k past K are zeros.

// B stored [K, N] (row k holds every column): two rows of 16 columns make one vector. Packs
// n_groups consecutive groups (group g at dst + g * group_stride) k pair by k pair, so that each
// row of B is read as one run across all of them.
DSMOE_BF16 void PackBFromRowsK(const float* B, int64_t ldb, int64_t N, int64_t K, int64_t n0,
                               int64_t n_groups, int64_t k0, int64_t kc, int64_t group_stride,
                               uint32_t* dst) {
  for (int64_t kp = 0; kp < (kc + 1) / 2; kp++) {
    const int64_t k = k0 + 2 * kp;
    const float* row_k = B + k * ldb;
    for (int64_t g = 0; g < n_groups; g++) {
      const int64_t group_n0 = n0 + g * kGroupCols;
      const int panels = GroupPanels(N, group_n0);
      uint32_t* group_dst = dst + g * group_stride + kp * panels * kLanes;
      for (int j = 0; j < panels; j++) {
        const int64_t n = group_n0 + kLanes * j;
        const __mmask16 mask = LaneMask(N - n);
        const __m512 lo = _mm512_maskz_loadu_ps(mask, row_k + n);
        const __m512 hi =
            k + 1 < K ? _mm512_maskz_loadu_ps(mask, row_k + ldb + n) : _mm512_setzero_ps();
        _mm512_store_si512(group_dst + j * kLanes, InterleavePair(lo, hi));
      }
    }
  }
}

// B stored [N, K] (row n holds every k; float32 or bf16): 16 rows x 32 k become 16 x 16 pair
// words, transposed so that each k pair is one vector.
template <class T>
DSMOE_BF16 void PackBFromRowsN(const T* B, int64_t ldb, int64_t N, int64_t n0, int panels,
                               int64_t k0, int64_t kc, uint32_t* dst) {
  for (int j = 0; j < panels; j++) {
    for (int64_t kk = 0; kk < kc; kk += 32) {
      const int64_t k_len = std::min<int64_t>(32, kc - kk);
      __m512i rows[kLanes];
      for (int i = 0; i < kLanes; i++) {
        const int64_t n = n0 + kLanes * j + i;
        rows[i] = n < N ? LoadPairRow(B + n * ldb + k0 + kk, k_len) : _mm512_setzero_si512();
      }
      Transpose16x16(rows);
      for (int64_t w = 0; w < (k_len + 1) / 2; w++)
        _mm512_store_si512(dst + ((kk / 2 + w) * panels + j) * kLanes, rows[w]);
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Packing A: rows [m0, m0 + kBlockRows) and all of K into dst[kp][kAStride words]; rows past
// M (and the words past kBlockRows) and k past K are zeros.

// A stored [K, M] (trans_a): two rows of A give the pair words of rows of op(A). Eight row blocks
// (48 columns of A, three vectors) are packed together, so that each cache line of A is read
// once rather than once per block of 6 columns; blocks [block_begin, block_end), each at
// a_packed + block * kp_total * kAStride.
DSMOE_BF16 void PackABlocksFromRowsK(const float* A, int64_t lda, int64_t M, int64_t K,
                                     int64_t block_begin, int64_t block_end, uint32_t* a_packed) {
  constexpr int kGroupBlocks = 8, kVectors = kGroupBlocks * kBlockRows / kLanes;  // 8 blocks, 3
  static_assert(kGroupBlocks * kBlockRows == kVectors * kLanes);
  // Block b of a group takes words 6b .. 6b + 5 of the three vectors: from vector 6b / 16 and,
  // past its end, the next one (permutex2var's second source).
  alignas(64) static const std::array<std::array<int32_t, kLanes>, kGroupBlocks> kIndex = [] {
    std::array<std::array<int32_t, kLanes>, kGroupBlocks> index{};
    for (int b = 0; b < kGroupBlocks; b++)
      for (int j = 0; j < kLanes; j++) index[b][j] = (kBlockRows * b) % kLanes + j;
    return index;
  }();
  const int64_t kp_total = (K + 1) / 2;
  for (int64_t g0 = block_begin; g0 < block_end; g0 += kGroupBlocks) {
    const int64_t blocks = std::min<int64_t>(kGroupBlocks, block_end - g0), m0 = g0 * kBlockRows;
    __mmask16 masks[kVectors];
    for (int v = 0; v < kVectors; v++) masks[v] = LaneMask(M - m0 - v * kLanes);
    for (int64_t kp = 0; kp < kp_total; kp++) {
      const int64_t k = 2 * kp;
      const float* row_k = A + k * lda + m0;
      __m512i words[kVectors + 1];
      for (int v = 0; v < kVectors; v++) {
        const __m512 lo = _mm512_maskz_loadu_ps(masks[v], row_k + v * kLanes);
        const __m512 hi = k + 1 < K ? _mm512_maskz_loadu_ps(masks[v], row_k + lda + v * kLanes)
                                    : _mm512_setzero_ps();
        words[v] = InterleavePair(lo, hi);
      }
      words[kVectors] = _mm512_setzero_si512();
      for (int64_t b = 0; b < blocks; b++) {
        const int v = static_cast<int>(kBlockRows * b / kLanes);
        const __m512i block = _mm512_maskz_permutex2var_epi32(
            (1u << kBlockRows) - 1, words[v], _mm512_load_si512(kIndex[b].data()), words[v + 1]);
        _mm256_storeu_si256(
            reinterpret_cast<__m256i*>(a_packed + ((g0 + b) * kp_total + kp) * kAStride),
            _mm512_castsi512_si256(block));
      }
    }
  }
}

// A stored [M, K]: each row's pair words are already consecutive; per 16 k pairs the block's
// rows (and zeros to 16) are transposed, so that each k pair's words are one run.
DSMOE_BF16 void PackAFromRowsM(const float* A, int64_t lda, int64_t M, int64_t K, int64_t m0,
                               uint32_t* dst) {
  const int64_t kp_count = (K + 1) / 2;
  const int64_t rows = std::min<int64_t>(kBlockRows, M - m0);
  for (int64_t k = 0; k < K; k += 32) {
    __m512i words[kLanes];  // words[r]: row r's pairs k / 2 .. k / 2 + 15
    for (int r = 0; r < kLanes; r++)
      words[r] = r < rows ? LoadPairRow(A + (m0 + r) * lda + k, std::min<int64_t>(32, K - k))
                          : _mm512_setzero_si512();
    Transpose16x16(words);  // words[w]: pair k / 2 + w of rows 0..15
    const int64_t n_words = std::min<int64_t>(kLanes, kp_count - k / 2);
    for (int64_t w = 0; w < n_words; w++)
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst + (k / 2 + w) * kAStride),
                          _mm512_castsi512_si256(words[w]));
  }
}

// ---------------------------------------------------------------------------------------------
// Micro-kernel: c[rows, 16 * panels] = alpha * a . b + beta * c over kp_count k pairs (beta == 0:
// c is not read); a: kAStride words per k pair, b: panels vectors per k pair. Columns of the
// last panel outside last_mask are left alone.
template <int kRows, int kPanels>
DSMOE_BF16 void MicroKernel(const uint32_t* HWY_RESTRICT a, const uint32_t* HWY_RESTRICT b,
                            int64_t kp_count, float* HWY_RESTRICT c, int64_t ldc,
                            __mmask16 last_mask, float alpha, float beta) {
  // The C tile is read (or written) only after the loop: fetch it while the sums run.
  for (int r = 0; r < kRows; r++)
    for (int j = 0; j < kPanels; j++)
      _mm_prefetch(reinterpret_cast<const char*>(c + r * ldc + j * kLanes), _MM_HINT_T0);
  __m512 acc[kRows][kPanels];
  for (int r = 0; r < kRows; r++)
    for (int j = 0; j < kPanels; j++) acc[r][j] = _mm512_setzero_ps();
  for (int64_t kp = 0; kp < kp_count; kp++, a += kAStride, b += kPanels * kLanes) {
    __m512bh b_pairs[kPanels];
    for (int j = 0; j < kPanels; j++) b_pairs[j] = (__m512bh)_mm512_load_si512(b + j * kLanes);
    for (int r = 0; r < kRows; r++) {
      const __m512bh a_pair = (__m512bh)_mm512_set1_epi32(static_cast<int>(a[r]));
      for (int j = 0; j < kPanels; j++) acc[r][j] = _mm512_dpbf16_ps(acc[r][j], b_pairs[j], a_pair);
    }
  }
  const __m512 alpha_v = _mm512_set1_ps(alpha), beta_v = _mm512_set1_ps(beta);
  for (int r = 0; r < kRows; r++) {
    for (int j = 0; j < kPanels; j++) {
      const __mmask16 mask = j == kPanels - 1 ? last_mask : __mmask16(0xFFFF);
      float* out = c + r * ldc + j * kLanes;
      __m512 value = _mm512_mul_ps(alpha_v, acc[r][j]);
      if (beta != 0.0f) value = _mm512_fmadd_ps(beta_v, _mm512_maskz_loadu_ps(mask, out), value);
      _mm512_mask_storeu_ps(out, mask, value);
    }
  }
}

using MicroKernelFn = void (*)(const uint32_t*, const uint32_t*, int64_t, float*, int64_t,
                               __mmask16, float, float);

template <int kRows>
MicroKernelFn PickKernel(int panels) {
  switch (panels) {
    case 1:
      return &MicroKernel<kRows, 1>;
    case 2:
      return &MicroKernel<kRows, 2>;
    case 3:
      return &MicroKernel<kRows, 3>;
    default:
      return &MicroKernel<kRows, 4>;
  }
}

MicroKernelFn PickKernel(int64_t rows, int panels) {
  static_assert(kBlockRows == 6 && kGroupPanels == 4);
  switch (rows) {
    case 1:
      return PickKernel<1>(panels);
    case 2:
      return PickKernel<2>(panels);
    case 3:
      return PickKernel<3>(panels);
    case 4:
      return PickKernel<4>(panels);
    case 5:
      return PickKernel<5>(panels);
    default:
      return PickKernel<6>(panels);
  }
}

// ---------------------------------------------------------------------------------------------
// Driver.

// Words of one packed B group: up to kBlockK / 2 k pairs of kGroupCols columns.
constexpr int64_t kGroupStride = detail::kBlockK / 2 * kGroupCols;

// Packs op(B)'s groups [g_begin, g_end) for k in [k0, k0 + kc), group g at
// dst + (g - g_begin) * kGroupStride.
DSMOE_BF16 void PackBChunk(const detail::GemmArgs& p, int64_t g_begin, int64_t g_end, int64_t k0,
                           int64_t kc, uint32_t* dst) {
  if (p.b_bf16 == nullptr && !p.trans_b) {
    PackBFromRowsK(p.B, p.ldb, p.N, p.K, g_begin * kGroupCols, g_end - g_begin, k0, kc,
                   kGroupStride, dst);
    return;
  }
  for (int64_t g = g_begin; g < g_end; g++) {
    const int64_t n0 = g * kGroupCols;
    uint32_t* group_dst = dst + (g - g_begin) * kGroupStride;
    if (p.b_bf16 != nullptr)
      PackBFromRowsN(p.b_bf16, p.ldb, p.N, n0, GroupPanels(p.N, n0), k0, kc, group_dst);
    else
      PackBFromRowsN(p.B, p.ldb, p.N, n0, GroupPanels(p.N, n0), k0, kc, group_dst);
  }
}

// The part of the tile grid (groups x row blocks) that thread t of n_threads computes: groups are
// split when there are enough of them, row blocks otherwise.
struct Share {
  int64_t group_begin, group_end, block_begin, block_end;
};

Share ThreadShare(int64_t n_groups, int64_t n_blocks, int t, int n_threads) {
  const int64_t by_n = std::min<int64_t>(n_threads, n_groups);
  const int64_t by_m = n_threads / by_n;
  if (t >= by_n * by_m) return {0, 0, 0, 0};
  const int64_t tn = t % by_n, tm = t / by_n;
  return {n_groups * tn / by_n, n_groups * (tn + 1) / by_n, n_blocks * tm / by_m,
          n_blocks * (tm + 1) / by_m};
}

// One thread's tiles: per K block and chunk of kChunkGroups groups, pack the chunk's B block,
// then run every row block of the share against each group while it is hot.
DSMOE_BF16 void ComputeShare(const detail::GemmArgs& p, const uint32_t* a_packed, int t,
                             int n_threads) {
  const int64_t n_groups = (p.N + kGroupCols - 1) / kGroupCols;
  const int64_t n_blocks = (p.M + kBlockRows - 1) / kBlockRows;
  const int64_t kp_total = (p.K + 1) / 2;
  const Share share = ThreadShare(n_groups, n_blocks, t, n_threads);
  thread_local detail::AlignedWords b_buffer;
  uint32_t* b_packed = b_buffer.reserve(kChunkGroups * kGroupStride);
  for (int64_t k0 = 0; k0 < p.K; k0 += detail::kBlockK) {
    const int64_t kc = std::min(detail::kBlockK, p.K - k0);
    const float beta = k0 == 0 ? p.beta : 1.0f;
    for (int64_t c0 = share.group_begin; c0 < share.group_end; c0 += kChunkGroups) {
      const int64_t c1 = std::min(c0 + kChunkGroups, share.group_end);
      if (p.b_panels == nullptr) PackBChunk(p, c0, c1, k0, kc, b_packed);
      for (int64_t g = c0; g < c1; g++) {
        const int64_t n0 = g * kGroupCols;
        const int panels = GroupPanels(p.N, n0);
        const __mmask16 last_mask = LaneMask(p.N - n0 - kLanes * (panels - 1));
        const uint32_t* b_block = p.b_panels != nullptr ? p.b_panels + g * kp_total * kGroupCols +
                                                              k0 / 2 * panels * kLanes
                                                        : b_packed + (g - c0) * kGroupStride;
        for (int64_t blk = share.block_begin; blk < share.block_end; blk++) {
          const int64_t m0 = blk * kBlockRows;
          PickKernel(std::min<int64_t>(kBlockRows, p.M - m0), panels)(
              a_packed + (blk * kp_total + k0 / 2) * kAStride, b_block, (kc + 1) / 2,
              p.C + m0 * p.ldc + n0, p.ldc, last_mask, p.alpha, beta);
        }
      }
    }
  }
}

DSMOE_BF16 void PackABlocks(const detail::GemmArgs& p, uint32_t* a_packed, int64_t block_begin,
                            int64_t block_end) {
  if (p.trans_a) {
    PackABlocksFromRowsK(p.A, p.lda, p.M, p.K, block_begin, block_end, a_packed);
    return;
  }
  const int64_t kp_total = (p.K + 1) / 2;
  for (int64_t blk = block_begin; blk < block_end; blk++)
    PackAFromRowsM(p.A, p.lda, p.M, p.K, blk * kBlockRows, a_packed + blk * kp_total * kAStride);
}

DSMOE_BF16 void GemmNative(const detail::GemmArgs& p) {
  const int64_t n_blocks = (p.M + kBlockRows - 1) / kBlockRows;
  thread_local detail::AlignedWords a_buffer;
  uint32_t* a_packed = a_buffer.reserve(static_cast<size_t>(n_blocks * kAStride * ((p.K + 1) / 2)));
  const bool parallel = p.M * p.N * p.K >= detail::kMinParallelWork;
#pragma omp parallel if (parallel)
  {
    const int t = omp_get_thread_num(), n_threads = omp_get_num_threads();
    PackABlocks(p, a_packed, n_blocks * t / n_threads, n_blocks * (t + 1) / n_threads);
#pragma omp barrier
    ComputeShare(p, a_packed, t, n_threads);
  }
}
#undef DSMOE_BF16
#endif  // HWY_TARGET == HWY_AVX3_DL

// Runs the product when this target and CPU have the fast path; false otherwise.
bool GemmBf16Native(const detail::GemmArgs& p) {
#if HWY_TARGET == HWY_AVX3_DL
  if (!CpuHasAvx512Bf16()) return false;
  GemmNative(p);
  return true;
#else
  (void)p;
  return false;
#endif
}

bool HasNative() {
#if HWY_TARGET == HWY_AVX3_DL
  return CpuHasAvx512Bf16();
#else
  return false;
#endif
}

}  // namespace HWY_NAMESPACE
}  // namespace dsmoe::cpu
HWY_AFTER_NAMESPACE();

#if HWY_ONCE
namespace dsmoe::cpu {

HWY_EXPORT(GemmBf16Native);
HWY_EXPORT(HasNative);
namespace {
// DSMOE_MAX_ISA holds before the first dispatch (kernels/cpu/isa_dispatch.h).
[[maybe_unused]] const int64_t kIsaCapApplied = apply_isa_cap();
}  // namespace

namespace {
namespace detail = gemm_bf16_detail;

std::atomic<bool> g_force_portable{false};

// A float32 as the fast path rounds it: float32 denormals become zero (vcvtne2ps2bf16 reads them
// as zero), then nearest even (f32_to_bf16 keeps NaNs NaN, as the instruction does).
float RoundToBf16(float x) {
  if (std::fpclassify(x) == FP_SUBNORMAL) x = std::copysign(0.0f, x);
  return bf16_to_f32(f32_to_bf16(x));
}

// A bf16 weight as vdpbf16ps reads it: denormals are zero.
float Bf16Weight(uint16_t bits) {
  return (bits & 0x7F80) == 0 ? bf16_to_f32(bits & 0x8000) : bf16_to_f32(bits);
}

// vdpbf16ps's product: exact, but flushed to zero below float32's smallest normal.
float Product(float a, float b) {
  const float product = a * b;
  return std::fabs(product) < FLT_MIN ? 0.0f : product;
}

// One element: the K blocks of the fast path, each summed pair by pair (k + 1 first).
float DotBlock(const float* a, const float* b, int64_t k0, int64_t k_end) {
  float sum = 0.0f;
  for (int64_t k = k0; k < k_end; k += 2) {
    if (k + 1 < k_end) sum += Product(a[k + 1], b[k + 1]);
    sum += Product(a[k], b[k]);
  }
  return sum;
}

void GemmPortable(const detail::GemmArgs& p) {
  const int64_t M = p.M, N = p.N, K = p.K;
  std::vector<float> a(static_cast<size_t>(M * K)), b(static_cast<size_t>(N * K));  // [M|N, K]
  for (int64_t m = 0; m < M; m++)
    for (int64_t k = 0; k < K; k++)
      a[m * K + k] = RoundToBf16(p.trans_a ? p.A[k * p.lda + m] : p.A[m * p.lda + k]);
  for (int64_t n = 0; n < N; n++)
    for (int64_t k = 0; k < K; k++)
      b[n * K + k] = p.b_panels != nullptr ? Bf16Weight(reinterpret_cast<const uint16_t*>(
                                                 p.b_panels)[bf16_panel_index(N, K, n, k)])
                     : p.b_bf16 != nullptr ? Bf16Weight(p.b_bf16[n * p.ldb + k])
                     : p.trans_b           ? RoundToBf16(p.B[n * p.ldb + k])
                                           : RoundToBf16(p.B[k * p.ldb + n]);
#pragma omp parallel for schedule(static) if (M * N * K >= detail::kMinParallelWork)
  for (int64_t m = 0; m < M; m++) {
    for (int64_t n = 0; n < N; n++) {
      float& c = p.C[m * p.ldc + n];
      for (int64_t k0 = 0; k0 < K; k0 += detail::kBlockK) {
        const float beta = k0 == 0 ? p.beta : 1.0f;
        const float sum =
            p.alpha * DotBlock(&a[m * K], &b[n * K], k0, std::min(K, k0 + detail::kBlockK));
        c = beta == 0.0f ? sum : std::fma(beta, c, sum);
      }
    }
  }
}

void Gemm(const detail::GemmArgs& p) {
  if (p.M <= 0 || p.N <= 0) return;
  if (p.K <= 0) {  // C = beta * C, without reading C when beta == 0
    for (int64_t m = 0; m < p.M; m++)
      for (int64_t n = 0; n < p.N; n++) {
        float& c = p.C[m * p.ldc + n];
        c = p.beta == 0.0f ? 0.0f : p.beta * c;
      }
    return;
  }
  if (g_force_portable.load(std::memory_order_relaxed) || !HWY_DYNAMIC_DISPATCH(GemmBf16Native)(p))
    GemmPortable(p);
}

}  // namespace

bool gemm_bf16_native() {
  return !g_force_portable.load(std::memory_order_relaxed) && HWY_DYNAMIC_DISPATCH(HasNative)();
}

void gemm_bf16_force_portable(bool on) { g_force_portable.store(on); }

void gemm_bf16(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, float alpha,
               const float* A, int64_t lda, const float* B, int64_t ldb, float beta, float* C,
               int64_t ldc) {
  Gemm({trans_a, trans_b, M, N, K, alpha, beta, A, lda, B, nullptr, nullptr, ldb, C, ldc});
}

void gemm_bf16_weights(float* out, const float* x, int64_t M, const uint16_t* w, int64_t N,
                       int64_t K, int64_t w_stride) {
  Gemm({false, true, M, N, K, 1.0f, 0.0f, x, K, nullptr, w, nullptr, w_stride, out, N});
}

void gemm_bf16_panels(float* out, const float* x, int64_t M, const uint16_t* panels, int64_t N,
                      int64_t K) {
  Gemm({false, true, M, N, K, 1.0f, 0.0f, x, K, nullptr, nullptr,
        reinterpret_cast<const uint32_t*>(panels), 0, out, N});
}

}  // namespace dsmoe::cpu
#endif  // HWY_ONCE
