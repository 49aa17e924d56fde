// gemm_quant_pack-inl.h (cpu): packing Q8_0 / Q4_0 weight rows into the VNNI GEMM's panels, and
// prefetching the next run of them, included by gemm_quant.cpp inside its AVX3_DL target's
// namespace (Highway's -inl.h convention: no include guard; it uses gemm_quant.cpp's kPanelRows,
// kGroups, kPanelBlockBytes, kMaxPanels and kKBlocks). Not for any other includer.

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
