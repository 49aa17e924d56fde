// gemm_fp8_gfni-inl.h (cpu): the FP8 row kernel for AVX-512 CPUs with GFNI and AVX512-VBMI (Ice
// Lake and later, Zen 4, Zen 5), included by gemm_fp8.cpp inside its AVX3_DL target's namespace
// (Highway's -inl.h convention: no include guard; gemm_fp8.cpp provides E4m3ToF32, E4m3ToF32Pair,
// RowsFp8F16 and the detail constants). Not for any other includer.
//
// e4m3 -> float32 in three instructions per 32 weights instead of eight (the f16 route of
// E4m3ToF32Pair: sign-extend, shift, mask, extract, two vcvtph2ps of two micro-ops each), because
// a float32's top 16 bits can hold an e4m3 byte's bits unchanged but spread out:
//
//   e4m3 byte        s e3 e2 e1 e0 m2 m1 m0
//   float32 bits     31: s, 30..27: 0, 26..23: e3..e0 (the exponent field is e), 22..20: m2..m0
//
// is e4m3 * 2^-120 exactly whenever e >= 1 (a normal float32 with the same exponent, unbiased
// e - 127 against e4m3's e - 7, and the same 3 mantissa bits). One vgf2p8affineqb (a bit matrix
// per 64-bit lane) turns 32 bytes broadcast to both halves of a register into the two bytes that
// each float32 needs: the low half becomes [s 0 0 0 0 e3 e2 e1] (bits 31..24), the high half
// [e0 m2 m1 m0 0 0 0 0] (bits 23..16); two vpermb with a zeroing mask place them into 16 float32
// lanes each. Bytes with e = 0 (zeros and subnormals) would be float32 denormals, which cost a
// microcode assist per multiply on Intel (50x slower measured with many of them): a 64-byte chunk
// holding one takes E4m3ToF32Pair's exact f16 route instead (rare in real weights: e4m3 values
// below 2^-6 of the block's scale, a few per 128 x 128 block).
//
// The tiny float32 values need activations scaled up for products that stay normal: the kernel
// multiplies x by each column block's scale times 2^96 once per 128 rows of weights (the 128 x
// 128 blocks share it), so that a row's sum needs no per-block multiply: the products are
// e4m3 * x * scale * 2^-24 (the f16 route's e4m3 * 2^-8 ones: * 2^88, summed apart), and the
// powers of two come out exactly at the end. Against E4m3ToF32Pair's kernel the activation times
// its scale is rounded once more (one float32 rounding per product, within the bound that
// tests/test_fp8.cpp checks) and the sums run over the whole row instead of per block.

namespace gfni {

// vgf2p8affineqb's bit matrices: result bit i is the parity of (byte 7 - i of the matrix) AND
// the input byte. kHighByte: bit 7 <- s (bit 7), bits 2..0 <- e3 e2 e1 (bits 6..4); kLowByte:
// bits 7..4 <- e0 m2 m1 m0 (bits 3..0).
constexpr int64_t kHighByte = 0x1020400000000080;
constexpr int64_t kLowByte = 0x0000000001020408;

// Float32 byte lanes 2 and 3 of every 32-bit lane: the placed bytes; 0 and 1 stay zero.
constexpr __mmask64 kPlaced = 0xCCCCCCCCCCCCCCCCull;

// Activations: x * scale * 2^96. Products: e4m3 * 2^-120 * x * scale * 2^96, or through the f16
// route e4m3 * 2^-8 * x * scale * 2^96: normal float32 numbers unless |x * scale| is below
// 2^-102 (then, like float32 products below 2^-126 anywhere, they lose bits or flush) or large.
// Rows with |x * scale| >= 2^14 somewhere take RowsFp8F16 instead (the f16 route's sums of up to
// 2^14 products of 2^0.8 * 2^110 stay below float32's 2^128); real activations times real
// scales (~1e-4 .. 1e-2) are far below it.
constexpr float kActScale = 0x1p96f;
constexpr float kMaxScaled = 0x1p110f;
constexpr float kFastBack = 0x1p24f;
constexpr float kExactBack = 0x1p-88f;

// Activation rows one pass over a weight row serves: 4 sums each, in registers (DotRowGfni).
constexpr int kMaxRowsPerPass = 3;

// Activation rows per slab (RowsFp8Gfni): 48 x 2048 scaled float32 rows are 384 KiB, in L2 on
// the bench machines. On [1408, 2048] (2 threads, Xeon, idle), 24 / 48 / 96 rows per slab all
// ran M = 512 in 26-27 ms (110 ms unslabbed, the bf16 GEMM of gemm_fp8 44 ms).
constexpr int64_t kSlabRows = 48;

struct Constants {
  __m512i matrices;  // kHighByte in the low 256 bits, kLowByte in the high 256 bits
  __m512i place_lo;  // vpermb indices: weight i (of 16) from bytes i and 32 + i
  __m512i place_hi;  // weights 16 .. 31: bytes 16 + i and 48 + i
  __m512i exponent;  // 0x78 in every byte: the exponent bits
};

inline Constants MakeConstants() {
  alignas(64) uint8_t lo[64] = {}, hi[64] = {};
  for (int i = 0; i < 16; i++) {
    lo[4 * i + 2] = static_cast<uint8_t>(32 + i), lo[4 * i + 3] = static_cast<uint8_t>(i);
    hi[4 * i + 2] = static_cast<uint8_t>(48 + i), hi[4 * i + 3] = static_cast<uint8_t>(16 + i);
  }
  return Constants{_mm512_setr_epi64(kHighByte, kHighByte, kHighByte, kHighByte, kLowByte, kLowByte,
                                     kLowByte, kLowByte),
                   _mm512_load_si512(lo), _mm512_load_si512(hi), _mm512_set1_epi8(0x78)};
}

}  // namespace gfni

// 32 e4m3 bytes at p -> float32 e4m3 * 2^-120 (lanes 0..15 in w0, 16..31 in w1); every byte
// must have e >= 1.
HWY_INLINE void E4m3ToF32Gfni(const uint8_t* HWY_RESTRICT p, const gfni::Constants& c, __m512& w0,
                              __m512& w1) {
  const __m512i both =
      _mm512_broadcast_i64x4(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
  const __m512i bytes = _mm512_gf2p8affine_epi64_epi8(both, c.matrices, 0);
  w0 = _mm512_castsi512_ps(_mm512_maskz_permutexvar_epi8(gfni::kPlaced, c.place_lo, bytes));
  w1 = _mm512_castsi512_ps(_mm512_maskz_permutexvar_epi8(gfni::kPlaced, c.place_hi, bytes));
}

// One activation row's sums: four over the fast route's lanes, one over the exact f16 route's (a
// chunk with a zero or a subnormal, the tail). DotRowGfni holds them in named variables and
// passes references to these always-inlined helpers: in a struct or an array (over 136 bytes)
// GCC kept them on the stack, and the kernel ran 1.7x slower.

// The exact f16 route for the 64 weights at w and one row of activations x.
HWY_INLINE void ExactChunk(const float* HWY_RESTRICT x, const uint8_t* HWY_RESTRICT w,
                           __m512& exact) {
  const hn::ScalableTag<float> df;
  for (int h = 0; h < 64; h += 32) {
    hn::Vec<decltype(df)> w0, w1;
    E4m3ToF32Pair(df, w + h, w0, w1);
    exact = _mm512_fmadd_ps(w0.raw, _mm512_loadu_ps(x + h), exact);
    exact = _mm512_fmadd_ps(w1.raw, _mm512_loadu_ps(x + h + 16), exact);
  }
}

HWY_INLINE void FastChunk(const float* HWY_RESTRICT x, __m512 w0, __m512 w1, __m512 w2, __m512 w3,
                          __m512& fast0, __m512& fast1, __m512& fast2, __m512& fast3) {
  fast0 = _mm512_fmadd_ps(w0, _mm512_loadu_ps(x), fast0);
  fast1 = _mm512_fmadd_ps(w1, _mm512_loadu_ps(x + 16), fast1);
  fast2 = _mm512_fmadd_ps(w2, _mm512_loadu_ps(x + 32), fast2);
  fast3 = _mm512_fmadd_ps(w3, _mm512_loadu_ps(x + 48), fast3);
}

// A row's sums after the last whole chunk at k: x . w over [k, K) through the exact route, but
// the scalar tail (Total: it calls f16_to_f32, and vector sums live across a call end up on the
// stack for the whole kernel, 1.6x slower).
struct RowTotals {
  float fast, exact;
};
HWY_INLINE RowTotals Reduce(const float* HWY_RESTRICT x, const uint8_t* HWY_RESTRICT w, int64_t k,
                            int64_t K, __m512 fast0, __m512 fast1, __m512 fast2, __m512 fast3,
                            __m512 exact) {
  const hn::ScalableTag<float> df;
  for (; k + 16 <= K; k += 16)
    exact = _mm512_fmadd_ps(E4m3ToF32(df, w + k).raw, _mm512_loadu_ps(x + k), exact);
  const __m512 fast = _mm512_add_ps(_mm512_add_ps(fast0, fast1), _mm512_add_ps(fast2, fast3));
  return RowTotals{hn::GetLane(hn::SumOfLanes(df, hn::Vec<decltype(df)>{fast})),
                   hn::GetLane(hn::SumOfLanes(df, hn::Vec<decltype(df)>{exact}))};
}

// x . w over the last K % 16 weights (exact route, scalar), and the row's total.
HWY_INLINE float Total(const float* HWY_RESTRICT x, const uint8_t* HWY_RESTRICT w, int64_t K,
                       RowTotals totals) {
  float exact_tail = 0.0f;
  for (int64_t k = K - K % 16; k < K; k++) exact_tail += x[k] * detail::e4m3_scaled(w[k]);
  return totals.fast * gfni::kFastBack + (totals.exact + exact_tail) * gfni::kExactBack;
}

// out[r * out_stride] = x[r] . w for kRows (1 to 3) rows of scaled activations xs[r] (row stride
// K, see above) and one weight row of e4m3 bytes w[K]. Each row takes the same instructions as
// alone (its bits do not depend on kRows).
template <int kRows>
HWY_NOINLINE void DotRowGfni(const float* HWY_RESTRICT xs, int64_t K, const uint8_t* HWY_RESTRICT w,
                             const gfni::Constants& c, float* HWY_RESTRICT out,
                             int64_t out_stride) {
  static_assert(kRows >= 1 && kRows <= 3);
  const __m512 zero = _mm512_setzero_ps();
  __m512 a0 = zero, a1 = zero, a2 = zero, a3 = zero, a_exact = zero;  // row 0
  __m512 b0 = zero, b1 = zero, b2 = zero, b3 = zero, b_exact = zero;  // row 1
  __m512 c0 = zero, c1 = zero, c2 = zero, c3 = zero, c_exact = zero;  // row 2
  const float* xa = xs;
  const float* xb = kRows >= 2 ? xs + K : xs;
  const float* xc = kRows >= 3 ? xs + 2 * K : xs;
  int64_t k = 0;
  for (; k + 64 <= K; k += 64) {
    _mm_prefetch(reinterpret_cast<const char*>(w + k) + detail::kPrefetchBytes, _MM_HINT_T1);
    if (_mm512_testn_epi8_mask(_mm512_loadu_si512(w + k), c.exponent) != 0) {
      ExactChunk(xa + k, w + k, a_exact);  // a zero or a subnormal: the f16 route
      if constexpr (kRows >= 2) ExactChunk(xb + k, w + k, b_exact);
      if constexpr (kRows >= 3) ExactChunk(xc + k, w + k, c_exact);
      continue;
    }
    __m512 w0, w1, w2, w3;
    E4m3ToF32Gfni(w + k, c, w0, w1);
    E4m3ToF32Gfni(w + k + 32, c, w2, w3);
    FastChunk(xa + k, w0, w1, w2, w3, a0, a1, a2, a3);
    if constexpr (kRows >= 2) FastChunk(xb + k, w0, w1, w2, w3, b0, b1, b2, b3);
    if constexpr (kRows >= 3) FastChunk(xc + k, w0, w1, w2, w3, c0, c1, c2, c3);
  }
  const RowTotals a = Reduce(xa, w, k, K, a0, a1, a2, a3, a_exact);
  RowTotals b{}, c_totals{};
  if constexpr (kRows >= 2) b = Reduce(xb, w, k, K, b0, b1, b2, b3, b_exact);
  if constexpr (kRows >= 3) c_totals = Reduce(xc, w, k, K, c0, c1, c2, c3, c_exact);
  out[0] = Total(xa, w, K, a);
  if constexpr (kRows >= 2) out[out_stride] = Total(xb, w, K, b);
  if constexpr (kRows >= 3) out[2 * out_stride] = Total(xc, w, K, c_totals);
}

// xs[m, k] = x[m, k] * scales[k / kFp8Block] * 2^96 for M rows of K; too_large[m]: whether row
// m has |x * scale| >= 2^14 (or an infinity) somewhere.
HWY_INLINE void ScaleActivations(const float* HWY_RESTRICT x, int64_t M, int64_t K,
                                 const float* HWY_RESTRICT scales, float* HWY_RESTRICT xs,
                                 bool* too_large) {
  for (int64_t m = 0; m < M; m++) {
    __m512 largest = _mm512_setzero_ps();
    float largest_tail = 0.0f;
    for (int64_t k0 = 0; k0 < K; k0 += kFp8Block) {
      const int64_t k1 = std::min(k0 + kFp8Block, K);
      const float factor = scales[k0 / kFp8Block] * gfni::kActScale;
      const __m512 f = _mm512_set1_ps(factor);
      int64_t k = k0;
      for (; k + 16 <= k1; k += 16) {
        const __m512 scaled = _mm512_mul_ps(_mm512_loadu_ps(x + m * K + k), f);
        largest = _mm512_max_ps(largest, _mm512_abs_ps(scaled));
        _mm512_storeu_ps(xs + m * K + k, scaled);
      }
      for (; k < k1; k++) {
        xs[m * K + k] = x[m * K + k] * factor;
        largest_tail = std::max(largest_tail, std::abs(xs[m * K + k]));
      }
    }
    too_large[m] =
        _mm512_reduce_max_ps(largest) >= gfni::kMaxScaled || largest_tail >= gfni::kMaxScaled;
  }
}

// Rows [n_begin, n_end) of out[M, w.rows] through DotRowGfni, one block of 128 rows (one row of
// scales) at a time; an activation row with too large values (ScaleActivations) through
// RowsFp8F16 alone, which has the range of float32.
void RowsFp8GfniSlab(const float* HWY_RESTRICT x, int64_t M, const QuantMatrix& w,
                     float* HWY_RESTRICT out, int64_t n_begin, int64_t n_end) {
  const int64_t N = w.rows, K = w.cols;
  static const gfni::Constants constants = gfni::MakeConstants();
  // 64-byte aligned: unaligned, every 64-byte load of activations spans two cache lines (the
  // kernel 1.2x slower in cache).
  thread_local std::vector<float> scaled_buffer;
  scaled_buffer.resize(static_cast<size_t>(M * K + 16));
  float* scaled = scaled_buffer.data();
  scaled += (16 - (reinterpret_cast<uintptr_t>(scaled) / sizeof(float)) % 16) % 16;
  bool too_large[gfni::kSlabRows];
  for (int64_t n0 = n_begin; n0 < n_end;) {
    const int64_t n1 = std::min(n_end, (n0 / kFp8Block + 1) * kFp8Block);
    ScaleActivations(x, M, K, w.row_block_scales(n0), scaled, too_large);
    for (int64_t n = n0; n < n1; n++) {
      const auto* row = static_cast<const uint8_t*>(w.row(n));
      for (int64_t m0 = 0; m0 < M; m0 += gfni::kMaxRowsPerPass) {
        const float* xm = scaled + m0 * K;
        float* o = out + m0 * N + n;
        switch (std::min<int64_t>(gfni::kMaxRowsPerPass, M - m0)) {
          case 1:
            DotRowGfni<1>(xm, K, row, constants, o, N);
            break;
          case 2:
            DotRowGfni<2>(xm, K, row, constants, o, N);
            break;
          default:
            DotRowGfni<3>(xm, K, row, constants, o, N);
            break;
        }
      }
    }
    for (int64_t m = 0; m < M; m++)
      if (too_large[m]) RowsFp8F16(x + m * K, 1, w, out + m * N, n0, n1);
    n0 = n1;
  }
  static_assert(gfni::kMaxRowsPerPass == 3);
}

// RowsFp8GfniSlab over slabs of gfni::kSlabRows activation rows: each slab's scaled activations
// stay in L2 while every weight row passes over them.
void RowsFp8Gfni(const float* HWY_RESTRICT x, int64_t M, const QuantMatrix& w,
                 float* HWY_RESTRICT out, int64_t n_begin, int64_t n_end) {
  for (int64_t m0 = 0; m0 < M; m0 += gfni::kSlabRows)
    RowsFp8GfniSlab(x + m0 * w.cols, std::min(gfni::kSlabRows, M - m0), w, out + m0 * w.rows,
                    n_begin, n_end);
}
