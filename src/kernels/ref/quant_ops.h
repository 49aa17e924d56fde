// quant_ops.h (ref): the scalar reference for products with a QuantMatrix: dequantize each weight
// row to float32 and take exact (double-accumulated) dot products with the float32 activations.
// The fast version is cpu::quant_linear_forward (kernels/cpu/quant_ops.h), which also rounds the
// activations (to bf16, or to Q8_0 blocks); tests/test_quant.cpp bounds the difference.
#pragma once
#include <cstdint>
#include <vector>

#include "kernels/quant.h"

namespace dsmoe::ref {

// out[m, n] = sum_k inp[m, k] * dequant(w)[n, k]   (out [M, w.rows], inp [M, w.cols])
inline void quant_linear_forward(float* out, const float* inp, const QuantMatrix& w, int64_t M) {
  const int64_t N = w.rows, K = w.cols;
  std::vector<float> weight_row(K);  // (K,)
  for (int64_t n = 0; n < N; n++) {
    dequantize_matrix_row(w, n, weight_row.data());
    for (int64_t m = 0; m < M; m++) {
      double sum = 0;
      for (int64_t k = 0; k < K; k++) sum += static_cast<double>(inp[m * K + k]) * weight_row[k];
      out[m * N + n] = static_cast<float>(sum);
    }
  }
}

}  // namespace dsmoe::ref
