// Tests for train/optimizer: one AdamW step against its formula element by element, by hand on
// small numbers, and the gradient scale (clipping) folded into the step.
#include <gtest/gtest.h>

#include <cmath>
#include <nlohmann/json.hpp>
#include <vector>

#include "model/config.h"
#include "model/weights.h"
#include "tensor/random.h"
#include "tiny_models.h"
#include "train/optimizer.h"

namespace dsmoe {
namespace {

// Tiny DeepSeek-V3 (tiny_models.h) with the byte vocabulary and two layers.
json tiny_train_json() { return tiny_v3_json(/*n_layers=*/2, /*vocab=*/256); }

// Two steps on the tiny model's tensors with random gradients, every element against the
// formula in double: m = b1 m + (1 - b1) g, v = b2 v + (1 - b2) g^2, bias-corrected,
// p -= lr (m_hat / (sqrt(v_hat) + eps) + wd p) with wd only on matrices/embeddings (and the noise
// projection, a matrix); norms get no decay; the router bias buffer is not touched at all.
TEST(AdamW, StepEqualsTheFormula) {
  json j = tiny_train_json();
  j["noisy_gating"] = true;
  const ModelConfig c = parse_model_config(j, "test");
  ModelWeights params = random_weights(c, 5);
  ModelWeights grads = zeros_like_weights(c);
  AdamWState state = make_adamw_state(c, 0);
  AdamWConfig adamw;
  adamw.beta1 = 0.8f;
  adamw.beta2 = 0.9f;
  adamw.eps = 1e-6f;
  adamw.weight_decay = 0.2f;
  const float lr = 0.05f;
  // Router bias: a value that must survive, with a gradient that must be ignored.
  Tensor& bias = params.layers[1].moe.e_score_correction_bias;
  for (int64_t e = 0; e < bias.numel(); e++) bias.data[e] = 0.1f * static_cast<float>(e);

  struct Reference {
    std::vector<double> p, m, v;
    TensorRole role;
  };
  std::map<std::string, Reference> ref;
  for_each_tensor(c, params,
                  [&](const std::string& name, const Shape&, TensorRole role, Tensor& t) {
                    ref[name] = {std::vector<double>(t.data, t.data + t.numel()),
                                 std::vector<double>(t.numel(), 0.0),
                                 std::vector<double>(t.numel(), 0.0), role};
                  });
  Rng rng(9);
  for (int step = 1; step <= 2; step++) {
    std::map<std::string, std::vector<float>> g;
    for_each_tensor(c, grads, [&](const std::string& name, const Shape&, TensorRole, Tensor& t) {
      for (int64_t i = 0; i < t.numel(); i++) t.data[i] = rng.normal();
      g[name].assign(t.data, t.data + t.numel());
    });
    adamw_step(c, params, grads, state, lr, adamw);
    EXPECT_EQ(state.step, step);
    const double bias1 = 1.0 - std::pow(0.8, step), bias2 = 1.0 - std::pow(0.9, step);
    std::map<std::string, Tensor> m_by_name, v_by_name;
    for_each_tensor(c, state.m, [&](const std::string& name, const Shape&, TensorRole, Tensor& t) {
      m_by_name[name] = t;
    });
    for_each_tensor(c, state.v, [&](const std::string& name, const Shape&, TensorRole, Tensor& t) {
      v_by_name[name] = t;
    });
    for_each_tensor(
        c, params, [&](const std::string& name, const Shape&, TensorRole role, Tensor& t) {
          Reference& r = ref[name];
          const bool trained = role != TensorRole::kRouterBias;
          const bool decayed = role == TensorRole::kMatrix || role == TensorRole::kEmbedding ||
                               role == TensorRole::kNoise;
          for (int64_t i = 0; i < t.numel(); i++) {
            if (trained) {
              const double gi = static_cast<float>(g[name][i]);
              r.m[i] = 0.8 * r.m[i] + 0.2 * gi;
              r.v[i] = 0.9 * r.v[i] + 0.1 * gi * gi;
              const double update = (r.m[i] / bias1) / (std::sqrt(r.v[i] / bias2) + 1e-6);
              r.p[i] -= 0.05 * (update + (decayed ? 0.2 * r.p[i] : 0.0));
            }
            ASSERT_NEAR(t.data[i], r.p[i], 2e-6 * (1.0 + std::fabs(r.p[i]))) << name << " " << i;
            ASSERT_NEAR(m_by_name[name].data[i], r.m[i], 1e-6 * (1.0 + std::fabs(r.m[i]))) << name;
            ASSERT_NEAR(v_by_name[name].data[i], r.v[i], 1e-6 * (1.0 + std::fabs(r.v[i]))) << name;
          }
        });
  }
  for (int64_t e = 0; e < bias.numel(); e++) EXPECT_EQ(bias.data[e], 0.1f * static_cast<float>(e));
}

// adamw_step(..., grad_scale) is scale_grads then adamw_step, to the bit; either way the
// gradients are left zero for the next accumulation.
TEST(AdamW, GradScaleIsScaleGradsAndGradientsAreConsumed) {
  const ModelConfig c = parse_model_config(tiny_train_json(), "test");
  ModelWeights fused = random_weights(c, 5), separate = random_weights(c, 5);
  ModelWeights g_fused = zeros_like_weights(c), g_separate = zeros_like_weights(c);
  for (ModelWeights* g : {&g_fused, &g_separate}) {
    Rng rng(3);
    for_each_tensor(c, *g, [&](const std::string&, const Shape&, TensorRole, Tensor& t) {
      for (int64_t i = 0; i < t.numel(); i++) t.data[i] = rng.normal();
    });
  }
  AdamWState s_fused = make_adamw_state(c, 0), s_separate = make_adamw_state(c, 0);
  adamw_step(c, fused, g_fused, s_fused, 0.01f, AdamWConfig{}, 0.37f);
  scale_grads(c, g_separate, 0.37f);
  adamw_step(c, separate, g_separate, s_separate, 0.01f, AdamWConfig{});
  std::map<std::string, Tensor> expected = by_name(c, separate);
  for_each_tensor(c, fused, [&](const std::string& name, const Shape&, TensorRole, Tensor& t) {
    for (int64_t i = 0; i < t.numel(); i++) ASSERT_EQ(t.data[i], expected[name].data[i]) << name;
  });
  for (ModelWeights* g : {&g_fused, &g_separate})
    for_each_tensor(c, *g, [&](const std::string& name, const Shape&, TensorRole, Tensor& t) {
      for (int64_t i = 0; i < t.numel(); i++) ASSERT_EQ(t.data[i], 0.0f) << name;
    });
}

// The same rule on numbers small enough to follow by hand: p = 1, g = 0.5, lr = 0.1, wd = 0.1:
// m_hat = g, v_hat = g^2, so the Adam direction is 1 (eps aside): a matrix becomes
// 1 - 0.1 (1 + 0.1) = 0.89, a norm 1 - 0.1 = 0.9, the router bias stays 1.
TEST(AdamW, FirstStepByHand) {
  const ModelConfig c = parse_model_config(tiny_train_json(), "test");
  ModelWeights params = random_weights(c, 5), grads = zeros_like_weights(c);
  AdamWState state = make_adamw_state(c, 0);
  AdamWConfig adamw;  // beta1 0.9, beta2 0.95, eps 1e-8
  adamw.weight_decay = 0.1f;
  Tensor& matrix = params.layers[1].moe.gate;
  Tensor& norm = params.layers[1].post_attention_layernorm;
  Tensor& bias = params.layers[1].moe.e_score_correction_bias;
  for (Tensor* t : {&matrix, &norm, &bias}) std::fill(t->data, t->data + t->numel(), 1.0f);
  for (Tensor* t : {&grads.layers[1].moe.gate, &grads.layers[1].post_attention_layernorm,
                    &grads.layers[1].moe.e_score_correction_bias})
    std::fill(t->data, t->data + t->numel(), 0.5f);
  adamw_step(c, params, grads, state, 0.1f, adamw);
  EXPECT_NEAR(matrix.data[0], 0.89f, 1e-6f);
  EXPECT_NEAR(norm.data[0], 0.9f, 1e-6f);
  EXPECT_EQ(bias.data[0], 1.0f);
  EXPECT_EQ(state.m.layers[1].moe.e_score_correction_bias.data[0], 0.0f);
}

}  // namespace
}  // namespace dsmoe
