// tiny_models.h: tiny random V2/V3 models and helpers shared by the tests of the training-time
// routing options (test_balance.cpp, test_routing_options.cpp). Included once per test program.
#pragma once
#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <set>
#include <string>
#include <vector>

#include "model/balance.h"
#include "model/config.h"
#include "model/moe.h"
#include "model/router.h"
#include "model/transformer.h"
#include "model/weights.h"
#include "tensor/random.h"
#include "train/checkpoint.h"
#include "train/optimizer.h"
#include "train/trainer.h"
#include "util/check.h"
#include "util/threads.h"
#include "test_util.h"

namespace dsmoe {
namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;


// ---------------------------------------------------------------------------------------------
// Tiny models

// Hidden 32, MLA with q LoRA, 8 routed experts top-2 in 4 groups (2 kept), 1 shared expert.
// Three layers (dense, MoE, MoE) so that a later router sees an earlier MoE layer's experts.
inline json tiny_v3_json(int64_t n_layers = 3, int64_t vocab = 64) {
  return {{"model_type", "deepseek_v3"},
          {"vocab_size", vocab},
          {"hidden_size", 32},
          {"intermediate_size", 64},
          {"moe_intermediate_size", 16},
          {"num_hidden_layers", n_layers},
          {"first_k_dense_replace", 1},
          {"num_attention_heads", 2},
          {"q_lora_rank", 16},
          {"kv_lora_rank", 16},
          {"qk_nope_head_dim", 8},
          {"qk_rope_head_dim", 4},
          {"v_head_dim", 8},
          {"n_routed_experts", 8},
          {"num_experts_per_tok", 2},
          {"n_shared_experts", 1},
          {"n_group", 4},
          {"topk_group", 2},
          {"max_position_embeddings", 64},
          {"num_nextn_predict_layers", 0}};
}

// The same shapes as DeepSeek-V2: softmax scores, greedy or group-limited selection.
inline json tiny_v2_json(const std::string& topk_method) {
  json j = tiny_v3_json();
  j["model_type"] = "deepseek_v2";
  j["scoring_func"] = "softmax";
  j["topk_method"] = topk_method;
  j["norm_topk_prob"] = false;
  j["routed_scaling_factor"] = 1.0;
  return j;
}

inline json with(json base, const json& options) {
  for (const auto& [key, value] : options.items()) base[key] = value;
  return base;
}

inline ModelConfig parse(const json& j) { return parse_model_config(j, "test"); }

inline std::vector<int64_t> random_ids(int64_t n, int64_t vocab, uint64_t seed) {
  Rng rng(seed);
  std::vector<int64_t> ids(n);
  for (int64_t& id : ids) id = static_cast<int64_t>(rng.next_u64() % vocab);
  return ids;
}

inline std::vector<float> random_normal(int64_t n, float std, uint64_t seed) {
  Rng rng(seed);
  std::vector<float> v(n);
  for (float& x : v) x = std * rng.normal();
  return v;
}

// Random weights; the router's bias buffer and noise projection (zeros at init) are made
// non-zero so that they take part.
inline ModelWeights test_weights(const ModelConfig& c, uint64_t seed) {
  ModelWeights w = random_weights(c, seed);
  Rng rng(seed + 1000);
  for (int64_t L = 0; L < c.num_hidden_layers; L++) {
    if (!c.is_moe_layer(L)) continue;
    MoeWeights& moe = w.layers[L].moe;
    if (c.has_router_bias())
      for (int64_t e = 0; e < moe.e_score_correction_bias.numel(); e++)
        moe.e_score_correction_bias.data[e] = 0.05f * rng.normal();
    if (c.noisy_gating)
      for (int64_t i = 0; i < moe.noise_weight.numel(); i++)
        moe.noise_weight.data[i] = rng.normal() / std::sqrt(static_cast<float>(c.hidden_size));
  }
  return w;
}

inline std::map<std::string, Tensor> by_name(const ModelConfig& c, ModelWeights& w) {
  std::map<std::string, Tensor> out;
  for_each_tensor(
      c, w, [&](const std::string& name, const Shape&, TensorRole, Tensor& t) { out[name] = t; });
  return out;
}

}  // namespace
}  // namespace dsmoe
