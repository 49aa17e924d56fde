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

// Block panels (QuantMatrix::panels, kernels/quant.h): 16 weight rows per vector, one int32 lane
// per row, so that nothing is reduced across lanes. Per block and activation row: the block's
// int32 sums start at the zero-point correction (lane-broadcast), take 8 vpdpbusd whose
// activation operand is 4 bytes broadcast from the VnniGroup, and go into the float sums times
// scale_w * scale_x, even blocks into one accumulator and odd ones into another (FMA latency).
// Every activation row takes the same instructions in the same order whatever kRows is.

// The activation bytes 4i .. 4i + 3 of block b (in the VnniGroup of its group), the block's
// correction and scale, for Q4_0 (16 bytes low, 16 high a block) and Q8_0 (32 bytes, two blocks a
// vector) groups.
struct PanelActs {
  const int8_t* low;   // bytes 0..15 (Q4_0) or 0..31 (Q8_0)
  const int8_t* high;  // Q4_0: bytes 16..31
  int32_t correction;
  float scale;
};
HWY_INLINE PanelActs PanelActsOf(bool q8, const VnniGroup& g, int64_t j) {
  if (!q8) return {g.low + 16 * j, g.high + 16 * j, g.correction[4 * j], g.scale[4 * j]};
  const int64_t half = j % 2;
  if (j < 2) return {g.low + 32 * half, nullptr, g.correction[8 * half], g.scale[8 * half]};
  return {g.high + 32 * half, nullptr, g.correction_hi[8 * half], g.scale_hi[8 * half]};
}

HWY_INLINE __m512i Broadcast4(const int8_t* p) {
  int32_t word;
  std::memcpy(&word, p, sizeof(word));
  return _mm512_set1_epi32(word);
}

// Panel p against activation rows x[0 .. kRows): out[r * out_stride + 16 p + lane] for the lanes
// that are rows of w.
template <int kRows, bool kQ8>
void DotPanelVNNI(const QuantMatrix& w, int64_t p, const VnniGroup* const* HWY_RESTRICT x,
                  float* HWY_RESTRICT out, int64_t out_stride) {
  const int64_t nb = w.cols / kQuantBlock;
  const uint8_t* panel = w.panel(p);
  const __m512i low_mask = _mm512_set1_epi8(0x0F);
  const __m512i to_unsigned = _mm512_set1_epi8(static_cast<char>(0x80));
  constexpr WeightFormat kFormat = kQ8 ? WeightFormat::kQ8_0 : WeightFormat::kQ4_0;
  // Even blocks into acc_even, odd ones into acc_odd (two chains for the FMA latency); named
  // arrays indexed by constants only, so that they stay in registers.
  __m512 acc_even[kRows], acc_odd[kRows];
  for (int r = 0; r < kRows; r++) acc_even[r] = acc_odd[r] = _mm512_setzero_ps();
  auto block = [&](int64_t b, __m512* HWY_RESTRICT acc) {
    const uint8_t* q = panel + block_panel_quants_at(kFormat, b);
    for (int64_t line = 0; line < block_panel_quant_bytes(kFormat); line += 64)
      _mm_prefetch(reinterpret_cast<const char*>(q) + kPrefetchBytes + line, _MM_HINT_T1);
    // The block's 8 weight vectors, unsigned: vector i holds bytes 4i .. 4i + 3 of each row.
    __m512i v[8];
    if constexpr (kQ8) {
      for (int i = 0; i < 8; i++)
        v[i] = _mm512_xor_si512(_mm512_load_si512(q + 64 * i), to_unsigned);
    } else {
      for (int i = 0; i < 4; i++) {
        const __m512i packed = _mm512_load_si512(q + 64 * i);
        v[i] = _mm512_and_si512(packed, low_mask);
        v[i + 4] = _mm512_and_si512(_mm512_srli_epi16(packed, 4), low_mask);
      }
    }
    const __m512 w_scale = _mm512_cvtph_ps(_mm256_load_si256(
        reinterpret_cast<const __m256i*>(panel + block_panel_scales_at(kFormat, b))));
    const int64_t g = b / 4, j = b % 4;
    for (int r = 0; r < kRows; r++) {
      const PanelActs a = PanelActsOf(kQ8, x[r][g], j);
      // bytes 4i .. 4i + 3 of the block: Q8_0 all in `low`, Q4_0 16..31 in `high`
      auto bytes = [&](int i) {
        return kQ8 ? a.low + 4 * i : (i < 4 ? a.low + 4 * i : a.high + 4 * (i - 4));
      };
      __m512i sum_a = _mm512_set1_epi32(a.correction), sum_b = _mm512_setzero_si512();
      for (int i = 0; i < 8; i += 2) {
        sum_a = _mm512_dpbusd_epi32(sum_a, v[i], Broadcast4(bytes(i)));
        sum_b = _mm512_dpbusd_epi32(sum_b, v[i + 1], Broadcast4(bytes(i + 1)));
      }
      const __m512 scale = _mm512_mul_ps(w_scale, _mm512_set1_ps(a.scale));
      acc[r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_add_epi32(sum_a, sum_b)), scale, acc[r]);
    }
  };
  int64_t b = 0;
  for (; b + 2 <= nb; b += 2) {
    block(b, acc_even);
    block(b + 1, acc_odd);
  }
  if (b < nb) block(b, acc_even);
  const int64_t valid = std::min<int64_t>(kBlockPanelRows, w.rows - p * kBlockPanelRows);
  const __mmask16 lanes = static_cast<__mmask16>((uint32_t{1} << valid) - 1);
  for (int r = 0; r < kRows; r++)
    _mm512_mask_storeu_ps(out + r * out_stride + p * kBlockPanelRows, lanes,
                          _mm512_add_ps(acc_even[r], acc_odd[r]));
}

// Panel p against activation rows [0, rows), rows <= kVnniRowsPerPass.
template <int kRows>
void DotPanelRowsVNNI(bool q8, const QuantMatrix& w, int64_t p, const VnniGroup* const* x,
                      float* out, int64_t out_stride) {
  if (q8)
    DotPanelVNNI<kRows, true>(w, p, x, out, out_stride);
  else
    DotPanelVNNI<kRows, false>(w, p, x, out, out_stride);
}
