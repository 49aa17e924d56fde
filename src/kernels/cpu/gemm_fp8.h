// gemm_fp8.h (cpu): products of float32 activations with FP8 weights as DeepSeek-V3 ships them
// (kernels/quant.h, WeightFormat::kFP8: e4m3 bytes, one float32 scale per 128 x 128 block),
// computed on the bytes as stored: the row kernels (decode) convert e4m3 to float32 in registers,
// the GEMM (prefill) expands 128 rows at a time to float32 for BLAS. Highway,
// dispatched at run time (AVX-512 and AVX2 copies among others). Tests in tests/test_fp8.cpp.
// No SIMD types here.
#pragma once
#include <cstdint>

#include "kernels/quant.h"

namespace dsmoe::cpu {

// Rows [n_begin, n_end) of out[M, w.rows] (row stride w.rows) = x[M, w.cols] . dequant(w)^T,
// w in kFP8 (the caller guarantees it). Each e4m3 byte becomes a float32 exactly, subnormals
// included (the NaN codes are read as 480, so loading rejects them: fp8_first_nan).
//  * AVX-512 with GFNI and VBMI (fp8_rows_gfni(); kernels/cpu/gemm_fp8_gfni-inl.h): the byte's
//    bits spread into a float32 e4m3 * 2^-120 by one vgf2p8affineqb and a vpermb per 16
//    weights (a 64-byte chunk with a zero or a subnormal through the f16 route below); the
//    activations times their column block's scale (and 2^96) once per 128 weight rows; the
//    products summed in float32 over the whole row. Against the expanded weights: the order of
//    the sums and one more rounding per product (x * scale).
//  * Elsewhere: the f16 bits ((b & 0x80) << 8) | ((b & 0x7F) << 7) widened by vcvtph2ps (e4m3 *
//    2^-8), the products with x summed in float32 per 128-column block, each block's sum times
//    its scale * 2^8 added in float32: only the order of the sums and the one rounding of the
//    expanded weight differ.
// Each activation row's bits do not depend on M or on the rows' split. One thread: callers split
// the rows.
void fp8_rows(const float* x, int64_t M, const QuantMatrix& w, float* out, int64_t n_begin,
              int64_t n_end);

// Whether fp8_rows takes the GFNI kernel here (the CPU and DSMOE_MAX_ISA allow it): then
// quant_linear_forward takes gemm_fp8 from more rows (quant_ops.h).
bool fp8_rows_gfni();

// out[M, w.rows] = x[M, w.cols] . dequant(w)^T for many activation rows (prefill): per block of
// 128 weight rows, the weights expanded to float32 (e4m3 * scale rounded once: the float32 model
// of the checkpoint, exactly) and the float32 GEMM (cpu::gemm, BLAS) of the block, the threads
// over the blocks (the result does not depend on the thread count). On [1408, 2048], 2 threads,
// Sapphire Rapids: 1.83 ms at M = 48 against 2.42 for the GFNI row kernels, 13.5 against 25.3
// at 512; the bf16 GEMM on hi + lo activations it replaced took 3.9 / 40.5.
void gemm_fp8(float* out, const float* x, int64_t M, const QuantMatrix& w);

}  // namespace dsmoe::cpu
