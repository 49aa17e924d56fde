// optimizer.h: AdamW with decoupled weight decay (Loshchilov & Hutter), the learning-rate schedule
// (linear warm-up, cosine decay) and clipping by the global gradient norm.
#pragma once
#include <cstdint>
#include <functional>
#include <string>

#include "model/config.h"
#include "model/weights.h"

namespace dsmoe {

struct AdamWConfig {
  float beta1 = 0.9f;
  float beta2 = 0.95f;
  float eps = 1e-8f;
  float weight_decay = 0.1f;  // matrices and embeddings only; never norms, biases, buffers
};

// First and second moments, shaped like the weights, and the step count.
struct AdamWState {
  ModelWeights m, v;
  int64_t step = 0;
};

AdamWState make_adamw_state(const ModelConfig& config, int64_t n_mtp);

// params -= lr * (m_hat / (sqrt(v_hat) + eps) + wd * params), moments updated from
// grad_scale * grads (clipping by the global norm folded into the same pass). Router bias buffers
// (TensorRole::kRouterBias) are not touched. The gradients are consumed: every one is left zero,
// ready for the next step's accumulation, so that they are streamed once per step.
void adamw_step(const ModelConfig& config, ModelWeights& params, ModelWeights& grads,
                AdamWState& state, float lr, const AdamWConfig& adamw, float grad_scale = 1.0f);

struct LrSchedule {
  float max_lr = 3e-3f;
  float min_lr = 3e-4f;
  int64_t warmup_steps = 0;
  int64_t total_steps = 1;
};
// Linear warm-up from max_lr / warmup_steps to max_lr, then cosine decay to min_lr at
// total_steps. `step` counts from 0.
float learning_rate(const LrSchedule& schedule, int64_t step);

// sqrt(sum of squares) over every trained gradient.
double global_grad_norm(const ModelConfig& config, ModelWeights& grads);
// Sum of squares over the trained gradients whose names `include` accepts (all when null).
// Empty gradients (another rank's experts) count for nothing, here and in every function below.
double grad_sum_of_squares(const ModelConfig& config, ModelWeights& grads,
                           const std::function<bool(const std::string&)>& include);
// Multiplies every gradient by `factor`.
void scale_grads(const ModelConfig& config, ModelWeights& grads, float factor);
// Sets every gradient to zero.
void zero_grads(const ModelConfig& config, ModelWeights& grads);

// Copies every weight into memory the model owns (weights viewed from a read-only mmap cannot be
// trained).
void make_weights_owned(const ModelConfig& config, ModelWeights& weights);

}  // namespace dsmoe
