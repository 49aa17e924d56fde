// gemm_quant.h (cpu): matrix products of float32 activations (M > 1 rows, prefill) with Q8_0 /
// Q4_0 weights on AVX-512 VNNI, in the layout of oneDNN's int8 GEMMs (weight panels packed per
// call or read in place, activations quantized to Q8_0 once). Same results as
// cpu::quant_linear_forward up to the order of float32 sums; tests in tests/test_gemm_quant.cpp. No
// SIMD types here.
#pragma once
#include <cstdint>

#include "kernels/cpu/quant_ops.h"
#include "kernels/quant.h"

namespace dsmoe::cpu {

// True when the VNNI kernels run on this CPU (Highway's AVX3_DL target: AVX-512 with VNNI).
bool gemm_quant_native();

// quantize_block_q8_0 (kernels/quant.h) of the nb blocks at x into y, bit for bit, vectorized
// (the VNNI target only: false, nothing written, on other CPUs); scale[b] is block b's scale as
// float, NaN where the block failed (then y[b] is zero, as quantize_block_q8_0 leaves it).
bool quantize_blocks_q8_0_native(const float* x, int64_t nb, BlockQ8_0* y, float* scale);

// out[M, w.rows] = x[M, w.cols] . w^T for w in Q8_0 or Q4_0 (an Error-free kernel: the caller
// guarantees the format); the semantics of quant_linear_forward: each activation row is quantized
// to Q8_0 blocks (a block that cannot be quantized gets a NaN scale), each block's 32 products
// are summed exactly in int32, and scale_w * scale_x * sum is accumulated in float32. Parallel
// (OpenMP) over N panels and M blocks, never over K, so results do not depend on the thread
// count. Without VNNI it calls quant_linear_forward.
void gemm_quant(float* out, const float* x, int64_t M, const QuantMatrix& w);

// gemm_quant for every job of a group (Q8_0 / Q4_0 weights, M >= 1), in one parallel region:
// each distinct input (pointer, M, K, zero point) quantized once, then chunks of the jobs' panels
// claimed by the threads as they come (prefill's MoE layer: the gate and up products of all
// experts, then their down products). Results bit for bit those of gemm_quant per job.
void gemm_quant_group(const QuantJob* jobs, int64_t n_jobs);

}  // namespace dsmoe::cpu
