// test_mpi_moe.cpp: one MoE layer with its experts spread over the ranks against the same layer
// in one process. Alone it runs on one rank (the parallel path is then off); CTest's
// mpi_moe_np2 / np4 run it under mpirun, where every rank checks its share.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <memory>
#include <vector>

#include "comm/comm.h"
#include "kernels/cpu/ops.h"
#include "model/expert_parallel.h"
#include "tiny_models.h"

namespace dsmoe {
namespace {

// Relative to the largest magnitude of `expected`.
double max_relative(const float* expected, const float* actual, int64_t n) {
  double scale = 1e-30, worst = 0.0;
  for (int64_t i = 0; i < n; i++) scale = std::max(scale, std::fabs(double{expected[i]}));
  for (int64_t i = 0; i < n; i++)
    worst = std::max(worst, std::fabs(double{expected[i]} - actual[i]) / scale);
  return worst;
}

TEST(MpiMoe, ForwardBitIdenticalBackwardClose) {
  Comm& comm = world_comm();
  const int R = comm.size(), me = comm.rank();
  cpu::set_row_invariant_products(true);
  const ModelConfig c = parse(tiny_v3_json());     // 8 experts: R = 1, 2, 4 divide them
  const int64_t H = c.hidden_size, N = 16, L = 1;  // layer 1 is a MoE layer
  ModelWeights weights = test_weights(c, 7);
  MoeWeights& moe = weights.layers[L].moe;
  const std::vector<float> x = random_normal(N * H, 1.0f, 11),
                           dout = random_normal(N * H, 1.0f, 12);

  // One process: every token.
  std::vector<float> out_ref(N * H), dx_ref(N * H, 0.0f);
  MoeActs acts_ref;
  moe_forward(c, moe, x.data(), out_ref.data(), N, acts_ref);
  ModelWeights grads_ref = zeros_like_weights(c);
  moe_backward(c, moe, grads_ref.layers[L].moe, x.data(), dout.data(), dx_ref.data(), N, acts_ref);

  // R ranks: this rank's tokens, its experts.
  auto ep = std::make_shared<ExpertParallel>(comm, c);
  moe.expert_parallel = ep;
  const int64_t first = N * me / R, n = N * (me + 1) / R - first;
  std::vector<float> out(n * H), dx(n * H, 0.0f);
  MoeActs acts;
  moe_forward(c, moe, x.data() + first * H, out.data(), n, acts);
  ModelWeights grads = zeros_like_weights(c);
  moe_backward(c, moe, grads.layers[L].moe, x.data() + first * H, dout.data() + first * H,
               dx.data(), n, acts);
  moe.expert_parallel = nullptr;

  EXPECT_TRUE(std::equal(out.begin(), out.end(), out_ref.begin() + first * H))
      << "forward differs: " << max_relative(out_ref.data() + first * H, out.data(), n * H);
  EXPECT_LT(max_relative(dx_ref.data() + first * H, dx.data(), n * H), 1e-6);
  // This rank's experts saw every token in the one-process order: the same gradients.
  for (int64_t e = ep->shard().first; e < ep->shard().end; e++) {
    const Tensor& g = grads.layers[L].moe.experts[e].down_proj;
    const Tensor& g_ref = grads_ref.layers[L].moe.experts[e].down_proj;
    EXPECT_TRUE(std::equal(g.data, g.data + g.numel(), g_ref.data)) << "expert " << e;
  }
  // The router's and shared experts' gradients are sums over the ranks' tokens.
  for (Tensor* t : {&grads.layers[L].moe.gate, &grads.layers[L].moe.shared.up_proj}) {
    comm.allreduce_sum(t->data, t->numel());
    const Tensor& ref = t == &grads.layers[L].moe.gate ? grads_ref.layers[L].moe.gate
                                                       : grads_ref.layers[L].moe.shared.up_proj;
    EXPECT_LT(max_relative(ref.data, t->data, t->numel()), 1e-5);
  }
  cpu::set_row_invariant_products(false);
}

}  // namespace
}  // namespace dsmoe
