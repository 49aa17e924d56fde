#include "model/moe.h"

#include <algorithm>
#include <vector>

#include "kernels/cpu/ops.h"

namespace dsmoe {

void mlp_forward(const MlpWeights& mlp, const float* x, float* out, int64_t n_tokens,
                 int64_t hidden, int64_t width) {
  std::vector<float> gate(n_tokens * width), up(n_tokens * width);  // (n, I)
  cpu::linear_forward(gate.data(), x, mlp.gate_proj.data, n_tokens, hidden, width);
  cpu::linear_forward(up.data(), x, mlp.up_proj.data, n_tokens, hidden, width);
  cpu::silu_mul_forward(gate.data(), gate.data(), up.data(), n_tokens * width);
  cpu::linear_forward(out, gate.data(), mlp.down_proj.data, n_tokens, width, hidden);
}

void moe_forward(const ModelConfig& c, const MoeWeights& moe, const float* x, float* out,
                 int64_t n_tokens, Routing& routing) {
  const int64_t H = c.hidden_size, E = c.n_routed_experts, K = c.num_experts_per_tok;
  route_tokens(c, moe, x, n_tokens, routing);

  // Gather: the (token, slot) assignments of each expert, in token order.
  std::vector<int64_t> offsets(E + 1, 0);
  for (int64_t i = 0; i < n_tokens * K; i++) offsets[routing.expert[i] + 1]++;
  for (int64_t e = 0; e < E; e++) offsets[e + 1] += offsets[e];
  std::vector<int64_t> assignment(n_tokens * K);  // flat index t * K + j, grouped by expert
  std::vector<int64_t> fill(offsets.begin(), offsets.end() - 1);
  for (int64_t i = 0; i < n_tokens * K; i++) assignment[fill[routing.expert[i]]++] = i;

  if (c.n_shared_experts > 0) {
    mlp_forward(moe.shared, x, out, n_tokens, H, c.moe_intermediate_size * c.n_shared_experts);
  } else {
    std::fill(out, out + n_tokens * H, 0.0f);
  }
  // One GEMM chain per expert over its gathered tokens; results scattered back with the weight.
  std::vector<float> x_expert, y_expert;
  for (int64_t e = 0; e < E; e++) {
    const int64_t begin = offsets[e], count = offsets[e + 1] - begin;
    if (count == 0) continue;
    x_expert.resize(count * H);  // (count, H)
    y_expert.resize(count * H);
    for (int64_t i = 0; i < count; i++) {
      const int64_t token = assignment[begin + i] / K;
      std::copy(x + token * H, x + (token + 1) * H, x_expert.data() + i * H);
    }
    mlp_forward(moe.experts[e], x_expert.data(), y_expert.data(), count, H,
                c.moe_intermediate_size);
    for (int64_t i = 0; i < count; i++) {
      const int64_t flat = assignment[begin + i], token = flat / K;
      const float w = routing.weight[flat];
      float* dst = out + token * H;
      const float* src = y_expert.data() + i * H;
      for (int64_t h = 0; h < H; h++) dst[h] += w * src[h];
    }
  }
}

}  // namespace dsmoe
