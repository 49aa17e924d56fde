// bf16_panels.h (cpu): the matrix-vector side of bf16 weights held in the bf16 GEMM's panel
// layout (kernels/quant.h, QuantMatrix::panels): decode streams each 64-row group of weights
// once, k pair after k pair (the pairs vdpbf16ps takes, for the GEMM). The GEMM side is
// cpu::gemm_bf16_panels (kernels/cpu/gemm_bf16.h). Tests in tests/test_bf16_panels.cpp.
#pragma once
#include <cstdint>

namespace dsmoe::cpu {

// Rows [n_begin, n_end) of out[M, N] (row stride N) = x . w^T, w a bf16 panel matrix [N, K],
// x[M, K] float32: products exact (bf16 weights widened to float32, FMAs), sums float32 (the even
// and odd k apart over K, then added). n_begin and n_end are multiples of kPanelGroupRows (or N).
// One thread: callers split the groups between threads. AVX-512 where the CPU has it, a scalar
// loop with the same FMAs (the same bits) otherwise. Rows go through in passes of up to 7, each
// panel load feeding every row of the pass (a row's bits do not depend on M).
void bf16_panel_rows(const float* x, int64_t M, const uint16_t* panels, int64_t N, int64_t K,
                     float* out, int64_t n_begin, int64_t n_end);

// n (a row range's end or start, 0 <= n <= N) moved to the nearest group start, or to N from
// the last group on: the boundaries bf16_panel_rows needs, in the order of n.
int64_t bf16_panel_boundary(int64_t n, int64_t N);

}  // namespace dsmoe::cpu
