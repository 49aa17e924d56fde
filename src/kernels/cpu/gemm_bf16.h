// gemm_bf16.h (cpu): float32 matrix products with the inputs rounded to bf16 and float32 sums,
// on AVX512-BF16's vdpbf16ps where the CPU has it (Zen 4, Sapphire Rapids and later) and a
// portable loop with the same arithmetic elsewhere. For bf16 inference (prefill) and bf16
// mixed-precision training. Tests in tests/test_gemm_bf16.cpp. No SIMD types here.
#pragma once
#include <cstdint>

namespace dsmoe::cpu {

// True when the fast vdpbf16ps kernels run on this CPU (else the portable fallback is used).
bool gemm_bf16_native();

// Test-only: true makes every call take the portable fallback, false restores the dispatch.
void gemm_bf16_force_portable(bool on);

// C[M,N] = alpha * op(A)[M,K] . op(B)[K,N] + beta * C, all float32 in memory, row-major with
// leading dimensions (same contract as cpu::gemm in kernels/cpu/ops.h, including beta == 0
// meaning C is overwritten without being read, and K == 0 meaning C = beta*C); op(A) = A or A^T
// (trans_a: A stored [K,M]), op(B) = B or B^T (trans_b: B stored [N,K]).
// The A and B elements are rounded to bf16 (nearest even; float32 denormals become zero, as
// vdpbf16ps reads bf16 denormals as zero) while being packed; products are exact (those below
// float32's smallest normal are zero), sums float32: per element, K is summed in blocks of a
// fixed length (the products in k order, k + 1 before k within a pair, as vdpbf16ps does), each
// block's sum s added as C = alpha * s + beta * C (one rounding; beta = 1 after the first block).
// The result does not depend on the thread count: threads split M and N, never K. Parallel
// over tiles with OpenMP.
void gemm_bf16(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, float alpha,
               const float* A, int64_t lda, const float* B, int64_t ldb, float beta, float* C,
               int64_t ldc);

// Inference: out[M,N] = x[M,K] . w^T where w is a bf16 weight matrix [N,K] stored row after row
// (uint16_t bf16 bit patterns, row stride w_stride elements), x float32 rounded to bf16.
// Same arithmetic as gemm_bf16 (alpha = 1, beta = 0); bf16 denormal weights count as zero.
void gemm_bf16_weights(float* out, const float* x, int64_t M, const uint16_t* w, int64_t N,
                       int64_t K, int64_t w_stride);

// The same product, with the same results, for a weight matrix [N, K] held in the panel layout
// (kernels/quant.h: QuantMatrix::panels), which is the packed form this GEMM computes on: nothing
// is packed per call.
void gemm_bf16_panels(float* out, const float* x, int64_t M, const uint16_t* panels, int64_t N,
                      int64_t K);

// Whether bf16-weight products run faster on float32 FMAs than on vdpbf16ps: where the CPU lacks
// AVX512-BF16, or where its vdpbf16ps does not reach 1.25x the multiply-adds of its FMAs
// (measured once, ~2 ms: on Sapphire Rapids it reaches half). Zen 4 / Zen 5: false. Then
// quant_linear_forward takes the panel row kernels (float32 FMAs, up to 7 rows per weight load)
// for every M instead of the bf16 GEMM (on [1408, 2048], 2 threads, Sapphire Rapids: 0.23 vs
// 0.56 ms at M = 8, 2.5 vs 3.7 at 128, 10.6 vs 14.7 at 512), and gemm_bf16_expanded where the
// weights are not panels.
bool bf16_products_prefer_f32();

// out[M, N] = x[M, K] . w^T for bf16 weights w [N, K] stored row after row (row stride w_stride):
// 64 rows at a time expanded to float32 (exact) and multiplied by BLAS sgemm with the float32
// activations (no rounding to bf16), the threads over the blocks. On [1408, 2048], 2 threads:
// 1.33x the bf16 GEMM at M = 128, 1.57x at 512 (Sapphire Rapids).
void gemm_bf16_expanded(float* out, const float* x, int64_t M, const uint16_t* w, int64_t N,
                        int64_t K, int64_t w_stride);

}  // namespace dsmoe::cpu
