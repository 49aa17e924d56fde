#include "model/moe.h"

#include <omp.h>

#include <algorithm>
#include <memory>
#include <vector>

#include "kernels/cpu/ops.h"
#include "kernels/cpu/quant_ops.h"
#include "model/expert_parallel.h"
#include "util/profile.h"

namespace dsmoe {
namespace {

bool is_quantized(const MlpWeights& mlp) {
  return mlp.gate_proj.quant != nullptr && mlp.up_proj.quant != nullptr &&
         mlp.down_proj.quant != nullptr;
}

// Inference with quantized weights: the MLPs of `jobs` (weights, input [M, H], output [M, H],
// activations) as two grouped products, gate and up of all of them, then all down projections,
// so that decode wakes the threads twice per layer instead of three times per expert.
struct MlpJob {
  const MlpWeights* mlp;
  const float* x;
  float* out;
  int64_t M, width;
  MlpActs* acts;
};

void mlp_forward_grouped(const std::vector<MlpJob>& mlps) {
  thread_local std::vector<cpu::QuantJob> jobs;  // (kept: this runs per layer and token)
  jobs.clear();
  for (const MlpJob& j : mlps) {
    j.acts->gate.resize(j.M * j.width);
    j.acts->up.resize(j.M * j.width);
    j.acts->hidden.resize(j.M * j.width);
    jobs.push_back({j.acts->gate.data(), j.x, j.mlp->gate_proj.quant.get(), j.M});
    jobs.push_back({j.acts->up.data(), j.x, j.mlp->up_proj.quant.get(), j.M});
  }
  cpu::quant_linear_forward_group(jobs.data(), static_cast<int64_t>(jobs.size()));
  jobs.clear();
  for (const MlpJob& j : mlps) {
    cpu::silu_mul_forward(j.acts->hidden.data(), j.acts->gate.data(), j.acts->up.data(),
                          j.M * j.width);
    jobs.push_back({j.out, j.acts->hidden.data(), j.mlp->down_proj.quant.get(), j.M});
  }
  cpu::quant_linear_forward_group(jobs.data(), static_cast<int64_t>(jobs.size()));
}

// The experts that received tokens, in order (into `active`, kept across calls).
void find_active_experts(const std::vector<int64_t>& offsets, std::vector<int64_t>& active) {
  active.clear();
  for (size_t e = 0; e + 1 < offsets.size(); e++)
    if (offsets[e + 1] > offsets[e]) active.push_back(static_cast<int64_t>(e));
}

// out[token of assignment i] += weight[flat i] * rows[i] (weight null: += rows[i]), in
// assignment order, so that each element's sum has a fixed order; threads split the columns.
void scatter_add(const std::vector<int64_t>& assignment, int64_t K, int64_t H, const float* rows,
                 const float* weight, float* out) {
  const auto n_assigned = static_cast<int64_t>(assignment.size());
#pragma omp parallel if (n_assigned * H > (1 << 18))
  {
    const int64_t n_threads = omp_get_num_threads(), t = omp_get_thread_num();
    const int64_t h0 = H * t / n_threads, h1 = H * (t + 1) / n_threads;
    for (int64_t i = 0; i < n_assigned; i++) {
      const int64_t flat = assignment[i];
      float* dst = out + (flat / K) * H;
      const float* src = rows + i * H;
      if (weight != nullptr) {
        const float w = weight[flat];
        for (int64_t h = h0; h < h1; h++) dst[h] += w * src[h];
      } else {
        for (int64_t h = h0; h < h1; h++) dst[h] += src[h];
      }
    }
  }
}

// Whether running whole experts on different threads pays: several experts and enough work.
bool parallel_experts(const std::vector<int64_t>& active, int64_t n_assigned, int64_t hidden,
                      int64_t width) {
  return active.size() > 1 && n_assigned * hidden * width >= (int64_t{1} << 20);
}

}  // namespace

void mlp_forward(const MlpWeights& mlp, const float* x, float* out, int64_t n_tokens,
                 int64_t hidden, int64_t width, MlpActs& a) {
  if (is_quantized(mlp)) {
    mlp_forward_grouped({{&mlp, x, out, n_tokens, width, &a}});
    return;
  }
  a.gate.resize(n_tokens * width);
  a.up.resize(n_tokens * width);
  a.hidden.resize(n_tokens * width);
  cpu::linear(a.gate.data(), x, mlp.gate_proj, n_tokens, hidden, width);
  cpu::linear(a.up.data(), x, mlp.up_proj, n_tokens, hidden, width);
  cpu::silu_mul_forward(a.hidden.data(), a.gate.data(), a.up.data(), n_tokens * width);
  cpu::linear(out, a.hidden.data(), mlp.down_proj, n_tokens, width, hidden);
}

void mlp_backward(const MlpWeights& mlp, MlpWeights& g, const float* x, const float* dout,
                  float* dx, int64_t n_tokens, int64_t hidden, int64_t width, const MlpActs& a) {
  std::vector<float> dhidden(n_tokens * width, 0.0f), dgate(n_tokens * width),
      dup(n_tokens * width);  // (n, I)
  cpu::linear_backward(dhidden.data(), g.down_proj.data, dout, a.hidden.data(), mlp.down_proj.data,
                       n_tokens, width, hidden);
  cpu::silu_mul_backward(dgate.data(), dup.data(), dhidden.data(), a.gate.data(), a.up.data(),
                         n_tokens * width);
  cpu::linear_backward(dx, g.gate_proj.data, dgate.data(), x, mlp.gate_proj.data, n_tokens, hidden,
                       width);
  cpu::linear_backward(dx, g.up_proj.data, dup.data(), x, mlp.up_proj.data, n_tokens, hidden,
                       width);
}

namespace {

// Groups the kept slots of rows by expert (in row order within an expert) into acts.offsets /
// assignment, and gathers their inputs into x_sorted.
void gather_by_expert(const ModelConfig& c, const float* x, int64_t n_rows, MoeActs& a) {
  const int64_t H = c.hidden_size, E = c.n_routed_experts, K = c.num_experts_per_tok;
  const std::vector<int32_t>& expert = a.slot_expert;
  a.offsets.assign(E + 1, 0);
  for (int64_t i = 0; i < n_rows * K; i++)
    if (expert[i] >= 0) a.offsets[expert[i] + 1]++;
  for (int64_t e = 0; e < E; e++) a.offsets[e + 1] += a.offsets[e];
  const int64_t n_assigned = a.offsets[E];
  a.assignment.resize(n_assigned);
  std::vector<int64_t> fill(a.offsets.begin(), a.offsets.end() - 1);
  for (int64_t i = 0; i < n_rows * K; i++)
    if (expert[i] >= 0) a.assignment[fill[expert[i]]++] = i;
  a.x_sorted.resize(n_assigned * H);
  a.y_sorted.resize(n_assigned * H);
#pragma omp parallel for schedule(static) if (n_assigned * H > (1 << 18))
  for (int64_t i = 0; i < n_assigned; i++) {
    const int64_t row = a.assignment[i] / K;
    std::copy(x + row * H, x + (row + 1) * H, a.x_sorted.data() + i * H);
  }
}

// The first expert this process holds (experts outside its range are empty tensors).
const MlpWeights& a_held_expert(const MoeWeights& moe) {
  for (const MlpWeights& expert : moe.experts)
    if (!expert.down_proj.empty()) return expert;
  return moe.experts[0];
}

// routed_experts_forward; `shared` (quantized inference in one process) joins the experts'
// grouped products, so that decode wakes the threads twice per layer.
void run_routed_experts(const ModelConfig& c, const MoeWeights& moe, const float* x, int64_t n_rows,
                        const float* slot_weight, double* partial, MoeActs& a,
                        const MlpJob* shared) {
  const int64_t H = c.hidden_size, E = c.n_routed_experts, K = c.num_experts_per_tok;
  const int64_t I = c.moe_intermediate_size;
  {
    ProfileScope timer(ProfileOp::kMoeCombine);
    gather_by_expert(c, x, n_rows, a);
  }
  const int64_t n_assigned = a.offsets[E];
  a.experts.resize(E);
  find_active_experts(a.offsets, a.active);
  const std::vector<int64_t>& active = a.active;
  if (ProfileScope experts_timer(ProfileOp::kExperts);
      shared != nullptr || (!active.empty() && is_quantized(moe.experts[active[0]]))) {
    std::vector<MlpJob> grouped;
    if (shared != nullptr) grouped.push_back(*shared);
    for (int64_t e : active) {
      const int64_t begin = a.offsets[e], count = a.offsets[e + 1] - begin;
      // A single token is read in place, so that decode's experts share one rounded input.
      const float* x_e =
          count == 1 ? x + (a.assignment[begin] / K) * H : a.x_sorted.data() + begin * H;
      grouped.push_back(
          {&moe.experts[e], x_e, a.y_sorted.data() + begin * H, count, I, &a.experts[e]});
    }
    mlp_forward_grouped(grouped);
  } else {
    // Experts in parallel, each on one thread (products nested in a parallel region run on the
    // calling thread): small per-expert GEMMs keep both cores busy without syncing inside.
#pragma omp parallel for schedule(dynamic, 1) if (parallel_experts(active, n_assigned, H, I))
    for (size_t i = 0; i < active.size(); i++) {
      const int64_t e = active[i], begin = a.offsets[e], count = a.offsets[e + 1] - begin;
      mlp_forward(moe.experts[e], a.x_sorted.data() + begin * H, a.y_sorted.data() + begin * H,
                  count, H, I, a.experts[e]);
    }
  }
  // partial[row] = sum of w * y in assignment (expert) order; double products of two floats
  // are exact, so the sums are too unless a row's terms span more than ~29 binades.
  ProfileScope combine_timer(ProfileOp::kMoeCombine);
  std::fill(partial, partial + n_rows * H, 0.0);
#pragma omp parallel if (n_assigned * H > (1 << 18))
  {
    const int64_t n_threads = omp_get_num_threads(), t = omp_get_thread_num();
    const int64_t h0 = H * t / n_threads, h1 = H * (t + 1) / n_threads;
    for (int64_t i = 0; i < n_assigned; i++) {
      const int64_t flat = a.assignment[i];
      double* dst = partial + (flat / K) * H;
      const float* src = a.y_sorted.data() + i * H;
      const double w = slot_weight[flat];
      for (int64_t h = h0; h < h1; h++) dst[h] += w * static_cast<double>(src[h]);
    }
  }
}

}  // namespace

void routed_experts_forward(const ModelConfig& c, const MoeWeights& moe, const float* x,
                            int64_t n_rows, const float* slot_weight, double* partial, MoeActs& a) {
  run_routed_experts(c, moe, x, n_rows, slot_weight, partial, a, nullptr);
}

void routed_experts_backward(const ModelConfig& c, const MoeWeights& moe, MoeWeights& g,
                             const float* dout, const float* slot_weight, int64_t n_rows, float* dx,
                             float* dweight, const MoeActs& a) {
  const int64_t H = c.hidden_size, E = c.n_routed_experts, K = c.num_experts_per_tok;
  const int64_t I = c.moe_intermediate_size;
  // out += w * y: d y = w * d out; d w = <d out, y> (0 for dropped assignments).
  const int64_t n_assigned = a.offsets[E];
  // (not value-initialized: dy_sorted is written whole below, dx_sorted zeroed per expert)
  const std::unique_ptr<float[]> dy_sorted(new float[n_assigned * H]),
      dx_sorted(new float[n_assigned * H]);
  std::fill(dweight, dweight + n_rows * K, 0.0f);
#pragma omp parallel for schedule(static) if (n_assigned * H > (1 << 16))
  for (int64_t i = 0; i < n_assigned; i++) {
    const int64_t flat = a.assignment[i];
    const float w = slot_weight[flat];
    const float* d = dout + (flat / K) * H;
    const float* y = a.y_sorted.data() + i * H;
    for (int64_t h = 0; h < H; h++) dy_sorted[i * H + h] = w * d[h];
    dweight[flat] = static_cast<float>(cpu::dot_f64(d, y, H));
  }
  const std::vector<int64_t>& active = a.active;  // (the forward's)
  // Experts in parallel: each writes only its own gradients and its own rows of dx_sorted.
#pragma omp parallel for schedule(dynamic, 1) if (parallel_experts(active, n_assigned, H, I))
  for (size_t i = 0; i < active.size(); i++) {
    const int64_t e = active[i], begin = a.offsets[e], count = a.offsets[e + 1] - begin;
    std::fill_n(dx_sorted.get() + begin * H, count * H, 0.0f);
    mlp_backward(moe.experts[e], g.experts[e], a.x_sorted.data() + begin * H,
                 dy_sorted.get() + begin * H, dx_sorted.get() + begin * H, count, H, I,
                 a.experts[e]);
  }
  scatter_add(a.assignment, K, H, dx_sorted.get(), nullptr, dx);
}

void moe_forward(const ModelConfig& c, const MoeWeights& moe, const float* x, float* out,
                 int64_t n_tokens, MoeActs& a, const MoeTraining* training) {
  const int64_t H = c.hidden_size, E = c.n_routed_experts, K = c.num_experts_per_tok;
  const int64_t I = c.moe_intermediate_size;
  {
    ProfileScope timer(ProfileOp::kRouter);
    route_tokens(c, moe, x, n_tokens, a.routing, training != nullptr ? &training->router : nullptr);
  }
  a.aux = BalanceLosses{};
  a.aux_dscores.clear();
  if (training != nullptr && training->balance_losses) {
    a.aux_dscores.assign(n_tokens * E, 0.0f);
    a.aux = balance_losses(c, a.routing, training->n_seqs, n_tokens / training->n_seqs,
                           a.aux_dscores.data());
  }
  if (expert_parallel_active(moe)) {  // the shared experts run while the tokens travel
    moe_routed_forward_parallel(c, moe, x, out, n_tokens, a, [&] {
      if (c.n_shared_experts > 0)
        mlp_forward(moe.shared, x, out, n_tokens, H, I * c.n_shared_experts, a.shared);
      else
        std::fill(out, out + n_tokens * H, 0.0f);
    });
    return;
  }
  // Slots kept (capacity drops happen in token order) name their expert; dropped ones -1.
  const std::vector<uint8_t>& dropped = a.routing.dropped;
  a.slot_expert.resize(n_tokens * K);
  for (int64_t i = 0; i < n_tokens * K; i++)
    a.slot_expert[i] = dropped.empty() || !dropped[i] ? a.routing.expert[i] : -1;
  // With quantized (inference) weights the shared experts join the routed ones' grouped
  // products; else they run first.
  const bool group =
      is_quantized(a_held_expert(moe)) && (c.n_shared_experts == 0 || is_quantized(moe.shared));
  MlpJob shared_job{&moe.shared, x, out, n_tokens, I * c.n_shared_experts, &a.shared};
  if (c.n_shared_experts == 0)
    std::fill(out, out + n_tokens * H, 0.0f);
  else if (!group) {
    ProfileScope timer(ProfileOp::kExperts);
    mlp_forward(moe.shared, x, out, n_tokens, H, I * c.n_shared_experts, a.shared);
  }
  // (n, H), zeroed and filled by run_routed_experts; kept per thread (grown only) instead of a
  // vector zeroed once more per layer (8 MB at 512 tokens of infer-lite8)
  thread_local std::vector<double> partial_kept;
  if (partial_kept.size() < static_cast<size_t>(n_tokens * H)) partial_kept.resize(n_tokens * H);
  double* partial = partial_kept.data();
  run_routed_experts(c, moe, x, n_tokens, a.routing.weight.data(), partial, a,
                     group && c.n_shared_experts > 0 ? &shared_job : nullptr);
  ProfileScope timer(ProfileOp::kMoeCombine);
#pragma omp parallel for schedule(static) if (n_tokens * H > (1 << 18))
  for (int64_t i = 0; i < n_tokens * H; i++)
    out[i] = static_cast<float>(static_cast<double>(out[i]) + partial[i]);
}

void moe_backward(const ModelConfig& c, const MoeWeights& moe, MoeWeights& g, const float* x,
                  const float* dout, float* dx, int64_t n_tokens, const MoeActs& a) {
  const int64_t H = c.hidden_size, K = c.num_experts_per_tok;
  const int64_t I = c.moe_intermediate_size;
  if (c.n_shared_experts > 0)
    mlp_backward(moe.shared, g.shared, x, dout, dx, n_tokens, H, I * c.n_shared_experts, a.shared);
  std::vector<float> dweight(n_tokens * K, 0.0f);  // [n, K]
  if (expert_parallel_active(moe))
    moe_routed_backward_parallel(c, moe, g, dout, dx, dweight.data(), n_tokens, a);
  else
    routed_experts_backward(c, moe, g, dout, a.routing.weight.data(), n_tokens, dx, dweight.data(),
                            a);
  route_backward(c, moe, g, x, a.routing, dweight.data(),
                 a.aux_dscores.empty() ? nullptr : a.aux_dscores.data(), dx, n_tokens);
}

}  // namespace dsmoe
