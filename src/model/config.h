// config.h: ModelConfig, the one flat hyper-parameter struct filled from a Hugging Face
// config.json (model_type deepseek, deepseek_v2, deepseek_v3) with the defaults of each
// architecture's own configuration code, and the quantities derived from it.
#pragma once
#include <algorithm>
#include <cstdint>
#include <string>

#include <nlohmann/json_fwd.hpp>

namespace dsmoe {

enum class Arch { kDeepseekV1, kDeepseekV2, kDeepseekV3 };
enum class ScoringFunc { kSoftmax, kSigmoid };
// greedy: top-k of the scores; group_limited_greedy: V2, group score = max; noaux_tc: V3,
// selection on score + e_score_correction_bias, group score = sum of the top-2.
enum class TopkMethod { kGreedy, kGroupLimitedGreedy, kNoauxTc };
enum class RopeType { kDefault, kLinear, kDynamic, kYarn };

struct ModelConfig {
  Arch arch = Arch::kDeepseekV3;
  std::string model_type;

  int64_t vocab_size = 0;
  int64_t hidden_size = 0;
  int64_t intermediate_size = 0;      // dense MLP width
  int64_t moe_intermediate_size = 0;  // one routed expert's width
  int64_t num_hidden_layers = 0;
  int64_t num_attention_heads = 0;
  int64_t num_key_value_heads = 0;  // V1 multi-head attention only
  float rms_norm_eps = 1e-6f;
  bool tie_word_embeddings = false;
  int64_t bos_token_id = -1;
  int64_t eos_token_id = -1;

  // Attention. V1: multi-head attention with head_dim = hidden_size / num_attention_heads.
  // V2/V3: Multi-head Latent Attention.
  bool attention_bias = false;  // V1 q/k/v/o biases
  int64_t head_dim = 0;         // V1
  int64_t q_lora_rank = 0;      // 0: plain q_proj (config null)
  int64_t kv_lora_rank = 0;
  int64_t qk_nope_head_dim = 0;
  int64_t qk_rope_head_dim = 0;
  int64_t v_head_dim = 0;

  // RoPE (rope_scaling or rope_parameters).
  double rope_theta = 10000.0;
  RopeType rope_type = RopeType::kDefault;
  double rope_factor = 1.0;
  int64_t max_position_embeddings = 2048;
  int64_t original_max_position_embeddings = 0;  // YaRN; 0 -> max_position_embeddings
  double beta_fast = 32.0;
  double beta_slow = 1.0;
  double mscale = 0.0;          // YaRN; 0 when absent
  double mscale_all_dim = 0.0;  // YaRN; 0 when absent
  double attention_factor = 0.0;  // YaRN; 0 -> derived from mscale/mscale_all_dim
  bool rope_truncate = true;

  // Mixture of experts. n_routed_experts == 0: every layer dense.
  int64_t n_routed_experts = 0;
  int64_t num_experts_per_tok = 0;
  int64_t n_shared_experts = 0;
  int64_t first_k_dense_replace = 0;
  int64_t moe_layer_freq = 1;
  int64_t n_group = 1;
  int64_t topk_group = 1;
  TopkMethod topk_method = TopkMethod::kGreedy;
  ScoringFunc scoring_func = ScoringFunc::kSoftmax;
  bool norm_topk_prob = false;
  float routed_scaling_factor = 1.0f;
  int64_t num_nextn_predict_layers = 0;  // DeepSeek-V3 multi-token prediction modules (D)
  // lambda of DeepSeek-V3 sec. 2.2 (Megatron-Core's key): the objective adds lambda / D * sum_k
  // L_k. Default 0.1 as Megatron-Core; the V3 paper trains with 0.3, then 0.1 for the last 4.8T.
  float mtp_loss_scaling_factor = 0.1f;

  // Training-time routing and balancing, each off unless config.json asks for it (DeepSeek's
  // keys where they exist, Megatron-Core's otherwise). Inference never drops tokens or adds noise.
  float aux_loss_alpha = 0.0f;         // alpha1, expert-level balance loss (DeepSeek-V2 eq. 12)
  bool seq_aux = false;                // per sequence (V1 seq_aux; DeepSeek-V3 eq. 17-20)
  float device_aux_loss_alpha = 0.0f;  // alpha2 (V2 eq. 15): moe_device_level_aux_loss_coeff
  float comm_aux_loss_alpha = 0.0f;    // alpha3 (V2 eq. 18): moe_comm_aux_loss_coeff
  int64_t ep_size = 1;                 // devices D holding equal expert groups (DeepSeek-V2)
  bool expert_bias_update = false;     // V3 aux-loss-free bias: moe_router_enable_expert_bias
  float bias_update_rate = 0.001f;     // gamma: moe_router_bias_update_rate
  bool noisy_gating = false;           // KeepTopK noise x W_noise (Shazeer et al. 2017)
  float capacity_factor = 0.0f;        // moe_expert_capacity_factor; 0: no capacity limit

  // Derived.
  bool use_mla() const { return arch != Arch::kDeepseekV1; }
  int64_t qk_head_dim() const { return qk_nope_head_dim + qk_rope_head_dim; }
  bool is_moe_layer(int64_t layer) const {
    return n_routed_experts > 0 && layer >= first_k_dense_replace && layer % moe_layer_freq == 0;
  }
  bool has_router_bias() const { return topk_method == TopkMethod::kNoauxTc; }
  // Devices for the device-level and communication losses: ep_size, else the routing groups.
  int64_t n_devices() const { return ep_size > 1 ? ep_size : n_group; }
  // Devices a token may reach: topk_group under group-limited routing, else min(K, D).
  int64_t max_devices_per_token() const {
    return topk_method == TopkMethod::kGreedy ? std::min(num_experts_per_tok, n_devices())
                                              : topk_group;
  }
  // The dimension RoPE rotates: qk_rope_head_dim (MLA) or head_dim (V1).
  int64_t rope_dim() const { return use_mla() ? qk_rope_head_dim : head_dim; }
  // Attention logit scale: qk_head_dim^-0.5 (times mscale^2 under YaRN with mscale_all_dim), or
  // head_dim^-0.5 for V1.
  float softmax_scale() const;
  // Floats one token occupies in the KV cache of one layer: kv_lora_rank + qk_rope_head_dim
  // (MLA latent + rope key) or 2 * num_key_value_heads * head_dim (V1 k and v).
  int64_t kv_cache_row() const;
};

// Parses a config.json object. `source` names the file in error messages.
ModelConfig parse_model_config(const nlohmann::json& json, const std::string& source);
// Reads `path`, or `path`/config.json when path is a directory.
ModelConfig load_model_config(const std::string& path);

const char* arch_name(Arch arch);

}  // namespace dsmoe
