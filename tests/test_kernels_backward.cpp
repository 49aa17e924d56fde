// test_kernels_backward.cpp: the backward kernels of kernels/cpu against their scalar twins in
// kernels/ref (run in double), and the GEMM path of attention (>= 8 queries) in both directions.
// Tolerance: float32 sums of at most a few hundred products of O(1) values: 1e-4 of the largest
// reference magnitude (about 2^-13, far above the ~sqrt(n) * 2^-24 rounding of the sums).
// The references themselves are proven in double against central differences (fd_check.h).
#include <gtest/gtest.h>

#include <algorithm>
#include <cfloat>
#include <cmath>
#include <functional>
#include <random>
#include <vector>

#include "fd_check.h"
#include "kernels/cpu/ops.h"
#include "kernels/ref/ops.h"
#include "util/threads.h"

namespace dsmoe {
namespace {

std::vector<float> random_vector(size_t n, uint32_t seed) {
  std::mt19937 gen(seed);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::vector<float> v(n);
  for (float& x : v) x = normal(gen);
  return v;
}

std::vector<double> to_double(const std::vector<float>& v) { return {v.begin(), v.end()}; }

void expect_close(const std::vector<float>& got, const std::vector<double>& want,
                  const char* what) {
  ASSERT_EQ(got.size(), want.size());
  double scale = 0;
  for (double w : want) scale = std::max(scale, std::fabs(w));
  for (size_t i = 0; i < got.size(); i++)
    ASSERT_NEAR(got[i], want[i], 1e-4 * std::max(scale, 1e-3)) << what << " at " << i;
}

// GQA geometry with padded strides: q/out [T, heads, d], k/v rows [S, kv_heads, d] padded.
AttentionShape gqa_shape(int64_t n_q, int64_t n_kv, int64_t heads, int64_t kv_heads, int64_t d) {
  AttentionShape s;
  s.n_q_tokens = n_q, s.n_kv_tokens = n_kv, s.q_pos0 = n_kv - n_q;
  s.n_heads = heads, s.n_kv_heads = kv_heads, s.qk_dim = d, s.v_dim = d, s.scale = 0.3f;
  s.q_token_stride = heads * d + 3, s.q_head_stride = d;
  s.k_token_stride = kv_heads * d + 5, s.k_head_stride = d;
  s.v_token_stride = kv_heads * d + 2, s.v_head_stride = d;
  s.out_token_stride = heads * d + 1, s.out_head_stride = d;
  return s;
}

struct Buffers {
  std::vector<float> q, k, v, out, dout;
};

Buffers make_buffers(const AttentionShape& s, uint32_t seed) {
  Buffers b;
  b.q = random_vector(s.n_q_tokens * s.q_token_stride, seed);
  b.k = random_vector(s.n_kv_tokens * s.k_token_stride, seed + 1);
  b.v = random_vector(s.n_kv_tokens * s.v_token_stride, seed + 2);
  b.out.assign(s.n_q_tokens * s.out_token_stride, 0.0f);
  b.dout = random_vector(s.n_q_tokens * s.out_token_stride, seed + 3);
  return b;
}

void check_forward(const AttentionShape& s, Buffers& b, const float* k, const float* v) {
  std::vector<double> want(b.out.size(), 0.0);
  const std::vector<double> q = to_double(b.q), kd = to_double(b.k), vd = to_double(b.v);
  const double* k_d = kd.data() + (k - b.k.data());
  const double* v_d = (v >= b.v.data() && v < b.v.data() + b.v.size())
                          ? vd.data() + (v - b.v.data())
                          : kd.data() + (v - b.k.data());
  ref::attention_forward(want.data(), q.data(), k_d, v_d, s);
  cpu::attention_forward(b.out.data(), b.q.data(), k, v, s);
  // Only the written entries (padding stays as it was: zero in both).
  expect_close(b.out, want, "attention forward");
}

TEST(AttentionGemmPath, ForwardMatchesReferenceForGqaAndPrefix) {
  // 130 and 150 queries: several blocks of query rows, the last one partial.
  for (const auto& [n_q, n_kv] :
       {std::pair<int64_t, int64_t>{12, 12}, {9, 20}, {32, 32}, {130, 130}, {150, 170}}) {
    const AttentionShape s = gqa_shape(n_q, n_kv, 4, 2, 16);
    Buffers b = make_buffers(s, 7);
    check_forward(s, b, b.k.data(), b.v.data());
  }
}

TEST(AttentionGemmPath, ForwardMatchesReferenceForAbsorbedMlaLayout) {
  // One shared KV head of width rank + rope, values = its first `rank` columns (aliasing k).
  AttentionShape s;
  const int64_t heads = 4, rank = 16, rope = 8, row = rank + rope;
  s.n_q_tokens = 10, s.n_kv_tokens = 14, s.q_pos0 = 4, s.n_heads = heads, s.n_kv_heads = 1;
  s.qk_dim = row, s.v_dim = rank, s.scale = 0.2f;
  s.q_token_stride = heads * row, s.q_head_stride = row;
  s.k_token_stride = row, s.k_head_stride = 0, s.v_token_stride = row, s.v_head_stride = 0;
  s.out_token_stride = heads * rank, s.out_head_stride = rank;
  Buffers b;
  b.q = random_vector(s.n_q_tokens * s.q_token_stride, 3);
  b.k = random_vector(s.n_kv_tokens * row, 4);
  b.v = {};
  b.out.assign(s.n_q_tokens * s.out_token_stride, 0.0f);
  check_forward(s, b, b.k.data(), b.k.data());
}

// cpu::attention_backward (GEMM path for >= 8 queries, rows path below) against the reference.
TEST(AttentionBackward, MatchesReferenceOnBothPaths) {
  for (int64_t n : {5, 12, 24, 150}) {
    const AttentionShape s = gqa_shape(n, n, 6, 2, 8);
    Buffers b = make_buffers(s, 11 + static_cast<uint32_t>(n));
    std::vector<double> out_d(b.out.size(), 0.0);
    const std::vector<double> q = to_double(b.q), k = to_double(b.k), v = to_double(b.v);
    const std::vector<double> dout = to_double(b.dout);
    ref::attention_forward(out_d.data(), q.data(), k.data(), v.data(), s);
    std::vector<float> out(out_d.begin(), out_d.end());
    std::vector<double> dq(q.size(), 0.0), dk(k.size(), 0.0), dv(v.size(), 0.0);
    ref::attention_backward(dq.data(), dk.data(), dv.data(), dout.data(), q.data(), k.data(),
                            v.data(), out_d.data(), s);
    std::vector<float> gq(q.size(), 0.0f), gk(k.size(), 0.0f), gv(v.size(), 0.0f);
    cpu::attention_backward(gq.data(), gk.data(), gv.data(), b.dout.data(), b.q.data(), b.k.data(),
                            b.v.data(), out.data(), s);
    expect_close(gq, dq, "dq");
    expect_close(gk, dk, "dk");
    expect_close(gv, dv, "dv");
  }
}

TEST(Backward, LinearRmsnormSiluMatchReference) {
  const int64_t M = 7, K = 33, N = 19;
  const std::vector<float> x = random_vector(M * K, 1), w = random_vector(N * K, 2);
  const std::vector<float> dy = random_vector(M * N, 3);
  std::vector<double> dx_want(M * K, 0.0), dw_want(N * K, 0.0);
  const std::vector<double> xd = to_double(x), wd = to_double(w), dyd = to_double(dy);
  ref::linear_backward(dx_want.data(), dw_want.data(), dyd.data(), xd.data(), wd.data(), M, K, N);
  std::vector<float> dx(M * K, 0.0f), dw(N * K, 0.0f);
  cpu::linear_backward(dx.data(), dw.data(), dy.data(), x.data(), w.data(), M, K, N);
  expect_close(dx, dx_want, "linear dx");
  expect_close(dw, dw_want, "linear dw");

  const std::vector<float> g = random_vector(K, 4), dz = random_vector(M * K, 5);
  std::vector<double> rx_want(M * K, 0.0), rg_want(K, 0.0);
  const std::vector<double> gd = to_double(g), dzd = to_double(dz);
  ref::rmsnorm_backward(rx_want.data(), rg_want.data(), dzd.data(), xd.data(), gd.data(), M, K,
                        1e-6f);
  std::vector<float> rx(M * K, 0.0f), rg(K, 0.0f);
  cpu::rmsnorm_backward(rx.data(), rg.data(), dz.data(), x.data(), g.data(), M, K, 1e-6f);
  expect_close(rx, rx_want, "rmsnorm dx");
  expect_close(rg, rg_want, "rmsnorm dweight");

  const int64_t n = 10000;  // several chunks
  const std::vector<float> gate = random_vector(n, 6), up = random_vector(n, 7);
  const std::vector<float> dh = random_vector(n, 8);
  std::vector<double> dg_want(n), du_want(n);
  const std::vector<double> gate_d = to_double(gate), up_d = to_double(up), dh_d = to_double(dh);
  ref::silu_mul_backward(dg_want.data(), du_want.data(), dh_d.data(), gate_d.data(), up_d.data(),
                         n);
  std::vector<float> dg(n), du(n);
  cpu::silu_mul_backward(dg.data(), du.data(), dh.data(), gate.data(), up.data(), n);
  expect_close(dg, dg_want, "silu dgate");
  expect_close(du, du_want, "silu dup");
}

// Enough rows for the parallel path, a width that is no multiple of the lanes or column blocks;
// each gradient alone; the same bits with 1 and 2 threads.
TEST(Backward, RmsnormParallelPathMatchesReferenceAndThreadCounts) {
  const int64_t M = 40, C = 521;
  const std::vector<float> x = random_vector(M * C, 11), g = random_vector(C, 12);
  const std::vector<float> dz = random_vector(M * C, 13);
  const std::vector<double> xd = to_double(x), gd = to_double(g), dzd = to_double(dz);
  std::vector<double> rx_want(M * C, 0.0), rg_want(C, 0.0);
  ref::rmsnorm_backward(rx_want.data(), rg_want.data(), dzd.data(), xd.data(), gd.data(), M, C,
                        1e-6f);
  std::vector<std::vector<float>> runs;
  const int default_threads = num_threads();
  for (int threads : {1, 2}) {
    set_num_threads(threads);
    std::vector<float> rx(M * C, 0.0f), rg(C, 0.0f);
    cpu::rmsnorm_backward(rx.data(), nullptr, dz.data(), x.data(), g.data(), M, C, 1e-6f);
    cpu::rmsnorm_backward(nullptr, rg.data(), dz.data(), x.data(), g.data(), M, C, 1e-6f);
    expect_close(rx, rx_want, "rmsnorm dx");
    expect_close(rg, rg_want, "rmsnorm dweight");
    runs.push_back(rx);
    runs.push_back(rg);
  }
  set_num_threads(default_threads);
  EXPECT_EQ(runs[0], runs[2]);
  EXPECT_EQ(runs[1], runs[3]);
}

TEST(Backward, RopeBackwardUndoesRopeForward) {
  for (bool interleaved : {true, false}) {
    const int64_t T = 5, heads = 3, dim = 8, stride = heads * dim + 2;
    std::vector<float> x = random_vector(T * stride, 9), original = x;
    std::vector<float> cos(T * dim / 2), sin(T * dim / 2);
    for (size_t i = 0; i < cos.size(); i++)
      cos[i] = std::cos(0.37f * i), sin[i] = std::sin(0.37f * i);
    cpu::rope_forward(x.data(), T, heads, stride, dim, dim, cos.data(), sin.data(), interleaved);
    cpu::rope_backward(x.data(), T, heads, stride, dim, dim, cos.data(), sin.data(), interleaved);
    for (size_t i = 0; i < x.size(); i++) ASSERT_NEAR(x[i], original[i], 1e-5) << i;
  }
}

// ---------------------------------------------------------------------------------------------
// The references' backward against double-precision central differences: for each input x of
// an op, f(t) = <dout, op(x + t u)> along a random u against <dx, u> from the backward.
// Rounding of f: each output is a sum of at most kMaxTerms products, so its relative error is
// below kMaxTerms DBL_EPSILON (Higham's gamma_n), and f's below that times sum |dout_i y_i|;
// the shifted input x + t u adds DBL_EPSILON / 2 sum |dx_i x_i|. Steps at the optimum for O(1)
// inputs (cbrt(eps) ~ 6e-6 times 4, 2, 1, ...): there is no routing to keep.

constexpr double kMaxTerms = 64;  // the longest sum below: head dimension, K, C, keys (<= 64)

std::vector<double> random_doubles(size_t n, uint32_t seed) {
  return to_double(random_vector(n, seed));
}

struct RefInput {
  const char* name;
  std::vector<double>* x;
  const std::vector<double>* grad;  // d <dout, y> / d x from the backward
};

// forward() writes y from the inputs (read in place); f = <dout, y>.
void expect_reference_gradients(const char* op, const std::function<void()>& forward,
                                const std::vector<double>& y, const std::vector<double>& dout,
                                const std::vector<RefInput>& inputs) {
  auto objective = [&](double* magnitude) {
    forward();
    double f = 0.0;
    for (size_t i = 0; i < y.size(); i++) {
      f += dout[i] * y[i];
      if (magnitude != nullptr) *magnitude += std::fabs(dout[i] * y[i]);
    }
    return f;
  };
  for (uint32_t which = 0; which < inputs.size(); which++) {
    const RefInput& in = inputs[which];
    std::vector<double>& x = *in.x;
    const std::vector<double> saved = x, u = random_doubles(x.size(), 500 + which);
    double f_magnitude = 0.0, analytic = 0.0, analytic_magnitude = 0.0, x_magnitude = 0.0;
    objective(&f_magnitude);
    for (size_t i = 0; i < x.size(); i++) {
      analytic += (*in.grad)[i] * u[i];
      analytic_magnitude += std::fabs((*in.grad)[i] * u[i]);
      x_magnitude += std::fabs((*in.grad)[i] * x[i]);
    }
    const FdObjective f = [&](double t) -> std::optional<double> {
      for (size_t i = 0; i < x.size(); i++) x[i] = saved[i] + t * u[i];
      const double value = objective(nullptr);
      x = saved;
      return value;
    };
    const std::optional<FdCheck> check =
        central_difference(f, DBL_EPSILON, kMaxTerms * f_magnitude + x_magnitude / 2, analytic,
                           analytic_magnitude, fd_steps(DBL_EPSILON));
    ASSERT_TRUE(check.has_value());
    expect_holds(*check, std::string(op) + " d/d " + in.name);
  }
}

TEST(ReferenceGradients, LinearRmsnormSiluMatchDoubleCentralDifferences) {
  const int64_t M = 3, K = 7, N = 5;
  std::vector<double> x = random_doubles(M * K, 21), w = random_doubles(N * K, 22);
  std::vector<double> y(M * N), dout = random_doubles(M * N, 23);
  std::vector<double> dx(M * K, 0.0), dw(N * K, 0.0);
  ref::linear_backward(dx.data(), dw.data(), dout.data(), x.data(), w.data(), M, K, N);
  expect_reference_gradients("linear",
                             [&] { ref::linear_forward(y.data(), x.data(), w.data(), M, K, N); }, y,
                             dout, {{"inp", &x, &dx}, {"weight", &w, &dw}});

  std::vector<double> g = random_doubles(K, 24), z(M * K), dz = random_doubles(M * K, 25);
  std::vector<double> rx(M * K, 0.0), rg(K, 0.0);
  ref::rmsnorm_backward(rx.data(), rg.data(), dz.data(), x.data(), g.data(), M, K, 1e-6f);
  expect_reference_gradients(
      "rmsnorm", [&] { ref::rmsnorm_forward(z.data(), x.data(), g.data(), M, K, 1e-6f); }, z, dz,
      {{"inp", &x, &rx}, {"weight", &g, &rg}});

  const int64_t n = 13;
  std::vector<double> gate = random_doubles(n, 26), up = random_doubles(n, 27), h(n);
  std::vector<double> dh = random_doubles(n, 28), dgate(n), dup(n);
  ref::silu_mul_backward(dgate.data(), dup.data(), dh.data(), gate.data(), up.data(), n);
  expect_reference_gradients("silu_mul",
                             [&] { ref::silu_mul_forward(h.data(), gate.data(), up.data(), n); }, h,
                             dh, {{"gate", &gate, &dgate}, {"up", &up, &dup}});
}

TEST(ReferenceGradients, AttentionMatchesDoubleCentralDifferences) {
  // GQA with a cached prefix (5 queries over 7 keys) and padded strides.
  const AttentionShape s = gqa_shape(5, 7, 4, 2, 8);
  Buffers b = make_buffers(s, 31);
  std::vector<double> q = to_double(b.q), k = to_double(b.k), v = to_double(b.v);
  const std::vector<double> dout = to_double(b.dout);
  std::vector<double> out(b.out.size(), 0.0);
  ref::attention_forward(out.data(), q.data(), k.data(), v.data(), s);
  std::vector<double> dq(q.size(), 0.0), dk(k.size(), 0.0), dv(v.size(), 0.0);
  ref::attention_backward(dq.data(), dk.data(), dv.data(), dout.data(), q.data(), k.data(),
                          v.data(), out.data(), s);
  std::vector<double> y(out.size(), 0.0);
  expect_reference_gradients(
      "attention", [&] { ref::attention_forward(y.data(), q.data(), k.data(), v.data(), s); }, y,
      dout, {{"q", &q, &dq}, {"k", &k, &dk}, {"v", &v, &dv}});
}

}  // namespace
}  // namespace dsmoe
