// Tests for kernels/cpu/ops.h: every fast float32 kernel against its scalar twin in
// kernels/ref/ops.h, run in double on the same (converted) inputs as ground truth.
//
// Error bounds (u = FLT_EPSILON, all magnitudes computed in double from the float inputs):
//  * products (linear, gemm): |cpu - ref| <= 8 u sqrt(K + 2) (|alpha| sum_k |a_k b_k| + |beta c|),
//    the probabilistic (sqrt) form of the dot-product bound gamma_K sum |a b|, with slack for
//    blocked/FMA summation orders and the alpha/beta update;
//  * elementwise (rmsnorm, silu_mul): |cpu - ref| <= 8 u |ref|, a few roundings per element;
//  * rope: |cpu - ref| <= 4 u (|x0 c| + |x1 s|) for x0 c - x1 s, likewise for x1 c + x0 s (two
//    products, one sum);
//  * attention: a logit error d moves the output by at most 2 max|d| max|v|, and the softmax
//    and weighted sum add O(sqrt(n) u max|v|):
//    |cpu - ref| <= 8 u max_j|v_jd| (2 sqrt(qk_dim) max_j scale sum_d |q_d k_jd| + sqrt(n) + 4).
#include <gtest/gtest.h>

#include <algorithm>
#include <cfloat>
#include <cmath>
#include <cstdint>
#include <limits>
#include <random>
#include <vector>

#include "hwy/targets.h"
#include "kernels/attention_shape.h"
#include "kernels/cpu/gemm_bf16.h"
#include "kernels/cpu/gemm_quant.h"
#include "kernels/cpu/isa_dispatch.h"
#include "kernels/cpu/ops.h"
#include "kernels/cpu/quant_ops.h"
#include "kernels/cpu/shared_kv_attention.h"
#include "kernels/ref/ops.h"
#include "util/cpu_cap.h"
#include "util/threads.h"

namespace dsmoe {
namespace {

constexpr double kEps = FLT_EPSILON;
const float kSentinel = std::numeric_limits<float>::quiet_NaN();

std::vector<float> random_vector(std::mt19937& rng, size_t n, float lo = -1.0f, float hi = 1.0f) {
  std::uniform_real_distribution<float> dist(lo, hi);
  std::vector<float> v(n);
  for (float& x : v) x = dist(rng);
  return v;
}

std::vector<double> to_double(const std::vector<float>& v) { return {v.begin(), v.end()}; }

// ---------------------------------------------------------------------------------------------
// linear_forward and gemm

void check_linear(int64_t M, int64_t K, int64_t N) {
  SCOPED_TRACE(testing::Message() << "M=" << M << " K=" << K << " N=" << N);
  std::mt19937 rng(1234 + M * 31 + K * 7 + N);
  auto inp = random_vector(rng, M * K), weight = random_vector(rng, N * K);
  // Uninitialised output memory (NaN) must not leak into the result: beta is 0.
  std::vector<float> out(M * N, kSentinel);
  cpu::linear_forward(out.data(), inp.data(), weight.data(), M, K, N);
  auto inp_d = to_double(inp), weight_d = to_double(weight);
  std::vector<double> expected(M * N);
  ref::linear_forward(expected.data(), inp_d.data(), weight_d.data(), M, K, N);
  for (int64_t m = 0; m < M; m++)
    for (int64_t n = 0; n < N; n++) {
      double magnitude = 0;
      for (int64_t k = 0; k < K; k++) magnitude += std::abs(inp_d[m * K + k] * weight_d[n * K + k]);
      const double bound = 8 * kEps * std::sqrt(K + 2.0) * magnitude;
      ASSERT_NEAR(out[m * N + n], expected[m * N + n], bound) << "m=" << m << " n=" << n;
    }
}

TEST(KernelsLinear, MatchesReferenceOverShapes) {
  const int64_t shapes[][3] = {{1, 1, 1},   {1, 7, 3},     {3, 1, 5},   {5, 33, 17},
                               {17, 64, 1}, {64, 128, 96}, {2, 513, 7}, {31, 257, 129}};
  for (const auto& s : shapes) check_linear(s[0], s[1], s[2]);
}

TEST(KernelsLinear, ZeroRowsWritesNothing) {
  std::vector<float> out(4, 7.0f), weight(3 * 5, 1.0f);
  float inp = 1.0f;
  cpu::linear_forward(out.data(), &inp, weight.data(), 0, 5, 3);
  for (float x : out) EXPECT_EQ(x, 7.0f);
}

// C[M, N] = alpha op(A) op(B) + beta C on strided storage; checks that padding is not touched.
void check_gemm(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, float alpha,
                float beta, int64_t pad) {
  SCOPED_TRACE(testing::Message() << "trans_a=" << trans_a << " trans_b=" << trans_b << " M=" << M
                                  << " N=" << N << " K=" << K << " alpha=" << alpha
                                  << " beta=" << beta << " pad=" << pad);
  std::mt19937 rng(99 + M + 3 * N + 5 * K + 7 * trans_a + 11 * trans_b);
  // Stored shapes: A is [M, K] or, transposed, [K, M]; B is [K, N] or [N, K].
  const int64_t a_rows = trans_a ? K : M, a_cols = trans_a ? M : K;
  const int64_t b_rows = trans_b ? N : K, b_cols = trans_b ? K : N;
  const int64_t lda = a_cols + pad, ldb = b_cols + pad + 1, ldc = N + pad + 2;
  auto A = random_vector(rng, std::max<int64_t>(a_rows * lda, 1));
  auto B = random_vector(rng, std::max<int64_t>(b_rows * ldb, 1));
  auto C = random_vector(rng, M * ldc);
  for (int64_t m = 0; m < M; m++)
    for (int64_t n = N; n < ldc; n++) C[m * ldc + n] = 1234.5f;  // padding sentinel
  const std::vector<float> C0 = C;
  cpu::gemm(trans_a, trans_b, M, N, K, alpha, A.data(), lda, B.data(), ldb, beta, C.data(), ldc);

  // Ground truth: dense op(A) [M, K] and op(B)^T [N, K] in double through ref::linear_forward.
  std::vector<double> opa(M * K), opbt(N * K), product(M * N);
  for (int64_t m = 0; m < M; m++)
    for (int64_t k = 0; k < K; k++) opa[m * K + k] = trans_a ? A[k * lda + m] : A[m * lda + k];
  for (int64_t n = 0; n < N; n++)
    for (int64_t k = 0; k < K; k++) opbt[n * K + k] = trans_b ? B[n * ldb + k] : B[k * ldb + n];
  ref::linear_forward(product.data(), opa.data(), opbt.data(), M, K, N);
  for (int64_t m = 0; m < M; m++) {
    for (int64_t n = 0; n < N; n++) {
      const double c0 = C0[m * ldc + n];
      const double expected = alpha * product[m * N + n] + beta * c0;
      double magnitude = 0;
      for (int64_t k = 0; k < K; k++) magnitude += std::abs(opa[m * K + k] * opbt[n * K + k]);
      const double bound =
          8 * kEps * std::sqrt(K + 2.0) * (std::abs(alpha) * magnitude + std::abs(beta * c0));
      ASSERT_NEAR(C[m * ldc + n], expected, bound) << "m=" << m << " n=" << n;
    }
    for (int64_t n = N; n < ldc; n++) ASSERT_EQ(C[m * ldc + n], 1234.5f) << "padding overwritten";
  }
}

TEST(KernelsGemm, AllTransposeCombinationsWithStridedOperands) {
  for (bool ta : {false, true})
    for (bool tb : {false, true}) {
      check_gemm(ta, tb, 7, 5, 9, 1.0f, 0.0f, 3);
      check_gemm(ta, tb, 1, 13, 1, 1.0f, 0.0f, 1);
      check_gemm(ta, tb, 33, 17, 65, 1.0f, 0.0f, 0);
    }
}

TEST(KernelsGemm, AlphaAndBeta) {
  for (bool ta : {false, true})
    for (bool tb : {false, true}) {
      check_gemm(ta, tb, 6, 11, 8, 0.5f, 1.0f, 2);
      check_gemm(ta, tb, 6, 11, 8, -2.0f, 0.25f, 4);
      check_gemm(ta, tb, 19, 3, 40, 0.0f, -1.5f, 1);
    }
}

TEST(KernelsGemm, ZeroInnerDimensionScalesC) {
  for (bool ta : {false, true})
    for (bool tb : {false, true}) {
      check_gemm(ta, tb, 4, 5, 0, 1.0f, 0.5f, 2);
      check_gemm(ta, tb, 4, 5, 0, 3.0f, 1.0f, 0);
    }
  // beta == 0 with K == 0 clears C even where it held NaN.
  std::vector<float> C(2 * 3, kSentinel);
  float dummy = 1.0f;
  cpu::gemm(false, false, 2, 3, 0, 1.0f, &dummy, 1, &dummy, 3, 0.0f, C.data(), 3);
  for (float x : C) EXPECT_EQ(x, 0.0f);
}

TEST(KernelsGemm, EmptyOutputWritesNothing) {
  std::vector<float> C(6, 7.0f), A(6, 1.0f), B(6, 1.0f);
  cpu::gemm(false, false, 0, 3, 2, 1.0f, A.data(), 2, B.data(), 3, 0.0f, C.data(), 3);
  cpu::gemm(false, false, 2, 0, 2, 1.0f, A.data(), 2, B.data(), 1, 0.0f, C.data(), 3);
  for (float x : C) EXPECT_EQ(x, 7.0f);
}

// ---------------------------------------------------------------------------------------------
// rmsnorm_forward and silu_mul_forward

TEST(KernelsRmsnorm, MatchesReference) {
  const int64_t shapes[][2] = {{1, 1}, {3, 7}, {64, 64}, {1, 1000}, {40, 1000}};  // last: parallel
  for (const auto& s : shapes) {
    const int64_t M = s[0], C = s[1];
    SCOPED_TRACE(testing::Message() << "M=" << M << " C=" << C);
    std::mt19937 rng(7 + M * C);
    auto inp = random_vector(rng, M * C, -3.0f, 3.0f), weight = random_vector(rng, C, 0.5f, 2.0f);
    std::vector<float> out(M * C, kSentinel);
    cpu::rmsnorm_forward(out.data(), inp.data(), weight.data(), M, C, 1e-6f);
    auto inp_d = to_double(inp), weight_d = to_double(weight);
    std::vector<double> expected(M * C);
    ref::rmsnorm_forward(expected.data(), inp_d.data(), weight_d.data(), M, C, 1e-6f);
    for (int64_t i = 0; i < M * C; i++)
      ASSERT_NEAR(out[i], expected[i], 8 * kEps * std::abs(expected[i]) + 1e-30) << "i=" << i;
  }
}

TEST(KernelsRmsnorm, ZeroRowStaysZero) {
  std::vector<float> inp(8, 0.0f), weight(8, 1.0f), out(8, kSentinel);
  cpu::rmsnorm_forward(out.data(), inp.data(), weight.data(), 1, 8, 1e-6f);
  for (float x : out) EXPECT_EQ(x, 0.0f);
}

void check_silu_mul(int64_t n, bool in_place) {
  SCOPED_TRACE(testing::Message() << "n=" << n << " in_place=" << in_place);
  std::mt19937 rng(17 + n);
  auto gate = random_vector(rng, n, -12.0f, 12.0f), up = random_vector(rng, n, -2.0f, 2.0f);
  auto gate_d = to_double(gate), up_d = to_double(up);
  std::vector<double> expected(n);
  ref::silu_mul_forward(expected.data(), gate_d.data(), up_d.data(), n);
  std::vector<float> separate(n, kSentinel);
  float* out = in_place ? gate.data() : separate.data();
  cpu::silu_mul_forward(out, gate.data(), up.data(), n);
  for (int64_t i = 0; i < n; i++)
    ASSERT_NEAR(out[i], expected[i], 8 * kEps * std::abs(expected[i]) + 1e-30) << "i=" << i;
}

TEST(KernelsSiluMul, MatchesReferenceAcrossChunks) {
  for (int64_t n : {1, 7, 4096, 4097, 3 * 4096 + 123}) check_silu_mul(n, false);
  check_silu_mul(0, false);
}

TEST(KernelsSiluMul, InPlaceOverGate) {
  for (int64_t n : {5, 2 * 4096 + 1, 5 * 4096 + 999}) check_silu_mul(n, true);
}

// ---------------------------------------------------------------------------------------------
// cross_entropy_row: the loss within a few roundings of log(sum) plus the max and target logits;
// each gradient within a few roundings of itself plus the target's -scale.

void check_cross_entropy(int64_t n, float spread) {
  SCOPED_TRACE(testing::Message() << "n=" << n << " spread=" << spread);
  std::mt19937 rng(23 + n);
  const auto logits = random_vector(rng, n, -spread, spread);
  const auto logits_d = to_double(logits);
  const float scale = 0.125f;
  for (int64_t target : {int64_t{0}, n / 2, n - 1}) {
    std::vector<double> expected(n);
    const double loss_ref =
        ref::cross_entropy_row(logits_d.data(), n, target, double{scale}, expected.data());
    std::vector<float> grad(n, kSentinel);
    const double loss = cpu::cross_entropy_row(logits.data(), n, target, scale, grad.data());
    const double max_logit = *std::max_element(logits_d.begin(), logits_d.end());
    ASSERT_NEAR(loss, loss_ref, 8 * kEps * (1 + std::abs(max_logit) + std::abs(logits_d[target])));
    EXPECT_EQ(cpu::cross_entropy_row(logits.data(), n, target, scale, nullptr), loss);
    for (int64_t v = 0; v < n; v++)
      ASSERT_NEAR(grad[v], expected[v], 8 * kEps * (std::abs(expected[v]) + scale)) << "v=" << v;
  }
}

TEST(KernelsCrossEntropy, MatchesReference) {
  for (int64_t n : {1, 7, 16, 100, 8192 + 5}) check_cross_entropy(n, 4.0f);
  check_cross_entropy(1000, 60.0f);  // terms far below the max underflow
}

// ---------------------------------------------------------------------------------------------
// rope_forward

// Angle table [n_tokens, rope_dim / 2] for positions pos0 .. pos0 + n_tokens - 1.
void rope_tables(int64_t n_tokens, int64_t rope_dim, int64_t pos0, std::vector<float>& cos,
                 std::vector<float>& sin) {
  const int64_t half = rope_dim / 2;
  cos.resize(n_tokens * half);
  sin.resize(n_tokens * half);
  for (int64_t t = 0; t < n_tokens; t++)
    for (int64_t i = 0; i < half; i++) {
      const double angle = (pos0 + t) * std::pow(10000.0, -2.0 * i / rope_dim);
      cos[t * half + i] = static_cast<float>(std::cos(angle));
      sin[t * half + i] = static_cast<float>(std::sin(angle));
    }
}

void check_rope(bool interleaved, int64_t n_tokens, int64_t n_heads, int64_t rope_dim,
                int64_t head_stride, int64_t token_stride) {
  SCOPED_TRACE(testing::Message() << "interleaved=" << interleaved << " n_tokens=" << n_tokens
                                  << " n_heads=" << n_heads << " rope_dim=" << rope_dim
                                  << " head_stride=" << head_stride
                                  << " token_stride=" << token_stride);
  std::mt19937 rng(5 + n_tokens * 13 + rope_dim + interleaved);
  std::vector<float> cos, sin;
  rope_tables(n_tokens, rope_dim, 3, cos, sin);
  const auto x0 = random_vector(rng, n_tokens * token_stride, -2.0f, 2.0f);
  std::vector<float> x = x0;
  cpu::rope_forward(x.data(), n_tokens, n_heads, token_stride, head_stride, rope_dim, cos.data(),
                    sin.data(), interleaved);
  std::vector<double> expected = to_double(x0);
  ref::rope_forward(expected.data(), n_tokens, n_heads, token_stride, head_stride, rope_dim,
                    cos.data(), sin.data(), interleaved);

  const int64_t half = rope_dim / 2;
  std::vector<bool> rotated(x.size(), false);
  for (int64_t t = 0; t < n_tokens; t++)
    for (int64_t h = 0; h < n_heads; h++)
      for (int64_t i = 0; i < half; i++) {
        const int64_t base = t * token_stride + h * head_stride;
        const int64_t a = base + (interleaved ? 2 * i : i);
        const int64_t b = base + (interleaved ? 2 * i + 1 : i + half);
        rotated[a] = rotated[b] = true;
        const double c = cos[t * half + i], s = sin[t * half + i];
        // x'[a] = x[a] c - x[b] s, x'[b] = x[b] c + x[a] s.
        const double bound_a = 4 * kEps * (std::abs(x0[a] * c) + std::abs(x0[b] * s)) + 1e-30;
        const double bound_b = 4 * kEps * (std::abs(x0[b] * c) + std::abs(x0[a] * s)) + 1e-30;
        ASSERT_NEAR(x[a], expected[a], bound_a) << "t=" << t << " h=" << h << " i=" << i;
        ASSERT_NEAR(x[b], expected[b], bound_b) << "t=" << t << " h=" << h << " i=" << i;
        // A rotation keeps the pair's norm (c^2 + s^2 = 1 up to the rounding of c and s).
        const double before = std::hypot(double(x0[a]), double(x0[b]));
        const double after = std::hypot(double(x[a]), double(x[b]));
        ASSERT_NEAR(after, before, 8 * kEps * before) << "t=" << t << " h=" << h << " i=" << i;
      }
  // Everything outside the rotated pairs (the rest of each head, padding) is left alone.
  for (size_t j = 0; j < x.size(); j++)
    if (!rotated[j]) {
      ASSERT_EQ(x[j], x0[j]) << "untouched element " << j << " changed";
    }
}

TEST(KernelsRope, InterleavedStridedHeads) {
  check_rope(true, 3, 4, 8, 8, 32);     // contiguous
  check_rope(true, 5, 3, 8, 24, 80);    // rope on the first 8 of each 24-wide head, padded tokens
  check_rope(true, 20, 2, 16, 19, 45);  // > 16 tokens: the parallel path
}

TEST(KernelsRope, RotateHalfStridedHeads) {
  check_rope(false, 3, 4, 16, 16, 64);
  check_rope(false, 6, 3, 8, 11, 37);
  check_rope(false, 21, 4, 32, 35, 150);
}

// ---------------------------------------------------------------------------------------------
// attention_forward

struct AttentionCase {
  AttentionShape s;
  bool v_aliases_k = false;  // v reads the same buffer as k (absorbed MLA)
  int64_t v_offset = 0;      // offset of v's first element inside its buffer
};

int64_t extent(int64_t tokens, int64_t token_stride, int64_t heads, int64_t head_stride,
               int64_t dim) {
  return (tokens - 1) * token_stride + (heads - 1) * head_stride + dim;
}

// Runs both kernels on random inputs and returns the cpu output; checks it against the reference
// and checks that output padding is not written.
std::vector<float> run_attention(const AttentionCase& c, std::vector<float>& q,
                                 std::vector<float>& k, std::vector<float>& v) {
  const AttentionShape& s = c.s;
  std::vector<float> out(
      extent(s.n_q_tokens, s.out_token_stride, s.n_heads, s.out_head_stride, s.v_dim), kSentinel);
  const float* v_ptr = (c.v_aliases_k ? k.data() : v.data()) + c.v_offset;
  cpu::attention_forward(out.data(), q.data(), k.data(), v_ptr, s);

  auto qd = to_double(q), kd = to_double(k), vd = to_double(v);
  const double* vd_ptr = (c.v_aliases_k ? kd.data() : vd.data()) + c.v_offset;
  std::vector<double> expected(out.size(), 0.0);
  ref::attention_forward(expected.data(), qd.data(), kd.data(), vd_ptr, s);

  std::vector<bool> written(out.size(), false);
  const int64_t group = s.n_heads / s.n_kv_heads;
  for (int64_t t = 0; t < s.n_q_tokens; t++)
    for (int64_t h = 0; h < s.n_heads; h++) {
      const int64_t kv = h / group, n_visible = s.q_pos0 + t + 1;
      const double* qrow = qd.data() + t * s.q_token_stride + h * s.q_head_stride;
      double max_logit = 0;
      for (int64_t j = 0; j < n_visible; j++) {
        const double* krow = kd.data() + j * s.k_token_stride + kv * s.k_head_stride;
        double m = 0;
        for (int64_t d = 0; d < s.qk_dim; d++) m += std::abs(qrow[d] * krow[d]);
        max_logit = std::max(max_logit, std::abs(s.scale) * m);
      }
      for (int64_t d = 0; d < s.v_dim; d++) {
        double max_v = 0;
        for (int64_t j = 0; j < n_visible; j++)
          max_v =
              std::max(max_v, std::abs(vd_ptr[j * s.v_token_stride + kv * s.v_head_stride + d]));
        const double bound =
            8 * kEps * max_v *
            (2 * std::sqrt(double(s.qk_dim)) * max_logit + std::sqrt(double(n_visible)) + 4);
        const int64_t o = t * s.out_token_stride + h * s.out_head_stride + d;
        written[o] = true;
        EXPECT_NEAR(out[o], expected[o], bound) << "t=" << t << " h=" << h << " d=" << d;
      }
    }
  for (size_t j = 0; j < out.size(); j++)
    if (!written[j]) {
      EXPECT_TRUE(std::isnan(out[j])) << "output padding " << j << " written";
    }
  return out;
}

// Dense layout [token, head, dim] with optional padding after each head and each token.
AttentionCase dense_case(int64_t n_q, int64_t n_kv, int64_t q_pos0, int64_t n_heads,
                         int64_t n_kv_heads, int64_t qk_dim, int64_t v_dim, int64_t pad) {
  AttentionCase c;
  AttentionShape& s = c.s;
  s.n_q_tokens = n_q, s.n_kv_tokens = n_kv, s.q_pos0 = q_pos0;
  s.n_heads = n_heads, s.n_kv_heads = n_kv_heads, s.qk_dim = qk_dim, s.v_dim = v_dim;
  s.scale = static_cast<float>(1.0 / std::sqrt(double(qk_dim)));
  s.q_head_stride = qk_dim + pad, s.q_token_stride = n_heads * s.q_head_stride + pad;
  s.k_head_stride = qk_dim + pad, s.k_token_stride = n_kv_heads * s.k_head_stride + pad;
  s.v_head_stride = v_dim + pad, s.v_token_stride = n_kv_heads * s.v_head_stride + pad;
  s.out_head_stride = v_dim + pad, s.out_token_stride = n_heads * s.out_head_stride + pad;
  return c;
}

struct AttentionInputs {
  std::vector<float> q, k, v;
};

AttentionInputs random_inputs(const AttentionCase& c, uint32_t seed) {
  const AttentionShape& s = c.s;
  std::mt19937 rng(seed);
  AttentionInputs in;
  in.q = random_vector(
      rng, extent(s.n_q_tokens, s.q_token_stride, s.n_heads, s.q_head_stride, s.qk_dim));
  in.k = random_vector(
      rng, extent(s.n_kv_tokens, s.k_token_stride, s.n_kv_heads, s.k_head_stride, s.qk_dim));
  if (!c.v_aliases_k)
    in.v = random_vector(rng, c.v_offset + extent(s.n_kv_tokens, s.v_token_stride, s.n_kv_heads,
                                                  s.v_head_stride, s.v_dim));
  return in;
}

TEST(KernelsAttention, MultiHead) {
  AttentionCase c = dense_case(7, 7, 0, 4, 4, 16, 16, 0);
  auto in = random_inputs(c, 1);
  run_attention(c, in.q, in.k, in.v);
  c = dense_case(9, 9, 0, 3, 3, 12, 20, 3);  // padded heads and tokens, v_dim != qk_dim
  in = random_inputs(c, 2);
  run_attention(c, in.q, in.k, in.v);
}

TEST(KernelsAttention, GroupedQueryHeads) {
  AttentionCase c = dense_case(6, 6, 0, 6, 2, 12, 8, 2);
  auto in = random_inputs(c, 3);
  run_attention(c, in.q, in.k, in.v);
  c = dense_case(5, 5, 0, 8, 4, 16, 16, 0);
  in = random_inputs(c, 4);
  run_attention(c, in.q, in.k, in.v);
}

// Absorbed MLA: one kv "head" shared by every query head (k_head_stride 0), k rows of width
// qk_dim = kv_lora_rank + rope_dim, and v = the first v_dim = kv_lora_rank columns of the same
// rows.
AttentionCase absorbed_mla_case(int64_t n_q, int64_t n_kv, int64_t q_pos0, int64_t n_heads,
                                int64_t lora, int64_t rope, int64_t row_pad) {
  AttentionCase c = dense_case(n_q, n_kv, q_pos0, n_heads, 1, lora + rope, lora, 0);
  c.s.k_head_stride = c.s.v_head_stride = 0;
  c.s.k_token_stride = c.s.v_token_stride = lora + rope + row_pad;
  c.v_aliases_k = true;
  return c;
}

TEST(KernelsAttention, MultiQueryAbsorbedMlaWithVAliasingK) {
  AttentionCase c = absorbed_mla_case(5, 5, 0, 4, 16, 8, 0);
  auto in = random_inputs(c, 5);
  run_attention(c, in.q, in.k, in.v);
  c = absorbed_mla_case(3, 11, 8, 3, 24, 8, 5);  // padded rows, continuing a cache
  in = random_inputs(c, 6);
  run_attention(c, in.q, in.k, in.v);
  c = absorbed_mla_case(1, 300, 299, 16, 64, 16, 3);  // decode: all heads as one GEMM
  in = random_inputs(c, 16);
  run_attention(c, in.q, in.k, in.v);
}

// The shared-KV kernel (cpu/shared_kv_attention): keys split over threads (parts merged), query
// rows in chunks of 16 (a partial last chunk), causal within a few query tokens; AVX-512 and
// scalar loops.
TEST(KernelsAttention, SharedKvSplitsKeysAndChunksRows) {
  for (bool portable : {false, true}) {
    SCOPED_TRACE(testing::Message() << "portable=" << portable);
    cpu::shared_kv_attention_force_portable(portable);
    AttentionCase c = absorbed_mla_case(1, 640, 639, 16, 512, 64, 0);  // V2-Lite decode
    auto in = random_inputs(c, 20);
    const int threads_before = num_threads();
    for (int threads : {1, 3}) {  // one part of 640 keys, three merged parts
      set_num_threads(threads);
      run_attention(c, in.q, in.k, in.v);
    }
    set_num_threads(threads_before);
    c = absorbed_mla_case(3, 700, 697, 16, 64, 16, 2);  // 48 rows, 3 chunks
    in = random_inputs(c, 21);
    run_attention(c, in.q, in.k, in.v);
    c = absorbed_mla_case(2, 300, 298, 20, 32, 8, 1);  // 40 rows: the last chunk half full
    in = random_inputs(c, 22);
    run_attention(c, in.q, in.k, in.v);
  }
  cpu::shared_kv_attention_force_portable(false);
}

TEST(KernelsAttention, ContinuesCacheWithFewerQueriesThanKeys) {
  AttentionCase c = dense_case(3, 10, 7, 4, 2, 16, 16, 1);
  auto in = random_inputs(c, 7);
  run_attention(c, in.q, in.k, in.v);
}

TEST(KernelsAttention, DecodeOneQuerySeesAllKeys) {
  for (int64_t n_kv : {1, 2, 13, 64}) {
    SCOPED_TRACE(testing::Message() << "n_kv=" << n_kv);
    AttentionCase c = dense_case(1, n_kv, n_kv - 1, 4, 4, 16, 16, 0);
    auto in = random_inputs(c, 8 + n_kv);
    auto out = run_attention(c, in.q, in.k, in.v);
    // The last key matters to the single query.
    for (int64_t d = 0; d < c.s.qk_dim; d++) in.k[(n_kv - 1) * c.s.k_token_stride + d] += 0.5f;
    for (int64_t d = 0; d < c.s.v_dim; d++) in.v[(n_kv - 1) * c.s.v_token_stride + d] += 0.5f;
    auto changed = run_attention(c, in.q, in.k, in.v);
    EXPECT_NE(out[0], changed[0]);
    c = absorbed_mla_case(1, n_kv, n_kv - 1, 4, 16, 8, 0);
    in = random_inputs(c, 100 + n_kv);
    run_attention(c, in.q, in.k, in.v);
  }
}

TEST(KernelsAttention, LargeLogitsStayFinite) {
  AttentionCase c = dense_case(6, 6, 0, 2, 2, 16, 16, 0);
  c.s.scale = 60.0f;  // logits of several hundred: exp overflows without the max subtraction
  auto in = random_inputs(c, 9);
  auto out = run_attention(c, in.q, in.k, in.v);
  for (float x : out) EXPECT_TRUE(std::isfinite(x));
}

// Changing key/value j must leave the outputs of queries at positions < j bit-identical.
void check_causal(AttentionCase c, uint32_t seed) {
  const AttentionShape& s = c.s;
  auto in = random_inputs(c, seed);
  const auto before = run_attention(c, in.q, in.k, in.v);
  const int64_t j = s.q_pos0 + s.n_q_tokens / 2;  // a key some queries must not see
  for (int64_t h = 0; h < s.n_kv_heads; h++) {
    for (int64_t d = 0; d < s.qk_dim; d++)
      in.k[j * s.k_token_stride + h * s.k_head_stride + d] += 3;
    if (!c.v_aliases_k)
      for (int64_t d = 0; d < s.v_dim; d++)
        in.v[c.v_offset + j * s.v_token_stride + h * s.v_head_stride + d] -= 3;
  }
  const auto after = run_attention(c, in.q, in.k, in.v);
  for (int64_t t = 0; t < s.n_q_tokens; t++)
    for (int64_t h = 0; h < s.n_heads; h++) {
      const int64_t o = t * s.out_token_stride + h * s.out_head_stride;
      bool same = true;
      for (int64_t d = 0; d < s.v_dim; d++) same = same && after[o + d] == before[o + d];
      if (s.q_pos0 + t < j) {
        EXPECT_TRUE(same) << "query " << t << " head " << h << " saw the future key " << j;
      } else {
        EXPECT_FALSE(same) << "query " << t << " head " << h << " ignored visible key " << j;
      }
    }
}

TEST(KernelsAttention, Causality) {
  check_causal(dense_case(8, 8, 0, 4, 4, 16, 16, 0), 10);
  check_causal(dense_case(8, 8, 0, 6, 3, 12, 8, 2), 11);
  check_causal(dense_case(6, 10, 4, 4, 2, 16, 16, 0), 12);
  check_causal(absorbed_mla_case(8, 8, 0, 4, 16, 8, 3), 13);
}

// DSMOE_MAX_ISA (util/cpu_cap.h): under avx2 or sse4 nothing that needs AVX-512 runs: no
// Highway AVX3 target in the dispatch, no AVX512-BF16 / VNNI kernels, the baseline copies of
// util/multiversion.h. Without a cap, what the CPU has.
TEST(IsaCap, HoldsForEveryDispatch) {
  const IsaCap cap = isa_cap();
  std::printf("DSMOE_MAX_ISA: %s; quant kernels on %s\n", isa_cap_name(cap),
              hwy::TargetName(cpu::quant_dispatch_target()));
  if (cap > IsaCap::kAvx2) {
#if defined(__x86_64__)
    EXPECT_EQ(cpu_allows_avx512(),
              __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                  __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq") &&
                  __builtin_cpu_supports("avx512cd"));
#endif
    return;
  }
  const int64_t above_avx2 = HWY_AVX2 - 1;  // Highway: wider targets have lower bits
  EXPECT_FALSE(cpu_allows_avx512());
  EXPECT_FALSE(cpu_allows_avx512_bf16());
  EXPECT_FALSE(cpu_allows_avx512_vnni());
  EXPECT_EQ(cpu::supported_targets() & above_avx2, 0);
  EXPECT_EQ(cpu::quant_dispatch_target() & above_avx2, 0);
  EXPECT_FALSE(cpu::gemm_bf16_native());
  EXPECT_FALSE(cpu::gemm_quant_native());
  if (cap == IsaCap::kSse4) {
    EXPECT_FALSE(cpu_allows_avx2());
    EXPECT_EQ(cpu::quant_dispatch_target() & (HWY_SSE4 - 1), 0);
  }
}

}  // namespace
}  // namespace dsmoe
