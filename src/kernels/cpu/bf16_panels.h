// bf16_panels.h (cpu): the matrix-vector side of bf16 weights held in the bf16 GEMM's panel
// layout (kernels/quant.h, QuantMatrix::panels): decode streams each 64-row group of weights
// once, k pair after k pair, as vdpbf16ps takes it. The GEMM side is cpu::gemm_bf16_panels
// (kernels/cpu/gemm_bf16.h). Tests in tests/test_bf16_panels.cpp.
#pragma once
#include <cstdint>

namespace dsmoe::cpu {

// Rows [n_begin, n_end) of out[M, N] (row stride N) = x . w^T, w a bf16 panel matrix [N, K],
// x given as its bf16 hi and lo parts x_hi[M, K], x_lo[M, K] (split_bf16_hi_lo, each rounded to
// bf16): out = x_hi . w^T + x_lo . w^T, products exact and sums float32 (hi and lo summed apart
// over K, then added). n_begin and n_end are multiples of kPanelGroupRows (or N). One thread:
// callers split the groups between threads. vdpbf16ps where the CPU has AVX512-BF16, a scalar
// loop with the same products otherwise. Rows go through in passes of up to 7, each panel load
// feeding every row of the pass (a row's bits do not depend on M).
void bf16_panel_rows(const uint16_t* x_hi, const uint16_t* x_lo, int64_t M, const uint16_t* panels,
                     int64_t N, int64_t K, float* out, int64_t n_begin, int64_t n_end);

// n (a row range's end or start, 0 <= n <= N) moved to the nearest group start, or to N from
// the last group on: the boundaries bf16_panel_rows needs, in the order of n.
int64_t bf16_panel_boundary(int64_t n, int64_t N);

}  // namespace dsmoe::cpu
