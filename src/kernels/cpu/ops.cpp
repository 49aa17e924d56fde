#include "kernels/cpu/ops.h"

#include <cblas.h>

#include <algorithm>
#include <atomic>
#include <bit>
#include <cmath>
#include <vector>

#include "kernels/cpu/exp.h"
#include "kernels/cpu/gemm_bf16.h"
#include "kernels/cpu/quant_ops.h"
#include "kernels/cpu/shared_kv_attention.h"
#include "kernels/quant.h"
#include "kernels/ref/ops.h"
#include "util/multiversion.h"

namespace dsmoe::cpu {

void linear_forward(float* out, const float* inp, const float* weight, int64_t M, int64_t K,
                    int64_t N) {
  gemm(false, true, M, N, K, 1.0f, inp, K, weight, K, 0.0f, out, N);
}

void linear(float* out, const float* inp, const Tensor& weight, int64_t M, int64_t K, int64_t N) {
  if (weight.quant != nullptr)
    quant_linear_forward(out, inp, *weight.quant, M);
  else
    linear_forward(out, inp, weight.data, M, K, N);
}

namespace {
std::atomic<MatmulPrecision> g_matmul_precision{MatmulPrecision::kF32};
}  // namespace

void set_matmul_precision(MatmulPrecision precision) { g_matmul_precision = precision; }

namespace {
std::atomic<bool> g_row_invariant{false};
}  // namespace

void set_row_invariant_products(bool on) { g_row_invariant = on; }

MatmulPrecision matmul_precision() { return g_matmul_precision; }

namespace {
std::atomic<bool> g_row_kernels{false};
}  // namespace

void set_row_kernels(bool on) { g_row_kernels = on; }

bool row_kernels() { return g_row_kernels; }

void gemm(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, float alpha, const float* A,
          int64_t lda, const float* B, int64_t ldb, float beta, float* C, int64_t ldc) {
  if (M == 0 || N == 0) return;
  if (g_matmul_precision == MatmulPrecision::kBF16) {
    gemm_bf16(trans_a, trans_b, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
    return;
  }
  if (K == 0) {  // BLAS leaves C untouched only for beta == 1; make K == 0 mean "scale C".
    for (int64_t m = 0; m < M; m++)
      for (int64_t n = 0; n < N; n++) C[m * ldc + n] = beta == 0.0f ? 0.0f : beta * C[m * ldc + n];
    return;
  }
  if (M > 1 && !trans_a && g_row_kernels) {  // each row as its own matrix-vector product
    for (int64_t m = 0; m < M; m++)
      gemm(false, trans_b, 1, N, K, alpha, A + m * lda, lda, B, ldb, beta, C + m * ldc, ldc);
    return;
  }
  if (M == 1 && !trans_a) {  // a matrix-vector product (decode): gemv streams B once
    if (trans_b)             // C[1, N] = A[1, K] . B[N, K]^T
      cblas_sgemv(CblasRowMajor, CblasNoTrans, static_cast<int>(N), static_cast<int>(K), alpha, B,
                  static_cast<int>(ldb), A, 1, beta, C, 1);
    else  // C[1, N] = A[1, K] . B[K, N]
      cblas_sgemv(CblasRowMajor, CblasTrans, static_cast<int>(K), static_cast<int>(N), alpha, B,
                  static_cast<int>(ldb), A, 1, beta, C, 1);
    return;
  }
  // Row-invariant products (set_row_invariant_products): small products padded with zero rows
  // past OpenBLAS's small-matrix size.
  constexpr int64_t kSmallProduct = 1000000;
  if (g_row_invariant && !trans_a && M * N * K <= kSmallProduct) {
    const int64_t padded = kSmallProduct / (N * K) + 1;
    std::vector<float> a_pad(padded * K, 0.0f), c_pad(padded * N, 0.0f);
    for (int64_t m = 0; m < M; m++) {
      std::copy(A + m * lda, A + m * lda + K, a_pad.data() + m * K);
      if (beta != 0.0f) std::copy(C + m * ldc, C + m * ldc + N, c_pad.data() + m * N);
    }
    cblas_sgemm(CblasRowMajor, CblasNoTrans, trans_b ? CblasTrans : CblasNoTrans,
                static_cast<int>(padded), static_cast<int>(N), static_cast<int>(K), alpha,
                a_pad.data(), static_cast<int>(K), B, static_cast<int>(ldb), beta, c_pad.data(),
                static_cast<int>(N));
    for (int64_t m = 0; m < M; m++)
      std::copy(c_pad.data() + m * N, c_pad.data() + (m + 1) * N, C + m * ldc);
    return;
  }
  cblas_sgemm(CblasRowMajor, trans_a ? CblasTrans : CblasNoTrans,
              trans_b ? CblasTrans : CblasNoTrans, static_cast<int>(M), static_cast<int>(N),
              static_cast<int>(K), alpha, A, static_cast<int>(lda), B, static_cast<int>(ldb), beta,
              C, static_cast<int>(ldc));
}

DSMOE_MULTIVERSION_BODY double dot_f64_body(const float* a, const float* b, int64_t n) {
  constexpr int64_t kLanes = 8;
  const int64_t n_blocked = n / kLanes * kLanes;
  double lane[kLanes] = {};
  for (int64_t i = 0; i < n_blocked; i += kLanes)
    for (int64_t l = 0; l < kLanes; l++)
      lane[l] += static_cast<double>(a[i + l]) * static_cast<double>(b[i + l]);
  double sum = 0.0;
  for (int64_t i = n_blocked; i < n; i++) sum += static_cast<double>(a[i]) * b[i];
  for (int64_t l = 0; l < kLanes; l++) sum += lane[l];
  return sum;
}

double dot_f64(const float* a, const float* b, int64_t n) {
  return multiversion<dot_f64_body>(a, b, n);
}

namespace {

// The rmsnorm rows: sums in double as ref::rmsnorm_forward / backward, kept in kLanes partial
// sums so that the loops vectorize (a serial double sum waits on every add).
constexpr int64_t kNormLanes = 8;

float row_rstd(const float* x, int64_t C, float eps) {
  return static_cast<float>(1.0 / std::sqrt(dot_f64(x, x, C) / C + eps));
}

// dinp[C] += rstd * (dy * weight - xhat * mean(dy * weight * xhat)), xhat = x * rstd.
DSMOE_MULTIVERSION_BODY void rmsnorm_backward_row_body(float* dinp, const float* dy, const float* x,
                                                       const float* weight, float rstd, int64_t C) {
  const int64_t n_blocked = C / kNormLanes * kNormLanes;
  double lane[kNormLanes] = {};
  for (int64_t c = 0; c < n_blocked; c += kNormLanes)
    for (int64_t l = 0; l < kNormLanes; l++)
      lane[l] += static_cast<double>(dy[c + l]) * weight[c + l] * x[c + l] * rstd;
  double dot = 0.0;
  for (int64_t c = n_blocked; c < C; c++)
    dot += static_cast<double>(dy[c]) * weight[c] * x[c] * rstd;
  for (int64_t l = 0; l < kNormLanes; l++) dot += lane[l];
  const float mean_dot = static_cast<float>(dot / C);
  for (int64_t c = 0; c < C; c++) {
    const float xhat = x[c] * rstd;
    dinp[c] += rstd * (dy[c] * weight[c] - xhat * mean_dot);
  }
}

void rmsnorm_backward_row(float* dinp, const float* dy, const float* x, const float* weight,
                          float rstd, int64_t C) {
  multiversion<rmsnorm_backward_row_body>(dinp, dy, x, weight, rstd, C);
}

}  // namespace

namespace {

// gemm in float32 over fixed tiles of C, each one single-threaded BLAS call (OpenBLAS runs on the
// calling thread inside a parallel region) with the whole K: the same bits for any thread count.
void gemm_f32_fixed_tiles(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, float alpha,
                          const float* A, int64_t lda, const float* B, int64_t ldb, float beta,
                          float* C, int64_t ldc) {
  if (M == 0 || N == 0) return;
  if (K == 0) {  // as gemm: K == 0 scales C
    for (int64_t m = 0; m < M; m++)
      for (int64_t n = 0; n < N; n++) C[m * ldc + n] = beta == 0.0f ? 0.0f : beta * C[m * ldc + n];
    return;
  }
  constexpr int64_t kTile = 256;
  const int64_t tiles_m = (M + kTile - 1) / kTile, tiles_n = (N + kTile - 1) / kTile;
#pragma omp parallel for schedule(dynamic, 1) if (tiles_m * tiles_n > 1)
  for (int64_t tile = 0; tile < tiles_m * tiles_n; tile++) {
    const int64_t m0 = tile / tiles_n * kTile, n0 = tile % tiles_n * kTile;
    const int64_t rows = std::min(kTile, M - m0), cols = std::min(kTile, N - n0);
    const float* a = trans_a ? A + m0 : A + m0 * lda;  // rows m0.. of op(A)
    const float* b = trans_b ? B + n0 * ldb : B + n0;  // columns n0.. of op(B)
    cblas_sgemm(CblasRowMajor, trans_a ? CblasTrans : CblasNoTrans,
                trans_b ? CblasTrans : CblasNoTrans, static_cast<int>(rows), static_cast<int>(cols),
                static_cast<int>(K), alpha, a, static_cast<int>(lda), b, static_cast<int>(ldb),
                beta, C + m0 * ldc + n0, static_cast<int>(ldc));
  }
}

}  // namespace

namespace {

// sum_k a[k] * b[k] in float32, in kDotLanes running sums (element k into lane k % kDotLanes, the
// lanes added in order at the end): the same order on every CPU, vectorized by the AVX-512 copy.
constexpr int64_t kDotLanes = 32;
DSMOE_MULTIVERSION_BODY float dot_f32_body(const float* a, const float* b, int64_t n) {
  const int64_t n_blocked = n / kDotLanes * kDotLanes;
  float lane[kDotLanes] = {};
  for (int64_t i = 0; i < n_blocked; i += kDotLanes)
    for (int64_t l = 0; l < kDotLanes; l++) lane[l] += a[i + l] * b[i + l];
  float sum = 0.0f;
  for (int64_t i = n_blocked; i < n; i++) sum += a[i] * b[i];
  for (int64_t l = 0; l < kDotLanes; l++) sum += lane[l];
  return sum;
}

// out[N] = weight[N, K] . x[K] for one activation row (decode's router): one dot per weight row,
// the rows split over the threads in a fixed way (the same bits for any thread count). BLAS's
// sgemm at M = 1 packed the whole weight first, on one thread (3.6% of a Q4_0 decoded token).
void matvec_f32(float* out, const float* x, const float* weight, int64_t K, int64_t N) {
#pragma omp parallel for schedule(static) if (N * K >= (int64_t{1} << 16))
  for (int64_t n = 0; n < N; n++) out[n] = multiversion<dot_f32_body>(x, weight + n * K, K);
}

}  // namespace

void linear_forward_f32(float* out, const float* inp, const float* weight, int64_t M, int64_t K,
                        int64_t N) {
  if (M == 1 || g_row_kernels) {  // each row alone (see set_row_kernels)
    for (int64_t m = 0; m < M; m++) matvec_f32(out + m * N, inp + m * K, weight, K, N);
    return;
  }
  gemm_f32_fixed_tiles(false, true, M, N, K, 1.0f, inp, K, weight, K, 0.0f, out, N);
}

void linear_backward_f32(float* dinp, float* dweight, const float* dout, const float* inp,
                         const float* weight, int64_t M, int64_t K, int64_t N) {
  if (dinp != nullptr)
    gemm_f32_fixed_tiles(false, false, M, K, N, 1.0f, dout, N, weight, K, 1.0f, dinp, K);
  if (dweight != nullptr)
    gemm_f32_fixed_tiles(true, false, N, K, M, 1.0f, dout, N, inp, K, 1.0f, dweight, K);
}

void rmsnorm_forward(float* out, const float* inp, const float* weight, int64_t M, int64_t C,
                     float eps) {
#pragma omp parallel for schedule(static) if (M * C > 16384)
  for (int64_t m = 0; m < M; m++) {
    const float* x = inp + m * C;
    const float rstd = row_rstd(x, C, eps);
    for (int64_t c = 0; c < C; c++) out[m * C + c] = x[c] * rstd * weight[c];
  }
}

namespace {

// Compiled also for AVX-512 and picked at run time (util/multiversion.h): the elementwise loops
// run 16 lanes wide where the CPU (and DSMOE_MAX_ISA) allows, 4 (SSE2) elsewhere.
DSMOE_MULTIVERSION_BODY void silu_mul_forward_chunk_body(float* out, const float* gate,
                                                         const float* up, int64_t n) {
  for (int64_t i = 0; i < n; i++) out[i] = gate[i] / (1.0f + exp_vectorizable(-gate[i])) * up[i];
}

void silu_mul_forward_chunk(float* out, const float* gate, const float* up, int64_t n) {
  multiversion<silu_mul_forward_chunk_body>(out, gate, up, n);
}

DSMOE_MULTIVERSION_BODY void silu_mul_backward_chunk_body(float* dgate, float* dup,
                                                          const float* dout, const float* gate,
                                                          const float* up, int64_t n) {
  for (int64_t i = 0; i < n; i++) {  // as ref::silu_mul_backward
    const float sigma = 1.0f / (1.0f + exp_vectorizable(-gate[i]));
    dup[i] = dout[i] * gate[i] * sigma;
    dgate[i] = dout[i] * up[i] * sigma * (1.0f + gate[i] * (1.0f - sigma));
  }
}

void silu_mul_backward_chunk(float* dgate, float* dup, const float* dout, const float* gate,
                             const float* up, int64_t n) {
  multiversion<silu_mul_backward_chunk_body>(dgate, dup, dout, gate, up, n);
}

// Partial results of the row loops below (softmax, cross-entropy): they vectorize at any width,
// and the order of their sums is fixed.
constexpr int64_t kRowLanes = 16;

// max of x[0, n), kept in kRowLanes partial maxima.
inline float max_in_lanes(const float* x, int64_t n) {
  const int64_t n_blocked = n / kRowLanes * kRowLanes;
  float lane[kRowLanes];
  std::fill_n(lane, kRowLanes, -INFINITY);
  for (int64_t j = 0; j < n_blocked; j += kRowLanes)
    for (int64_t l = 0; l < kRowLanes; l++) lane[l] = std::max(lane[l], x[j + l]);
  float max_value = -INFINITY;
  for (int64_t j = n_blocked; j < n; j++) max_value = std::max(max_value, x[j]);
  for (int64_t l = 0; l < kRowLanes; l++) max_value = std::max(max_value, lane[l]);
  return max_value;
}

// In place: softmax over row[0, n_visible), zeros after (the causal mask). The max and the sum
// are kept in kLanes partial results (so the loops vectorize at any width and the order of the
// sum is fixed).
DSMOE_MULTIVERSION_BODY void masked_softmax_row_body(float* row, int64_t n_visible, int64_t S) {
  constexpr int64_t kLanes = kRowLanes;
  const int64_t n_blocked = n_visible / kLanes * kLanes;
  const float max_score = max_in_lanes(row, n_visible);
  float lane[kLanes];
  std::fill_n(lane, kLanes, 0.0f);
  for (int64_t j = 0; j < n_blocked; j += kLanes)
    for (int64_t l = 0; l < kLanes; l++) {
      row[j + l] = exp_vectorizable(row[j + l] - max_score);
      lane[l] += row[j + l];
    }
  float sum = 0.0f;
  for (int64_t j = n_blocked; j < n_visible; j++) {
    row[j] = exp_vectorizable(row[j] - max_score);
    sum += row[j];
  }
  for (int64_t l = 0; l < kLanes; l++) sum += lane[l];
  const float inv_sum = 1.0f / sum;
  for (int64_t j = 0; j < n_visible; j++) row[j] *= inv_sum;
  std::fill(row + n_visible, row + S, 0.0f);
}

void masked_softmax_row(float* row, int64_t n_visible, int64_t S) {
  multiversion<masked_softmax_row_body>(row, n_visible, S);
}

}  // namespace

void silu_mul_forward(float* out, const float* gate, const float* up, int64_t n) {
  constexpr int64_t kChunk = 4096;
  const int64_t n_chunks = (n + kChunk - 1) / kChunk;
#pragma omp parallel for schedule(static) if (n_chunks > 1)
  for (int64_t c = 0; c < n_chunks; c++) {
    const int64_t begin = c * kChunk, len = std::min(kChunk, n - begin);
    silu_mul_forward_chunk(out + begin, gate + begin, up + begin, len);
  }
}

DSMOE_MULTIVERSION_BODY double cross_entropy_row_body(const float* __restrict__ logits, int64_t n,
                                                      int64_t target, float scale,
                                                      float* __restrict__ dlogits) {
  // Max, then the exponentials in float32 summed in double: kLanes partial results each, so that
  // the loops vectorize and the order of the sum is fixed.
  constexpr int64_t kLanes = kRowLanes;
  const int64_t n_blocked = n / kLanes * kLanes;
  const float max_value = max_in_lanes(logits, n);
  double lane[kLanes] = {};
  for (int64_t v = 0; v < n_blocked; v += kLanes) {
    float e[kLanes];
    for (int64_t l = 0; l < kLanes; l++) e[l] = exp_vectorizable(logits[v + l] - max_value);
    for (int64_t l = 0; l < kLanes; l++) lane[l] += e[l];
    if (dlogits != nullptr) std::copy_n(e, kLanes, dlogits + v);
  }
  double sum = 0.0;
  for (int64_t v = n_blocked; v < n; v++) {
    const float e = exp_vectorizable(logits[v] - max_value);
    sum += e;
    if (dlogits != nullptr) dlogits[v] = e;
  }
  for (int64_t l = 0; l < kLanes; l++) sum += lane[l];
  if (dlogits != nullptr) {
    const float softmax_scale = static_cast<float>(scale / sum);
    for (int64_t v = 0; v < n; v++) dlogits[v] *= softmax_scale;
    dlogits[target] -= scale;
  }
  return std::log(sum) + max_value - logits[target];
}

double cross_entropy_row(const float* __restrict__ logits, int64_t n, int64_t target, float scale,
                         float* __restrict__ dlogits) {
  return multiversion<cross_entropy_row_body>(logits, n, target, scale, dlogits);
}

void rope_forward(float* x, int64_t n_tokens, int64_t n_heads, int64_t token_stride,
                  int64_t head_stride, int64_t rope_dim, const float* cos, const float* sin,
                  bool interleaved) {
  const int64_t half = rope_dim / 2;
#pragma omp parallel for schedule(static) if (n_tokens > 16)
  for (int64_t t = 0; t < n_tokens; t++)
    ref::rope_forward(x + t * token_stride, 1, n_heads, token_stride, head_stride, rope_dim,
                      cos + t * half, sin + t * half, interleaved);
}

namespace {

// Row-by-row attention for few queries (decode): no score matrix, parallel over (token, head).
void attention_forward_rows(float* out, const float* q, const float* k, const float* v,
                            const AttentionShape& s) {
  const int64_t group = s.n_heads / s.n_kv_heads;
  const int64_t n_items = s.n_q_tokens * s.n_heads;
#pragma omp parallel if (n_items > 1)
  {
    std::vector<float> scores(s.n_kv_tokens);
#pragma omp for schedule(dynamic, 4)
    for (int64_t item = 0; item < n_items; item++) {
      const int64_t t = item / s.n_heads, h = item % s.n_heads, kv_head = h / group;
      const float* qrow = q + t * s.q_token_stride + h * s.q_head_stride;
      const int64_t n_visible = s.q_pos0 + t + 1;
      const float* kbase = k + kv_head * s.k_head_stride;
      const float* vbase = v + kv_head * s.v_head_stride;
      float max_score = -INFINITY;
      for (int64_t j = 0; j < n_visible; j++) {
        const float* krow = kbase + j * s.k_token_stride;
        float dot = 0.0f;
        for (int64_t d = 0; d < s.qk_dim; d++) dot += qrow[d] * krow[d];
        scores[j] = dot * s.scale;
        max_score = std::max(max_score, scores[j]);
      }
      float sum = 0.0f;
      for (int64_t j = 0; j < n_visible; j++) {
        scores[j] = std::exp(scores[j] - max_score);
        sum += scores[j];
      }
      const float inv_sum = 1.0f / sum;
      float* orow = out + t * s.out_token_stride + h * s.out_head_stride;
      std::fill(orow, orow + s.v_dim, 0.0f);
      for (int64_t j = 0; j < n_visible; j++) {
        const float p = scores[j] * inv_sum;
        const float* vrow = vbase + j * s.v_token_stride;
        for (int64_t d = 0; d < s.v_dim; d++) orow[d] += p * vrow[d];
      }
    }
  }
}

// Query rows go through the products in blocks: the block of rows [t0, t1) sees only keys
// [0, visible_keys(s, t1)) (the causal mask), so the products skip most of the masked triangle.
constexpr int64_t kRowBlock = 64;

int64_t visible_keys(const AttentionShape& s, int64_t t_end) {
  return std::min(s.n_kv_tokens, s.q_pos0 + t_end);
}

int blas_int(int64_t x) { return static_cast<int>(x); }

// The probabilities of one head: p[T, S] = softmax(scale * q_h . k_h^T) with the causal mask.
void head_probabilities(const float* q, const float* k, const AttentionShape& s, float* p) {
  const int64_t T = s.n_q_tokens, S = s.n_kv_tokens;
  for (int64_t t0 = 0; t0 < T; t0 += kRowBlock) {
    const int64_t rows = std::min(kRowBlock, T - t0), keys = visible_keys(s, t0 + rows);
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, blas_int(rows), blas_int(keys),
                blas_int(s.qk_dim), s.scale, q + t0 * s.q_token_stride, blas_int(s.q_token_stride),
                k, blas_int(s.k_token_stride), 0.0f, p + t0 * S, blas_int(S));
  }
  for (int64_t t = 0; t < T; t++) {
    float* row = p + t * S;
    const int64_t n_visible = s.q_pos0 + t + 1;
    masked_softmax_row(row, n_visible, S);
  }
}

// Score matrices of at most this many elements per head take the GEMM path.
constexpr int64_t kMaxScoreElements = int64_t{1} << 22;

bool use_gemm_path(const AttentionShape& s) {
  return s.n_q_tokens >= 8 && s.n_q_tokens * s.n_kv_tokens <= kMaxScoreElements;
}

// Per head: P = softmax(Q K^T), O = P V as two GEMMs (prefill, training); parallel over heads,
// BLAS single-threaded inside.
void attention_forward_gemm(float* out, const float* q, const float* k, const float* v,
                            const AttentionShape& s) {
  const int64_t group = s.n_heads / s.n_kv_heads, T = s.n_q_tokens, S = s.n_kv_tokens;
#pragma omp parallel
  {
    std::vector<float> p(T * S);  // (T, S)
#pragma omp for schedule(dynamic, 1)
    for (int64_t h = 0; h < s.n_heads; h++) {
      const int64_t kv_head = h / group;
      head_probabilities(q + h * s.q_head_stride, k + kv_head * s.k_head_stride, s, p.data());
      for (int64_t t0 = 0; t0 < T; t0 += kRowBlock) {
        const int64_t rows = std::min(kRowBlock, T - t0), keys = visible_keys(s, t0 + rows);
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, blas_int(rows), blas_int(s.v_dim),
                    blas_int(keys), 1.0f, p.data() + t0 * S, blas_int(S),
                    v + kv_head * s.v_head_stride, blas_int(s.v_token_stride), 0.0f,
                    out + h * s.out_head_stride + t0 * s.out_token_stride,
                    blas_int(s.out_token_stride));
      }
    }
  }
}

// One KV head shared by all heads, queries and outputs laid out [token, head, dim] without gaps
// (MLA's absorbed decode: the latent rows are keys and values of every head).
bool use_shared_kv_path(const AttentionShape& s) {
  return s.n_kv_heads == 1 && s.n_heads > 1 && s.n_q_tokens < 8 &&
         s.q_token_stride == s.n_heads * s.q_head_stride &&
         s.out_token_stride == s.n_heads * s.out_head_stride;
}

}  // namespace

void attention_forward(float* out, const float* q, const float* k, const float* v,
                       const AttentionShape& s) {
  if (use_gemm_path(s))
    attention_forward_gemm(out, q, k, v, s);
  else if (use_shared_kv_path(s))
    shared_kv_attention(out, q, k, v, s);
  else
    attention_forward_rows(out, q, k, v, s);
}

}  // namespace dsmoe::cpu

namespace dsmoe::cpu {

void linear_backward(float* dinp, float* dweight, const float* dout, const float* inp,
                     const float* weight, int64_t M, int64_t K, int64_t N) {
  if (dinp != nullptr) gemm(false, false, M, K, N, 1.0f, dout, N, weight, K, 1.0f, dinp, K);
  if (dweight != nullptr) gemm(true, false, N, K, M, 1.0f, dout, N, inp, K, 1.0f, dweight, K);
}

void rmsnorm_backward(float* dinp, float* dweight, const float* dout, const float* inp,
                      const float* weight, int64_t M, int64_t C, float eps) {
  std::vector<float> rstd(M);  // (M)
  const bool parallel = M * C > 16384;
#pragma omp parallel for schedule(static) if (parallel)
  for (int64_t m = 0; m < M; m++) {
    rstd[m] = row_rstd(inp + m * C, C, eps);
    if (dinp != nullptr)
      rmsnorm_backward_row(dinp + m * C, dout + m * C, inp + m * C, weight, rstd[m], C);
  }
  if (dweight == nullptr) return;
  // dweight[c] += sum over rows, in row order: threads own columns, so the sums are the serial
  // ones whatever the thread count.
  constexpr int64_t kColumns = 64;
  const int64_t n_blocks = (C + kColumns - 1) / kColumns;
#pragma omp parallel for schedule(static) if (parallel && n_blocks > 1)
  for (int64_t b = 0; b < n_blocks; b++) {
    const int64_t begin = b * kColumns, end = std::min(C, begin + kColumns);
    for (int64_t m = 0; m < M; m++) {
      const float* x = inp + m * C;
      const float* dy = dout + m * C;
      for (int64_t c = begin; c < end; c++) dweight[c] += dy[c] * (x[c] * rstd[m]);
    }
  }
}

void silu_mul_backward(float* dgate, float* dup, const float* dout, const float* gate,
                       const float* up, int64_t n) {
  constexpr int64_t kChunk = 4096;
  const int64_t n_chunks = (n + kChunk - 1) / kChunk;
#pragma omp parallel for schedule(static) if (n_chunks > 1)
  for (int64_t c = 0; c < n_chunks; c++) {
    const int64_t begin = c * kChunk, len = std::min(kChunk, n - begin);
    silu_mul_backward_chunk(dgate + begin, dup + begin, dout + begin, gate + begin, up + begin,
                            len);
  }
}

void rope_backward(float* dx, int64_t n_tokens, int64_t n_heads, int64_t token_stride,
                   int64_t head_stride, int64_t rope_dim, const float* cos, const float* sin,
                   bool interleaved) {
  // The transpose of a rotation is the rotation by the opposite angle.
  std::vector<float> minus_sin(n_tokens * (rope_dim / 2));
  for (size_t i = 0; i < minus_sin.size(); i++) minus_sin[i] = -sin[i];
  rope_forward(dx, n_tokens, n_heads, token_stride, head_stride, rope_dim, cos, minus_sin.data(),
               interleaved);
}

void attention_backward(float* dq, float* dk, float* dv, const float* dout, const float* q,
                        const float* k, const float* v, const float* out, const AttentionShape& s) {
  const int64_t group = s.n_heads / s.n_kv_heads, T = s.n_q_tokens, S = s.n_kv_tokens;
  if (!use_gemm_path(s)) {
#pragma omp parallel for schedule(dynamic, 1) if (s.n_kv_heads > 1)
    for (int64_t kv_head = 0; kv_head < s.n_kv_heads; kv_head++) {
      // The heads of this KV group, as a sub-problem with one KV head.
      AttentionShape sub = s;
      sub.n_heads = group;
      sub.n_kv_heads = 1;
      const int64_t q_offset = kv_head * group * s.q_head_stride;
      const int64_t k_offset = kv_head * s.k_head_stride, v_offset = kv_head * s.v_head_stride;
      const int64_t o_offset = kv_head * group * s.out_head_stride;
      ref::attention_backward(dq + q_offset, dk + k_offset, dv + v_offset, dout + o_offset,
                              q + q_offset, k + k_offset, v + v_offset, out + o_offset, sub);
    }
    return;
  }
  // Per head, with P recomputed: dV += P^T dO; dP = dO V^T; dS = P * (dP - rowsum(dO * O));
  // dQ += scale dS K; dK += scale dS^T Q. A KV group's heads run in one thread (they share dK,
  // dV); groups run in parallel.
  const auto i = [](int64_t x) { return static_cast<int>(x); };
#pragma omp parallel
  {
    std::vector<float> p(T * S), dp(T * S);  // (T, S)
#pragma omp for schedule(dynamic, 1)
    for (int64_t kv_head = 0; kv_head < s.n_kv_heads; kv_head++) {
      const float* k_h = k + kv_head * s.k_head_stride;
      const float* v_h = v + kv_head * s.v_head_stride;
      float* dk_h = dk + kv_head * s.k_head_stride;
      float* dv_h = dv + kv_head * s.v_head_stride;
      for (int64_t h = kv_head * group; h < (kv_head + 1) * group; h++) {
        const float* q_h = q + h * s.q_head_stride;
        const float* do_h = dout + h * s.out_head_stride;
        const float* o_h = out + h * s.out_head_stride;
        head_probabilities(q_h, k_h, s, p.data());
        // Row blocks: block [t0, t0 + rows) reads and writes key columns [0, keys) only.
        for (int64_t t0 = 0; t0 < T; t0 += kRowBlock) {
          const int64_t rows = std::min(kRowBlock, T - t0), keys = visible_keys(s, t0 + rows);
          float* p_b = p.data() + t0 * S;
          float* dp_b = dp.data() + t0 * S;
          const float* do_b = do_h + t0 * s.out_token_stride;
          const float* o_b = o_h + t0 * s.out_token_stride;
          const float* q_b = q_h + t0 * s.q_token_stride;
          cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, i(keys), i(s.v_dim), i(rows), 1.0f,
                      p_b, i(S), do_b, i(s.out_token_stride), 1.0f, dv_h, i(s.v_token_stride));
          cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, i(rows), i(keys), i(s.v_dim), 1.0f,
                      do_b, i(s.out_token_stride), v_h, i(s.v_token_stride), 0.0f, dp_b, i(S));
          for (int64_t t = 0; t < rows; t++) {
            float do_dot_o = 0.0f;
            for (int64_t d = 0; d < s.v_dim; d++)
              do_dot_o += do_b[t * s.out_token_stride + d] * o_b[t * s.out_token_stride + d];
            for (int64_t j = 0; j < keys; j++)
              dp_b[t * S + j] = p_b[t * S + j] * (dp_b[t * S + j] - do_dot_o) * s.scale;
          }
          cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, i(rows), i(s.qk_dim), i(keys),
                      1.0f, dp_b, i(S), k_h, i(s.k_token_stride), 1.0f,
                      dq + h * s.q_head_stride + t0 * s.q_token_stride, i(s.q_token_stride));
          cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, i(keys), i(s.qk_dim), i(rows), 1.0f,
                      dp_b, i(S), q_b, i(s.q_token_stride), 1.0f, dk_h, i(s.k_token_stride));
        }
      }
    }
  }
}

}  // namespace dsmoe::cpu
