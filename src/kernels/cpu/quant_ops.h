// quant_ops.h (cpu): fast products of float32 activations with a QuantMatrix (bf16, Q8_0, Q4_0
// or f32 weights), compiled by Highway for every x86 instruction set (AVX3_DL with VNNI, AVX3,
// AVX2, SSE4, ...) and dispatched at run time. Scalar twin: ref::quant_linear_forward in
// kernels/ref/quant_ops.h; tests in tests/test_quant.cpp. No SIMD types here.
#pragma once
#include <cstdint>

#include "kernels/quant.h"

namespace dsmoe::cpu {

// out[m, n] = sum_k inp[m, k] * w[n, k]   (out [M, w.rows], inp [M, w.cols]).
// With few activation rows (decode) row kernels, parallel over the rows of w; from a few rows
// on (prefill), GEMMs on packed weight panels (cpu::gemm_bf16_weights, cpu::gemm_quant):
//  * f32:  cpu::linear_forward (BLAS).
//  * bf16: row kernels split each activation row once into bf16 hi + lo parts (16 significant
//          bits) and sum the bf16 x bf16 products of both parts with the weights in float32;
//          the GEMM (M >= 8) rounds the activations to bf16 once (bf16 dot-product units).
//          Weights in the panel layout (QuantMatrix::panels) go to cpu::gemm_bf16_panels and
//          cpu::bf16_panel_rows, with the same arithmetic.
//  * Q8_0, Q4_0: each activation row is quantized to Q8_0 blocks once (as llama.cpp's
//          vec_dot_q8_0_q8_0 / vec_dot_q4_0_q8_0), the 32 int8 x int8 products of a block are
//          summed exactly in int32, and scale_w * scale_x * sum is accumulated in float32 (the
//          same in the VNNI GEMM, M >= 2, up to the order of the float32 sums).
//  * fp8:  float32 activations times the e4m3 weights converted in registers, float32 sums
//          (cpu::fp8_rows); from kGemmMinRowsFP8 rows (kGemmMinRowsFP8Gfni where fp8_rows has
//          its GFNI kernel) the float32 GEMM on the weights expanded per 128 rows
//          (cpu::gemm_fp8).
void quant_linear_forward(float* out, const float* inp, const QuantMatrix& w, int64_t M);
// Activation rows from which quant_linear_forward takes the GEMMs. bf16: from 8 rows the GEMM on
// the activations' bf16 hi and lo parts as 2M rows (the row kernels' 16-bit activations, so
// that greedy decoding of float32 models stays on its float32 path: tests/test_golden.cpp);
// from 32 rows (long prompts, the MoE experts' token groups in prefill) once, on bf16
// activations, as the bf16 dot-product units take them.
constexpr int64_t kGemmMinRowsBF16 = 8;
constexpr int64_t kGemmSinglePassMinRowsBF16 = 32;
constexpr int64_t kGemmMinRowsQuant = 2;
// fp8 (cpu::gemm_fp8): the GEMM expands each weight once per call (128 rows at a time) and runs
// BLAS; the row kernels convert it once per 3-4 activation rows. Measured on [1408, 2048] (2
// threads, idle Sapphire Rapids, ms): GFNI rows 1.59 / 2.42 / 3.10 at M = 32 / 48 / 64, the
// GEMM 1.64 / 1.83 / 2.22; the f16-route rows (no GFNI) about 1.5x the GFNI ones, the GEMM at M
// = 16 / 24 1.10 / 1.27.
constexpr int64_t kGemmMinRowsFP8 = 16;
constexpr int64_t kGemmMinRowsFP8Gfni = 40;
// The row kernels above alone, for any M (the GEMMs' fallback, and their tests' baseline).
void quant_linear_forward_rows(float* out, const float* inp, const QuantMatrix& w, int64_t M);

// One product of a group: out[M, w->rows] = inp[M, w->cols] . w^T, w quantized (not f32).
struct QuantJob {
  float* out;
  const float* inp;
  const QuantMatrix* w;
  int64_t M;
};
// Runs every job of the group with the results of quant_linear_forward, in one parallel region
// (the rows of all jobs cut into chunks by bytes read, which the threads claim as they come);
// jobs with the same input (pointer, M,
// K, format family) share its rounding. For decode, where each product is a matrix-vector
// product too small to amortize waking the threads: the MoE experts' gate and up projections,
// then their down projections. Jobs that take the Q8_0 / Q4_0 GEMM (prefill's experts) run
// together in cpu::gemm_quant_group, the others' GEMMs one by one.
void quant_linear_forward_group(const QuantJob* jobs, int64_t n_jobs);

// Highway target bits (HWY_AVX3_DL, HWY_AVX2, ...): those the quant kernels were compiled for,
// and the one quant_linear_forward dispatches to now (the best compiled target the CPU
// supports, unless a test narrowed hwy::SetSupportedTargetsForTest).
int64_t quant_compiled_targets();
int64_t quant_dispatch_target();

}  // namespace dsmoe::cpu
