// Tests for cpu::gemm_bf16 and cpu::gemm_bf16_weights (kernels/cpu/gemm_bf16.h) against a
// double-precision reference on the bf16-rounded inputs, plus a DISABLED_ timing test.
//
// Error bound (u = FLT_EPSILON = 2^-23; S = sum_k |a_k b_k| of the bf16-rounded inputs): the
// products are exact and summed in float32, so the probabilistic dot-product bound of
// tests/test_kernels.cpp applies, 8 u sqrt(K + 2) |alpha| S, plus one rounding of alpha * sum
// and of the fma with beta * C: 2 u (|alpha| S + |beta C|).
#include <gtest/gtest.h>

#include <algorithm>
#include <cfloat>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <random>
#include <vector>

#include "kernels/cpu/gemm_bf16.h"
#include "tensor/dtype.h"
#include "test_util.h"
#include "util/threads.h"

namespace dsmoe {
namespace {

constexpr double kEps = FLT_EPSILON;
constexpr float kPadSentinel = 7.0f;  // in C's columns past N, which must stay untouched

struct Shape {
  int64_t M, N, K;
};

// One gemm_bf16 call's inputs; leading dimensions wider than the rows.
struct Problem {
  bool trans_a, trans_b;
  int64_t M, N, K;
  float alpha, beta;
  int64_t lda, ldb, ldc;
  std::vector<float> A, B, C;  // C: the initial contents
};

std::vector<float> random_vector(std::mt19937& rng, size_t n) {
  std::uniform_real_distribution<float> dist(-1.0f, 1.0f);
  std::vector<float> v(n);
  for (float& x : v) x = dist(rng);
  return v;
}

Problem make_problem(std::mt19937& rng, bool trans_a, bool trans_b, Shape s, float alpha,
                     float beta) {
  Problem p{trans_a, trans_b, s.M, s.N, s.K, alpha, beta, 0, 0, s.N + 3, {}, {}, {}};
  p.lda = (trans_a ? s.M : s.K) + 2;
  p.ldb = (trans_b ? s.K : s.N) + 5;
  p.A = random_vector(rng, static_cast<size_t>((trans_a ? s.K : s.M) * p.lda));
  p.B = random_vector(rng, static_cast<size_t>((trans_b ? s.N : s.K) * p.ldb));
  p.C = random_vector(rng, static_cast<size_t>(s.M * p.ldc));
  for (int64_t m = 0; m < s.M; m++)
    for (int64_t n = 0; n < p.ldc; n++) {
      float& c = p.C[m * p.ldc + n];
      if (n >= s.N)
        c = kPadSentinel;
      else if (beta == 0.0f)
        c = std::numeric_limits<float>::quiet_NaN();  // must not be read
    }
  return p;
}

std::vector<float> run(const Problem& p) {
  std::vector<float> C = p.C;
  cpu::gemm_bf16(p.trans_a, p.trans_b, p.M, p.N, p.K, p.alpha, p.A.data(), p.lda, p.B.data(), p.ldb,
                 p.beta, C.data(), p.ldc);
  return C;
}

double bf16_value(float x) { return bf16_to_f32(f32_to_bf16(x)); }

// Checks C (from run) against alpha * op(A) . op(B) + beta * C0 in double on bf16-rounded
// inputs, and that the padding columns were left alone.
void expect_near_reference(const Problem& p, const std::vector<float>& C) {
  std::vector<double> a(static_cast<size_t>(p.M * p.K)), b(static_cast<size_t>(p.N * p.K));
  for (int64_t m = 0; m < p.M; m++)
    for (int64_t k = 0; k < p.K; k++)
      a[m * p.K + k] = bf16_value(p.trans_a ? p.A[k * p.lda + m] : p.A[m * p.lda + k]);
  for (int64_t n = 0; n < p.N; n++)
    for (int64_t k = 0; k < p.K; k++)
      b[n * p.K + k] = bf16_value(p.trans_b ? p.B[n * p.ldb + k] : p.B[k * p.ldb + n]);
  int64_t n_bad = 0;
  for (int64_t m = 0; m < p.M; m++) {
    for (int64_t n = 0; n < p.ldc; n++) {
      const float got = C[m * p.ldc + n];
      if (n >= p.N) {
        if (got != kPadSentinel && n_bad++ < 5) ADD_FAILURE() << "pad column " << n << " written";
        continue;
      }
      double sum = 0, magnitude = 0;
      for (int64_t k = 0; k < p.K; k++) {
        sum += a[m * p.K + k] * b[n * p.K + k];
        magnitude += std::abs(a[m * p.K + k] * b[n * p.K + k]);
      }
      const double c0 = p.beta == 0.0f ? 0.0 : p.beta * static_cast<double>(p.C[m * p.ldc + n]);
      const double want = p.alpha * sum + c0;
      const double tol = 8 * kEps * std::sqrt(p.K + 2.0) * std::abs(p.alpha) * magnitude +
                         2 * kEps * (std::abs(p.alpha) * magnitude + std::abs(c0)) + 1e-30;
      if (!(std::abs(got - want) <= tol) && n_bad++ < 5)
        ADD_FAILURE() << "C[" << m << ", " << n << "] = " << got << ", want " << want << " (tol "
                      << tol << ")";
    }
  }
  EXPECT_EQ(n_bad, 0);
}

std::string describe(const Problem& p) {
  return fmt::format("trans_a {} trans_b {} M {} N {} K {} alpha {} beta {}", p.trans_a, p.trans_b,
                     p.M, p.N, p.K, p.alpha, p.beta);
}

// Edge shapes: every M in {1, 2, 7, 8, 9, 33, 64, 130}, N in {1, 5, 16, 17, 47, 64, 100} and K
// in {1, 2, 3, 31, 64, 257, 1030} appears several times, without the full cross product; N = 600
// spans two chunks of packed B groups.
constexpr Shape kShapes[] = {
    {1, 1, 1},     {2, 5, 2},       {7, 16, 3},     {8, 17, 31},    {9, 47, 64},
    {33, 64, 257}, {64, 100, 1030}, {130, 17, 257}, {130, 100, 64}, {9, 100, 1030},
    {33, 5, 1030}, {1, 64, 257},    {2, 100, 31},   {7, 47, 1030},  {8, 1, 257},
    {64, 16, 3},   {130, 64, 31},   {33, 47, 2},    {9, 17, 1},     {1, 100, 64},
    {64, 5, 257},  {130, 1, 1030},  {2, 16, 1030},  {8, 64, 64},    {7, 600, 40},
};
constexpr float kAlphaBeta[][2] = {{1, 0}, {0.5f, 1}, {1, 0.25f}, {0.5f, 0}, {1, 1}, {0.5f, 0.25f}};

TEST(GemmBf16, MatchesReferenceOnEdgeShapes) {
  std::mt19937 rng(1);
  int64_t case_index = 0;
  for (const Shape& s : kShapes)
    for (int t = 0; t < 4; t++, case_index++) {
      const auto& ab = kAlphaBeta[case_index % std::size(kAlphaBeta)];
      const Problem p = make_problem(rng, t & 1, t & 2, s, ab[0], ab[1]);
      SCOPED_TRACE(describe(p));
      expect_near_reference(p, run(p));
    }
}

// The fallback does the same float32 operations in the same order as the vdpbf16ps kernels.
TEST(GemmBf16, PortableFallbackGivesTheSameBits) {
  std::mt19937 rng(2);
  for (const Shape& s : {Shape{9, 47, 64}, Shape{33, 100, 1030}, Shape{130, 17, 257}})
    for (int t = 0; t < 4; t++) {
      const Problem p = make_problem(rng, t & 1, t & 2, s, 0.5f, t == 3 ? 0.0f : 0.25f);
      SCOPED_TRACE(describe(p));
      const std::vector<float> fast = run(p);
      cpu::gemm_bf16_force_portable(true);
      EXPECT_FALSE(cpu::gemm_bf16_native());
      const std::vector<float> portable = run(p);
      cpu::gemm_bf16_force_portable(false);
      expect_near_reference(p, portable);
      EXPECT_EQ(0, std::memcmp(fast.data(), portable.data(), fast.size() * sizeof(float)));
    }
}

TEST(GemmBf16, OneAndTwoThreadsGiveTheSameBits) {
  std::mt19937 rng(3);
  // Wide N (groups split between threads), narrow N (row blocks split), and ragged edges.
  for (const Shape& s : {Shape{70, 200, 300}, Shape{100, 40, 600}, Shape{13, 1000, 129}})
    for (int t = 0; t < 4; t++) {
      const Problem p = make_problem(rng, t & 1, t & 2, s, 1.0f, 0.0f);
      SCOPED_TRACE(describe(p));
      set_num_threads(1);
      const std::vector<float> one = run(p);
      set_num_threads(2);
      const std::vector<float> two = run(p);
      set_num_threads(1);
      EXPECT_EQ(0, std::memcmp(one.data(), two.data(), one.size() * sizeof(float)));
    }
}

TEST(GemmBf16, KZeroScalesC) {
  std::vector<float> C = {1.0f, -2.0f, 3.0f, 4.0f};
  cpu::gemm_bf16(false, false, 2, 2, 0, 1.0f, nullptr, 1, nullptr, 2, 0.5f, C.data(), 2);
  EXPECT_EQ(C, (std::vector<float>{0.5f, -1.0f, 1.5f, 2.0f}));
  C.assign(4, std::numeric_limits<float>::quiet_NaN());
  cpu::gemm_bf16(true, true, 2, 2, 0, 1.0f, nullptr, 1, nullptr, 2, 0.0f, C.data(), 2);
  EXPECT_EQ(C, std::vector<float>(4, 0.0f));
}

// Weights given as bf16 rows with a stride: the same as gemm_bf16 on their float32 values.
TEST(GemmBf16, WeightsMatchReference) {
  std::mt19937 rng(4);
  for (const Shape& s :
       {Shape{1, 5, 3}, Shape{7, 100, 1030}, Shape{48, 47, 257}, Shape{9, 64, 64}}) {
    Problem p = make_problem(rng, false, true, s, 1.0f, 0.0f);
    p.lda = s.K;
    p.ldc = s.N;
    p.A = random_vector(rng, static_cast<size_t>(s.M * s.K));
    p.C.assign(static_cast<size_t>(s.M * s.N), std::numeric_limits<float>::quiet_NaN());
    std::vector<uint16_t> w(p.B.size());
    for (size_t i = 0; i < w.size(); i++) {
      w[i] = f32_to_bf16(p.B[i]);
      p.B[i] = bf16_to_f32(w[i]);
    }
    SCOPED_TRACE(describe(p));
    std::vector<float> out = p.C;
    cpu::gemm_bf16_weights(out.data(), p.A.data(), s.M, w.data(), s.N, s.K, p.ldb);
    expect_near_reference(p, out);
    EXPECT_EQ(0, std::memcmp(out.data(), run(p).data(), out.size() * sizeof(float)));
  }
}

// Seconds per call: the best of 5 batches of reps calls (the machine may be shared), after a
// warm-up call.
template <class Call>
double seconds_per_call(const Call& call, int reps) {
  call();
  double best = std::numeric_limits<double>::infinity();
  for (int batch = 0; batch < 5; batch++) {
    const auto start = std::chrono::steady_clock::now();
    for (int r = 0; r < reps; r++) call();
    const std::chrono::duration<double> elapsed = std::chrono::steady_clock::now() - start;
    best = std::min(best, elapsed.count() / reps);
  }
  return best;
}

void print_speed(Shape s, const char* what, double seconds) {
  constexpr double kPeakGflops = 495.0;  // vdpbf16ps on the 2 cores (measured)
  const double gflops = 2.0 * s.M * s.N * s.K / seconds * 1e-9;
  std::printf("M %4ld N %4ld K %4ld %-22s %8.3f ms %6.1f GFLOP/s %5.1f%% of peak\n",
              static_cast<long>(s.M), static_cast<long>(s.N), static_cast<long>(s.K), what,
              seconds * 1e3, gflops, 100 * gflops / kPeakGflops);
}

// Timing by hand: OMP_WAIT_POLICY=passive OMP_NUM_THREADS=2 test_gemm_bf16
// --gtest_also_run_disabled_tests --gtest_filter=*Speed*
TEST(GemmBf16, DISABLED_Speed) {
  const char* env_threads = std::getenv("OMP_NUM_THREADS");  // the OneThread default is 1
  set_num_threads(env_threads != nullptr ? std::atoi(env_threads) : 2);
  std::printf("native %d, %d threads\n", cpu::gemm_bf16_native(), num_threads());
  std::mt19937 rng(5);
  const char* names[] = {"forward x.W^T (F,T)", "dX = dY.W (F,F)", "dW = dY^T.X (T,F)"};
  const bool trans[][2] = {{false, true}, {false, false}, {true, false}};
  for (const Shape& s : {Shape{512, 2048, 2048}, Shape{48, 1408, 2048}}) {
    const int reps = s.M >= 512 ? 4 : 40;
    for (int t = 0; t < 3; t++) {
      const Problem p = make_problem(rng, trans[t][0], trans[t][1], s, 1.0f, 0.0f);
      std::vector<float> C = p.C;
      print_speed(s, names[t],
                  seconds_per_call(
                      [&] {
                        cpu::gemm_bf16(p.trans_a, p.trans_b, p.M, p.N, p.K, 1.0f, p.A.data(), p.lda,
                                       p.B.data(), p.ldb, 0.0f, C.data(), p.ldc);
                      },
                      reps));
    }
    // The inference path: bf16 weights [N, K].
    std::vector<uint16_t> w(static_cast<size_t>(s.N * s.K));
    for (uint16_t& x : w) x = f32_to_bf16(std::uniform_real_distribution<float>(-1, 1)(rng));
    const std::vector<float> x = random_vector(rng, static_cast<size_t>(s.M * s.K));
    std::vector<float> out(static_cast<size_t>(s.M * s.N));
    print_speed(
        s, "weights x.W^T (bf16 W)",
        seconds_per_call(
            [&] { cpu::gemm_bf16_weights(out.data(), x.data(), s.M, w.data(), s.N, s.K, s.K); },
            reps));
  }
  set_num_threads(1);
}

}  // namespace
}  // namespace dsmoe
