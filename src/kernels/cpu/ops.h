// ops.h (cpu): the fast float32 kernels the model calls: BLAS for matrix products, OpenMP over
// rows, tokens and heads elsewhere. Each has a scalar twin in kernels/ref/ops.h and a test row in
// tests/test_kernels.cpp.
#pragma once
#include <cstdint>

#include "kernels/attention_shape.h"
#include "tensor/tensor.h"

namespace dsmoe::cpu {

// out[M, N] = inp[M, K] . weight[N, K]^T
void linear_forward(float* out, const float* inp, const float* weight, int64_t M, int64_t K,
                    int64_t N);

// out[M, N] = inp[M, K] . weight^T for a weight Tensor [N, K] held as float32 (BLAS) or in a
// quantized format (weight.quant: bf16 / Q8_0 / Q4_0 kernels).
void linear(float* out, const float* inp, const Tensor& weight, int64_t M, int64_t K, int64_t N);

// The arithmetic of gemm (and so of linear_forward / linear_backward): kF32, float32 products
// (OpenBLAS); kBF16, A and B rounded to bf16 and their exact products summed in float32
// (cpu::gemm_bf16 on the bf16 dot-product units): bf16 mixed-precision training, where master
// weights, gradients and optimizer state stay float32. Process-wide, like PyTorch's autocast;
// attention's score and value products and the MoE router's (model/router.cpp) stay float32.
// MatmulPrecisionScope sets it for a scope; set it outside parallel regions only.
enum class MatmulPrecision { kF32, kBF16 };
// Row-invariant products: OpenBLAS runs products of up to 100^3 multiply-adds on small-matrix
// kernels that sum in another order than its blocked ones, so a row's bits depend on how many
// rows share the product (a sequence alone or in a batch; a batch split over ranks). When set,
// gemm pads such products (A untransposed) with zero rows past that size: every row's result is
// then independent of M, at a cost of at most 10^6 multiply-adds per (small) product. The dsmoe
// command sets it (so that one process and mpirun give the same bits); off by default.
void set_row_invariant_products(bool on);
void set_matmul_precision(MatmulPrecision precision);
MatmulPrecision matmul_precision();
class MatmulPrecisionScope {
 public:
  explicit MatmulPrecisionScope(MatmulPrecision precision) : previous_(matmul_precision()) {
    set_matmul_precision(precision);
  }
  ~MatmulPrecisionScope() { set_matmul_precision(previous_); }
  MatmulPrecisionScope(const MatmulPrecisionScope&) = delete;
  MatmulPrecisionScope& operator=(const MatmulPrecisionScope&) = delete;

 private:
  MatmulPrecision previous_;
};

// Row kernels: while on, every product of float32 activation rows with a weight matrix (linear,
// linear_forward_f32, gemm without trans_a, quant_linear_forward and its group) gives each row
// the bits that row gets alone (M = 1): the matrix-vector kernels run over the M rows (quantized
// weights: each weight row read once for all of them; float32: one gemv per row). Batched decode
// (Model::forward_cached_batch) turns it on, so that a sequence's logits do not depend on the
// other sequences of its batch. Process-wide like matmul_precision; RowKernelsScope sets it for
// a scope, outside parallel regions only.
void set_row_kernels(bool on);
bool row_kernels();
class RowKernelsScope {
 public:
  explicit RowKernelsScope(bool on = true) : previous_(row_kernels()) { set_row_kernels(on); }
  ~RowKernelsScope() { set_row_kernels(previous_); }
  RowKernelsScope(const RowKernelsScope&) = delete;
  RowKernelsScope& operator=(const RowKernelsScope&) = delete;

 private:
  bool previous_;
};

// Float32 products whatever matmul_precision(), with bits that do not depend on the thread
// count (OpenBLAS's threaded sgemm splits differently per thread count): the MoE router's,
// which stay float32 under kBF16 while bf16 training stays identical across thread counts.
void linear_forward_f32(float* out, const float* inp, const float* weight, int64_t M, int64_t K,
                        int64_t N);
void linear_backward_f32(float* dinp, float* dweight, const float* dout, const float* inp,
                         const float* weight, int64_t M, int64_t K, int64_t N);

// General row-major product C[M, N] = alpha * op(A) . op(B) + beta * C, op = transpose or not,
// in the current matmul_precision().
void gemm(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, float alpha, const float* A,
          int64_t lda, const float* B, int64_t ldb, float beta, float* C, int64_t ldc);

// out[M, C] = rmsnorm(inp[M, C]) * weight[C]
void rmsnorm_forward(float* out, const float* inp, const float* weight, int64_t M, int64_t C,
                     float eps);

// out[n] = silu(gate[n]) * up[n]
void silu_mul_forward(float* out, const float* gate, const float* up, int64_t n);

// sum a[i] * b[i] in double, kept in 8 partial sums (a fixed order at any vector width) so that
// the loop vectorizes; dot_f64(x, x, n) is the sum of squares.
double dot_f64(const float* a, const float* b, int64_t n);

// Cross-entropy of one row of logits[n] against `target`: returns log(sum_v exp(logits_v)) -
// logits[target]; with dlogits, writes d loss / d logits times scale: scale * (softmax(logits) -
// onehot(target)). See ref::cross_entropy_row.
double cross_entropy_row(const float* logits, int64_t n, int64_t target, float scale,
                         float* dlogits);

// RoPE in place, see ref::rope_forward.
void rope_forward(float* x, int64_t n_tokens, int64_t n_heads, int64_t token_stride,
                  int64_t head_stride, int64_t rope_dim, const float* cos, const float* sin,
                  bool interleaved);

// Causal attention, see ref::attention_forward; parallel over (token, head).
void attention_forward(float* out, const float* q, const float* k, const float* v,
                       const AttentionShape& shape);

// ---------------------------------------------------------------------------- backward
// Accumulate (+=) into gradients like the ref versions; null pointers skip a gradient.

// dinp[M, K] += dout[M, N] . weight[N, K]; dweight[N, K] += dout^T . inp[M, K].
void linear_backward(float* dinp, float* dweight, const float* dout, const float* inp,
                     const float* weight, int64_t M, int64_t K, int64_t N);

void rmsnorm_backward(float* dinp, float* dweight, const float* dout, const float* inp,
                      const float* weight, int64_t M, int64_t C, float eps);

// Overwrites dgate and dup.
void silu_mul_backward(float* dgate, float* dup, const float* dout, const float* gate,
                       const float* up, int64_t n);

// Of rope_forward: rotates dx back by the same angles, in place.
void rope_backward(float* dx, int64_t n_tokens, int64_t n_heads, int64_t token_stride,
                   int64_t head_stride, int64_t rope_dim, const float* cos, const float* sin,
                   bool interleaved);

// Of attention_forward; parallel over KV heads (each owns its dk, dv and its heads' dq).
void attention_backward(float* dq, float* dk, float* dv, const float* dout, const float* q,
                        const float* k, const float* v, const float* out,
                        const AttentionShape& shape);

}  // namespace dsmoe::cpu
