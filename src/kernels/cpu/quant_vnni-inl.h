// quant_vnni-inl.h (cpu): the AVX-512 VNNI row kernels of the Q8_0 / Q4_0 formats, included by
// quant_ops.cpp inside its AVX3_DL target's namespace (Highway's -inl.h convention: no include
// guard, the file is part of quant_ops.cpp's per-target code, which provides ReduceSum,
// kPrefetchBytes, row_scales and row_quants). Not for any other includer.

// AVX-512 VNNI over the split rows (quant.h: scales first, then quants) and the activations in
// groups of four blocks (VnniGroup, built once per call). vpdpbusd multiplies unsigned bytes by
// signed ones: the weights go unsigned (Q4_0 nibbles as stored, Q8_0 + 128) and the zero point z
// comes out exactly through the group's correction lanes, -z * sum(x of the block), the starting
// value of the int32 sums. Each 32-bit lane sums 4 products; the lanes of one block are then
// scaled by scale_w * scale_x (the expanded x scales are in the group) and summed in float32.

// The weight scales of blocks 4g .. 4g + 3 (fewer at the row's end: masked), each repeated over
// the `lanes_per_block` lanes its int32 sums occupy (4: Q4_0's layout, 8: Q8_0's per vector).
HWY_INLINE __m512 GroupScales(const uint16_t* HWY_RESTRICT scales, int64_t n_valid,
                              __m512i expand) {
  const __m128i bits = n_valid >= 4 ? _mm_loadl_epi64(reinterpret_cast<const __m128i*>(scales))
                                    : _mm_maskz_loadu_epi16((__mmask8{1} << n_valid) - 1, scales);
  return _mm512_permutexvar_ps(expand, _mm512_castps128_ps512(_mm_cvtph_ps(bits)));
}

// Bytes [0, n) of a 64-byte vector (the rest zero) without reading past them.
HWY_INLINE __m512i LoadBytes(const uint8_t* p, int64_t n) {
  return n >= 64 ? _mm512_loadu_si512(p) : _mm512_maskz_loadu_epi8((__mmask64{1} << n) - 1, p);
}

// One weight row against one activation row, the activation groups read from L1. One row at a
// time keeps each thread's reads one sequential stream (the row's scales, its quants, then the
// next row): with two rows at a time (four streams: two scale runs, two quant runs) the same
// product read ~20% less bandwidth (35 vs 44 GB/s on the 2-core bench machine).
//
// kRows activation rows x[r] (batched decode, speculative verification) share each group's weight
// loads, nibble unpacking and scales; every row takes the same instructions in the same order
// as alone, so its bits do not depend on kRows.
template <int kRows>
void DotRowQ4VNNI(const QuantMatrix& w, int64_t n, const VnniGroup* const* HWY_RESTRICT x,
                  float* HWY_RESTRICT out, int64_t out_stride) {
  const int64_t nb = w.cols / kQuantBlock;
  const __m512i expand = _mm512_setr_epi32(0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3);
  const __m512i low_mask = _mm512_set1_epi8(0x0F);
  const uint16_t* scales = row_scales(w.row(n));
  const uint8_t* quants = row_quants(w.row(n), nb);
  __m512 acc[kRows];
  for (int r = 0; r < kRows; r++) acc[r] = _mm512_setzero_ps();
  for (int64_t g = 0; 4 * g < nb; g++) {
    const int64_t n_valid = std::min<int64_t>(4, nb - 4 * g);
    // 16 bytes per block: low nibbles are elements 0..15, high nibbles 16..31.
    const uint8_t* q = quants + 64 * g;
    _mm_prefetch(reinterpret_cast<const char*>(q) + kPrefetchBytes, _MM_HINT_T1);
    const __m512i packed = LoadBytes(q, 16 * n_valid);
    const __m512i low = _mm512_and_si512(packed, low_mask);
    const __m512i high = _mm512_and_si512(_mm512_srli_epi16(packed, 4), low_mask);
    const __m512 w_scale = GroupScales(scales + 4 * g, n_valid, expand);
    for (int r = 0; r < kRows; r++) {
      const VnniGroup& xg = x[r][g];
      __m512i sums =
          _mm512_dpbusd_epi32(_mm512_load_si512(xg.correction), low, _mm512_load_si512(xg.low));
      sums = _mm512_dpbusd_epi32(sums, high, _mm512_load_si512(xg.high));
      const __m512 scale = _mm512_mul_ps(w_scale, _mm512_load_ps(xg.scale));
      acc[r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(sums), scale, acc[r]);
    }
  }
  for (int r = 0; r < kRows; r++) out[r * out_stride] = ReduceSum(acc[r]);
}

// DotRowQ4VNNI for Q8_0: 32 bytes a block, two blocks a vector.
template <int kRows>
void DotRowQ8VNNI(const QuantMatrix& w, int64_t n, const VnniGroup* const* HWY_RESTRICT x,
                  float* HWY_RESTRICT out, int64_t out_stride) {
  const int64_t nb = w.cols / kQuantBlock;
  const __m512i expand_lo = _mm512_setr_epi32(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1);
  const __m512i expand_hi = _mm512_setr_epi32(2, 2, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3, 3, 3);
  const __m512i to_unsigned = _mm512_set1_epi8(static_cast<char>(0x80));
  const uint16_t* scales = row_scales(w.row(n));
  const uint8_t* quants = row_quants(w.row(n), nb);
  __m512 acc_lo[kRows], acc_hi[kRows];
  for (int r = 0; r < kRows; r++) acc_lo[r] = acc_hi[r] = _mm512_setzero_ps();
  for (int64_t g = 0; 4 * g < nb; g++) {
    const int64_t n_valid = std::min<int64_t>(4, nb - 4 * g);
    const uint8_t* q = quants + 128 * g;
    _mm_prefetch(reinterpret_cast<const char*>(q) + kPrefetchBytes, _MM_HINT_T1);
    _mm_prefetch(reinterpret_cast<const char*>(q) + kPrefetchBytes + 64, _MM_HINT_T1);
    const __m512i w_lo = _mm512_xor_si512(LoadBytes(q, 32 * n_valid), to_unsigned);
    const __m512i w_hi =
        _mm512_xor_si512(LoadBytes(q + 64, 32 * std::max<int64_t>(n_valid - 2, 0)), to_unsigned);
    const __m128i bits = n_valid >= 4
                             ? _mm_loadl_epi64(reinterpret_cast<const __m128i*>(scales + 4 * g))
                             : _mm_maskz_loadu_epi16((__mmask8{1} << n_valid) - 1, scales + 4 * g);
    const __m512 w_scales = _mm512_castps128_ps512(_mm_cvtph_ps(bits));
    const __m512 w_scale_lo = _mm512_permutexvar_ps(expand_lo, w_scales);
    const __m512 w_scale_hi = _mm512_permutexvar_ps(expand_hi, w_scales);
    for (int r = 0; r < kRows; r++) {
      const VnniGroup& xg = x[r][g];
      const __m512i sums_lo =
          _mm512_dpbusd_epi32(_mm512_load_si512(xg.correction), w_lo, _mm512_load_si512(xg.low));
      const __m512i sums_hi = _mm512_dpbusd_epi32(_mm512_load_si512(xg.correction_hi), w_hi,
                                                  _mm512_load_si512(xg.high));
      const __m512 scale_lo = _mm512_mul_ps(w_scale_lo, _mm512_load_ps(xg.scale));
      const __m512 scale_hi = _mm512_mul_ps(w_scale_hi, _mm512_load_ps(xg.scale_hi));
      acc_lo[r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(sums_lo), scale_lo, acc_lo[r]);
      acc_hi[r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(sums_hi), scale_hi, acc_hi[r]);
    }
  }
  for (int r = 0; r < kRows; r++)
    out[r * out_stride] = ReduceSum(_mm512_add_ps(acc_lo[r], acc_hi[r]));
}

// Rows of activations per pass over a weight row (their sums stay in registers).
constexpr int64_t kVnniRowsPerPass = 4;

// Weight row n against activation rows [m0, m0 + rows), rows <= kVnniRowsPerPass.
template <int kRows>
void DotRowVNNI(bool q8, const QuantMatrix& w, int64_t n, const VnniGroup* const* x, float* out,
                int64_t out_stride) {
  if (q8)
    DotRowQ8VNNI<kRows>(w, n, x, out, out_stride);
  else
    DotRowQ4VNNI<kRows>(w, n, x, out, out_stride);
}
