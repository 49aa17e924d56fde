#include "train/optimizer.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include "kernels/cpu/ops.h"

namespace dsmoe {
namespace {

// Tensors the optimizer trains (router bias buffers move by the aux-loss-free rule instead).
bool is_trained(TensorRole role) { return role != TensorRole::kRouterBias; }
bool is_decayed(TensorRole role) {
  return role == TensorRole::kMatrix || role == TensorRole::kEmbedding ||
         role == TensorRole::kNoise;
}

// Visits the same tensor of two weight sets side by side.
template <typename Fn>
void for_each_pair(const ModelConfig& c, ModelWeights& a, ModelWeights& b, Fn&& fn) {
  std::vector<std::pair<TensorRole, Tensor*>> second;
  for_each_tensor(c, b, [&](const std::string&, const Shape&, TensorRole role, Tensor& t) {
    second.push_back({role, &t});
  });
  size_t i = 0;
  for_each_tensor(c, a, [&](const std::string&, const Shape&, TensorRole role, Tensor& t) {
    fn(role, t, *second[i++].second);
  });
}

// sum x_i^2 over fixed chunks in parallel, the chunks' sums added in order: the same bits for
// any number of threads.
double sum_of_squares(const float* x, int64_t n) {
  constexpr int64_t kChunk = int64_t{1} << 16;
  const int64_t n_chunks = (n + kChunk - 1) / kChunk;
  std::vector<double> partial(n_chunks);
#pragma omp parallel for schedule(static) if (n_chunks > 1)
  for (int64_t c = 0; c < n_chunks; c++)
    partial[c] = cpu::dot_f64(x + c * kChunk, x + c * kChunk, std::min(kChunk, n - c * kChunk));
  double sum = 0.0;
  for (double p : partial) sum += p;
  return sum;
}

}  // namespace

AdamWState make_adamw_state(const ModelConfig& config, int64_t n_mtp) {
  AdamWState state;
  for (ModelWeights* moments : {&state.m, &state.v}) {
    moments->mtp.resize(n_mtp);
    for_each_tensor(config, *moments,
                    [](const std::string&, const Shape& shape, TensorRole, Tensor& tensor) {
                      tensor = Tensor::zeros(shape);
                    });
  }
  return state;
}

void adamw_step(const ModelConfig& config, ModelWeights& params, ModelWeights& grads,
                AdamWState& state, float lr, const AdamWConfig& adamw, float grad_scale) {
  state.step++;
  const double bias1 = 1.0 - std::pow(static_cast<double>(adamw.beta1), state.step);
  const double bias2 = 1.0 - std::pow(static_cast<double>(adamw.beta2), state.step);
  std::vector<Tensor*> m_list, v_list;
  for_each_tensor(config, state.m, [&](const std::string&, const Shape&, TensorRole, Tensor& t) {
    m_list.push_back(&t);
  });
  for_each_tensor(config, state.v, [&](const std::string&, const Shape&, TensorRole, Tensor& t) {
    v_list.push_back(&t);
  });
  // Float32 constants hoisted out of the loop, so that it vectorizes: AdamW is a pass over four
  // float32 arrays of every parameter, bound by memory when the loop body is cheap.
  const float beta1 = adamw.beta1, beta2 = adamw.beta2;
  const float one_minus_beta1 = 1.0f - beta1, one_minus_beta2 = 1.0f - beta2;
  const float inv_bias1 = static_cast<float>(1.0 / bias1);
  const float inv_sqrt_bias2 = static_cast<float>(1.0 / std::sqrt(bias2));
  const float eps = adamw.eps;
  size_t index = 0;
  for_each_pair(config, params, grads, [&](TensorRole role, Tensor& p, Tensor& g) {
    Tensor& m = *m_list[index];
    Tensor& v = *v_list[index];
    index++;
    if (g.empty()) return;  // another rank's expert (expert parallelism)
    if (!is_trained(role)) {
      std::fill(g.data, g.data + g.numel(), 0.0f);
      return;
    }
    // Locals, not the lambda's captures: the loop then keeps them in registers and vectorizes.
    const float decay = is_decayed(role) ? adamw.weight_decay : 0.0f, step_lr = lr;
    const float b1 = beta1, b2 = beta2, c1 = one_minus_beta1, c2 = one_minus_beta2;
    const float ib1 = inv_bias1, isb2 = inv_sqrt_bias2, e = eps, gs = grad_scale;
    const int64_t n = p.numel();
    float* __restrict__ pd = p.data;
    float* __restrict__ md = m.data;
    float* __restrict__ vd = v.data;
    float* __restrict__ gd = g.data;
#pragma omp parallel for simd schedule(static) if (n > 65536)
    for (int64_t i = 0; i < n; i++) {
      const float grad = gd[i] * gs;
      gd[i] = 0.0f;  // consumed: the next step accumulates from zero
      const float m_i = b1 * md[i] + c1 * grad;
      const float v_i = b2 * vd[i] + c2 * grad * grad;
      md[i] = m_i;
      vd[i] = v_i;
      // m_hat / (sqrt(v_hat) + eps) with m_hat = m / bias1, v_hat = v / bias2
      const float direction = (m_i * ib1) / (std::sqrt(v_i) * isb2 + e);
      pd[i] -= step_lr * (direction + decay * pd[i]);
    }
  });
}

float learning_rate(const LrSchedule& s, int64_t step) {
  if (step < s.warmup_steps)
    return s.max_lr * static_cast<float>(step + 1) / static_cast<float>(s.warmup_steps);
  const int64_t decay_steps = std::max<int64_t>(s.total_steps - s.warmup_steps, 1);
  const double progress =
      std::min(1.0, static_cast<double>(step - s.warmup_steps) / static_cast<double>(decay_steps));
  const double cosine = 0.5 * (1.0 + std::cos(3.14159265358979323846 * progress));
  return static_cast<float>(s.min_lr + (s.max_lr - s.min_lr) * cosine);
}

double grad_sum_of_squares(const ModelConfig& config, ModelWeights& grads,
                           const std::function<bool(const std::string&)>& include) {
  double sum_sq = 0.0;
  for_each_tensor(config, grads,
                  [&](const std::string& name, const Shape&, TensorRole role, Tensor& g) {
                    if (is_trained(role) && !g.empty() && (!include || include(name)))
                      sum_sq += sum_of_squares(g.data, g.numel());
                  });
  return sum_sq;
}

double global_grad_norm(const ModelConfig& config, ModelWeights& grads) {
  return std::sqrt(grad_sum_of_squares(config, grads, nullptr));
}

void scale_grads(const ModelConfig& config, ModelWeights& grads, float factor) {
  for_each_tensor(config, grads, [&](const std::string&, const Shape&, TensorRole, Tensor& g) {
    if (g.empty()) return;
    const int64_t n = g.numel();
    float* data = g.data;
    const float f = factor;
#pragma omp parallel for simd schedule(static) if (n > 65536)
    for (int64_t i = 0; i < n; i++) data[i] *= f;
  });
}

void zero_grads(const ModelConfig& config, ModelWeights& grads) {
  for_each_tensor(config, grads, [&](const std::string&, const Shape&, TensorRole, Tensor& g) {
    if (!g.empty()) std::fill(g.data, g.data + g.numel(), 0.0f);
  });
}

void make_weights_owned(const ModelConfig& config, ModelWeights& weights) {
  for_each_tensor(config, weights,
                  [](const std::string&, const Shape& shape, TensorRole, Tensor& tensor) {
                    if (tensor.empty()) return;  // another rank's expert (expert parallelism)
                    Tensor owned = Tensor::zeros(shape);
                    std::copy(tensor.data, tensor.data + tensor.numel(), owned.data);
                    tensor = std::move(owned);
                  });
  if (config.tie_word_embeddings) weights.lm_head = weights.embed_tokens;
}

}  // namespace dsmoe
