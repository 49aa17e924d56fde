#include "model/config.h"

#include <cmath>
#include <fstream>
#include <filesystem>
#include <nlohmann/json.hpp>

#include "util/check.h"

namespace dsmoe {
namespace {

using nlohmann::json;

// Reads config fields with the defaults of the architecture's configuration code, and names the
// file and field in every error.
class Fields {
 public:
  Fields(const json& object, const std::string& source) : object_(object), source_(source) {}

  bool present(const char* key) const { return object_.contains(key) && !object_[key].is_null(); }
  bool is_null(const char* key) const { return object_.contains(key) && object_[key].is_null(); }

  int64_t integer(const char* key, int64_t fallback) const {
    if (!present(key)) return fallback;
    const json& value = object_[key];
    // Integers, and floats with an integral value (2048.0), within +-2^53 (where every integer is
    // a double): a larger one would overflow int64_t or every size computed from it.
    constexpr double kLimit = 9007199254740992.0;  // 2^53
    const bool integral =
        value.is_number_integer() ||
        (value.is_number_float() && std::floor(value.get<double>()) == value.get<double>());
    DSMOE_CHECK(integral, "{}: field '{}' must be an integer, found {}", source_, key, value.dump());
    const double magnitude = value.is_number_unsigned()
                                 ? static_cast<double>(value.get<uint64_t>())
                                 : std::fabs(value.get<double>());
    DSMOE_CHECK(magnitude <= kLimit, "{}: field '{}' is out of range, found {}", source_, key,
                value.dump());
    return value.is_number_float() ? static_cast<int64_t>(value.get<double>())
                                   : value.get<int64_t>();
  }
  int64_t positive(const char* key, int64_t fallback) const {
    int64_t value = integer(key, fallback);
    DSMOE_CHECK(value > 0, "{}: field '{}' must be positive, found {}", source_, key, value);
    return value;
  }
  double number(const char* key, double fallback) const {
    if (!present(key)) return fallback;
    const json& value = object_[key];
    DSMOE_CHECK(value.is_number(), "{}: field '{}' must be a number, found {}", source_, key,
                value.dump());
    return value.get<double>();
  }
  bool boolean(const char* key, bool fallback) const {
    if (!present(key)) return fallback;
    const json& value = object_[key];
    DSMOE_CHECK(value.is_boolean(), "{}: field '{}' must be true or false, found {}", source_, key,
                value.dump());
    return value.get<bool>();
  }
  std::string string(const char* key, const std::string& fallback) const {
    if (!present(key)) return fallback;
    const json& value = object_[key];
    DSMOE_CHECK(value.is_string(), "{}: field '{}' must be a string, found {}", source_, key,
                value.dump());
    return value.get<std::string>();
  }
  const std::string& source() const { return source_; }

 private:
  const json& object_;
  const std::string& source_;
};

// Architecture defaults: configuration_deepseek.py of deepseek-moe-16b (V1), DeepSeek-V2 and
// DeepSeek-V3, used for keys a config.json leaves out.
struct Defaults {
  int64_t vocab_size, hidden_size, intermediate_size, moe_intermediate_size, num_hidden_layers,
      num_attention_heads, n_shared_experts, n_routed_experts, num_experts_per_tok,
      first_k_dense_replace, q_lora_rank, kv_lora_rank, n_group, topk_group,
      max_position_embeddings;
  double routed_scaling_factor;
  bool norm_topk_prob;
  const char* topk_method;
  const char* scoring_func;
};
constexpr Defaults kV1Defaults{102400, 4096, 11008, 1407, 30, 32, 0, 0, 0, 0, 0, 0, 1, 1, 2048,
                               1.0, false, "greedy", "softmax"};
constexpr Defaults kV2Defaults{102400, 4096, 11008, 1407, 30, 32, 0,    0,     0,  0, 1536, 512,
                               1,      1,    2048,  1.0,  false, "greedy", "softmax"};
constexpr Defaults kV3Defaults{129280, 7168, 18432, 2048, 61, 128, 1,    256,        8, 3, 1536, 512,
                               8,      4,    4096,  2.5,  true, "noaux_tc", "sigmoid"};

TopkMethod parse_topk_method(const std::string& name, const std::string& source) {
  // "gready" is the spelling of DeepSeek-V2's own configuration default.
  if (name == "greedy" || name == "gready") return TopkMethod::kGreedy;
  if (name == "group_limited_greedy") return TopkMethod::kGroupLimitedGreedy;
  if (name == "noaux_tc") return TopkMethod::kNoauxTc;
  fail(fmt::format("{}: field 'topk_method': unknown value '{}' (expected greedy, "
                   "group_limited_greedy or noaux_tc)", source, name));
}

ScoringFunc parse_scoring(const std::string& name, const std::string& source) {
  if (name == "softmax") return ScoringFunc::kSoftmax;
  if (name == "sigmoid") return ScoringFunc::kSigmoid;
  fail(fmt::format("{}: field 'scoring_func': unknown value '{}' (expected softmax or sigmoid)",
                   source, name));
}

// RoPE settings live in `rope_scaling` (DeepSeek's checkpoints, type in "type" or "rope_type") or
// `rope_parameters` (transformers 5, which also moves rope_theta inside).
void parse_rope(const json& object, const Fields& top, ModelConfig& config) {
  config.rope_theta = top.number("rope_theta", 10000.0);
  const json* rope = nullptr;
  const char* key = nullptr;
  for (const char* candidate : {"rope_parameters", "rope_scaling"}) {
    if (top.present(candidate)) {
      rope = &object[candidate];
      key = candidate;
      break;
    }
  }
  if (rope == nullptr) return;
  const std::string source = top.source() + ": " + key;
  DSMOE_CHECK(rope->is_object(), "{}: must be an object, found {}", source, rope->dump());
  Fields fields(*rope, source);
  config.rope_theta = fields.number("rope_theta", config.rope_theta);
  std::string type = fields.string("rope_type", fields.string("type", "default"));
  if (type == "default") {
    config.rope_type = RopeType::kDefault;
    return;
  }
  if (type == "linear") {
    config.rope_type = RopeType::kLinear;
  } else if (type == "dynamic") {
    config.rope_type = RopeType::kDynamic;
  } else if (type == "yarn") {
    config.rope_type = RopeType::kYarn;
  } else {
    fail(fmt::format("{}: unknown rope type '{}' (expected default, linear, dynamic or yarn)",
                     source, type));
  }
  config.rope_factor = fields.number("factor", 1.0);
  DSMOE_CHECK(config.rope_factor > 0, "{}: field 'factor' must be positive", source);
  config.original_max_position_embeddings =
      fields.integer("original_max_position_embeddings", config.max_position_embeddings);
  config.beta_fast = fields.number("beta_fast", 32.0);
  config.beta_slow = fields.number("beta_slow", 1.0);
  config.mscale = fields.number("mscale", 0.0);
  config.mscale_all_dim = fields.number("mscale_all_dim", 0.0);
  config.attention_factor = fields.number("attention_factor", 0.0);
  config.rope_truncate = fields.boolean("truncate", true);
}

void parse_moe(const Fields& f, const Defaults& d, ModelConfig& c) {
  c.n_routed_experts = f.integer("n_routed_experts", d.n_routed_experts);
  c.num_experts_per_tok = f.integer("num_experts_per_tok", d.num_experts_per_tok);
  c.n_shared_experts = f.integer("n_shared_experts", d.n_shared_experts);
  c.first_k_dense_replace = f.integer("first_k_dense_replace", d.first_k_dense_replace);
  c.moe_layer_freq = f.positive("moe_layer_freq", 1);
  c.n_group = f.positive("n_group", d.n_group);
  c.topk_group = f.positive("topk_group", d.topk_group);
  c.norm_topk_prob = f.boolean("norm_topk_prob", d.norm_topk_prob);
  c.scoring_func = parse_scoring(f.string("scoring_func", d.scoring_func), f.source());
  c.topk_method = parse_topk_method(f.string("topk_method", d.topk_method), f.source());
  // V1 has no routed_scaling_factor: its remote code never multiplies the gate weights.
  c.routed_scaling_factor = c.arch == Arch::kDeepseekV1
                                ? 1.0f
                                : static_cast<float>(f.number("routed_scaling_factor",
                                                              d.routed_scaling_factor));
  c.aux_loss_alpha = static_cast<float>(f.number("aux_loss_alpha", 0.0));
  c.seq_aux = f.boolean("seq_aux", false);
  c.device_aux_loss_alpha = static_cast<float>(f.number("moe_device_level_aux_loss_coeff", 0.0));
  c.comm_aux_loss_alpha = static_cast<float>(f.number("moe_comm_aux_loss_coeff", 0.0));
  c.ep_size = f.positive("ep_size", 1);
  c.expert_bias_update = f.boolean("moe_router_enable_expert_bias", false);
  c.bias_update_rate = static_cast<float>(f.number("moe_router_bias_update_rate", 0.001));
  c.noisy_gating = f.boolean("noisy_gating", false);
  c.capacity_factor = static_cast<float>(f.number("moe_expert_capacity_factor", 0.0));
  if (c.n_routed_experts == 0) return;
  const std::string& s = f.source();
  DSMOE_CHECK(c.n_routed_experts > 0, "{}: field 'n_routed_experts' must be positive", s);
  DSMOE_CHECK(c.num_experts_per_tok > 0 && c.num_experts_per_tok <= c.n_routed_experts,
              "{}: field 'num_experts_per_tok' is {}, must be in [1, n_routed_experts={}]", s,
              c.num_experts_per_tok, c.n_routed_experts);
  DSMOE_CHECK(c.n_shared_experts >= 0, "{}: field 'n_shared_experts' must be >= 0", s);
  DSMOE_CHECK(c.moe_intermediate_size > 0, "{}: field 'moe_intermediate_size' must be positive",
              s);
  if (c.topk_method != TopkMethod::kGreedy) {
    DSMOE_CHECK(c.n_routed_experts % c.n_group == 0,
                "{}: n_routed_experts={} is not divisible by n_group={}", s, c.n_routed_experts,
                c.n_group);
    DSMOE_CHECK(c.topk_group <= c.n_group, "{}: topk_group={} exceeds n_group={}", s,
                c.topk_group, c.n_group);
    int64_t per_group = c.n_routed_experts / c.n_group;
    DSMOE_CHECK(c.topk_group * per_group >= c.num_experts_per_tok,
                "{}: topk_group={} groups of {} experts cannot hold num_experts_per_tok={}", s,
                c.topk_group, per_group, c.num_experts_per_tok);
    DSMOE_CHECK(c.topk_method != TopkMethod::kNoauxTc || per_group >= 2,
                "{}: noaux_tc needs at least 2 experts per group", s);
  }
  DSMOE_CHECK(c.n_routed_experts % c.n_devices() == 0,
              "{}: n_routed_experts={} is not divisible by ep_size={}", s, c.n_routed_experts,
              c.n_devices());
  DSMOE_CHECK(!c.expert_bias_update || c.has_router_bias(),
              "{}: moe_router_enable_expert_bias needs topk_method noaux_tc (the bias is "
              "e_score_correction_bias)", s);
  DSMOE_CHECK(c.capacity_factor >= 0, "{}: moe_expert_capacity_factor must be >= 0", s);
}

void parse_attention(const Fields& f, const Defaults& d, ModelConfig& c) {
  const std::string& s = f.source();
  c.num_attention_heads = f.positive("num_attention_heads", d.num_attention_heads);
  if (c.arch == Arch::kDeepseekV1) {
    c.num_key_value_heads = f.integer("num_key_value_heads", c.num_attention_heads);
    DSMOE_CHECK(c.hidden_size % c.num_attention_heads == 0,
                "{}: hidden_size={} is not divisible by num_attention_heads={}", s, c.hidden_size,
                c.num_attention_heads);
    c.head_dim = c.hidden_size / c.num_attention_heads;
    DSMOE_CHECK(c.num_key_value_heads > 0 && c.num_attention_heads % c.num_key_value_heads == 0,
                "{}: num_attention_heads={} is not a multiple of num_key_value_heads={}", s,
                c.num_attention_heads, c.num_key_value_heads);
    DSMOE_CHECK(c.head_dim % 2 == 0, "{}: head_dim={} must be even for RoPE", s, c.head_dim);
    c.attention_bias = f.boolean("attention_bias", false);
    return;
  }
  c.num_key_value_heads = c.num_attention_heads;
  // q_lora_rank: null (present) means a plain q_proj; absent means the architecture default.
  c.q_lora_rank = f.is_null("q_lora_rank") ? 0 : f.integer("q_lora_rank", d.q_lora_rank);
  c.kv_lora_rank = f.positive("kv_lora_rank", d.kv_lora_rank);
  c.qk_nope_head_dim = f.positive("qk_nope_head_dim", 128);
  c.qk_rope_head_dim = f.positive("qk_rope_head_dim", 64);
  c.v_head_dim = f.positive("v_head_dim", 128);
  DSMOE_CHECK(c.q_lora_rank >= 0, "{}: field 'q_lora_rank' must be null or positive", s);
  DSMOE_CHECK(c.qk_rope_head_dim % 2 == 0, "{}: qk_rope_head_dim={} must be even", s,
              c.qk_rope_head_dim);
  DSMOE_CHECK(!f.boolean("attention_bias", false), "{}: attention_bias true is not supported for "
              "MLA (no DeepSeek-V2/V3 checkpoint uses it)", s);
}

}  // namespace

const char* arch_name(Arch arch) {
  switch (arch) {
    case Arch::kDeepseekV1: return "deepseek (DeepSeekMoE V1)";
    case Arch::kDeepseekV2: return "deepseek_v2";
    case Arch::kDeepseekV3: return "deepseek_v3";
  }
  return "?";
}

ModelConfig parse_model_config(const json& object, const std::string& source) {
  DSMOE_CHECK(object.is_object(), "{}: expected a JSON object", source);
  Fields f(object, source);
  ModelConfig c;
  DSMOE_CHECK(f.present("model_type"), "{}: missing field 'model_type'", source);
  c.model_type = f.string("model_type", "");
  const Defaults* d = nullptr;
  if (c.model_type == "deepseek") {
    c.arch = Arch::kDeepseekV1, d = &kV1Defaults;
  } else if (c.model_type == "deepseek_v2") {
    c.arch = Arch::kDeepseekV2, d = &kV2Defaults;
  } else if (c.model_type == "deepseek_v3") {
    c.arch = Arch::kDeepseekV3, d = &kV3Defaults;
  } else {
    fail(fmt::format("{}: unknown model_type '{}' (expected deepseek, deepseek_v2 or deepseek_v3)",
                     source, c.model_type));
  }
  c.vocab_size = f.positive("vocab_size", d->vocab_size);
  c.hidden_size = f.positive("hidden_size", d->hidden_size);
  c.intermediate_size = f.positive("intermediate_size", d->intermediate_size);
  c.moe_intermediate_size = f.integer("moe_intermediate_size", d->moe_intermediate_size);
  c.num_hidden_layers = f.positive("num_hidden_layers", d->num_hidden_layers);
  c.max_position_embeddings = f.positive("max_position_embeddings", d->max_position_embeddings);
  c.rms_norm_eps = static_cast<float>(f.number("rms_norm_eps", 1e-6));
  c.tie_word_embeddings = f.boolean("tie_word_embeddings", false);
  c.bos_token_id = f.integer("bos_token_id", -1);
  c.eos_token_id = f.integer("eos_token_id", -1);
  c.num_nextn_predict_layers = f.integer("num_nextn_predict_layers", 0);
  c.mtp_loss_scaling_factor = static_cast<float>(f.number("mtp_loss_scaling_factor", 0.1));
  DSMOE_CHECK(c.mtp_loss_scaling_factor >= 0, "{}: field 'mtp_loss_scaling_factor' must be >= 0",
              source);
  std::string act = f.string("hidden_act", "silu");
  DSMOE_CHECK(act == "silu", "{}: field 'hidden_act' is '{}', only silu is supported", source, act);
  parse_attention(f, *d, c);
  parse_moe(f, *d, c);
  parse_rope(object, f, c);
  DSMOE_CHECK(c.arch != Arch::kDeepseekV1 || c.rope_type != RopeType::kYarn,
              "{}: YaRN RoPE is not defined for model_type deepseek", source);
  DSMOE_CHECK(c.arch == Arch::kDeepseekV1 || c.rope_type == RopeType::kDefault ||
                  c.rope_type == RopeType::kYarn,
              "{}: linear/dynamic RoPE scaling is not defined for {}", source, c.model_type);
  return c;
}

ModelConfig load_model_config(const std::string& path) {
  std::string file = std::filesystem::is_directory(path) ? path + "/config.json" : path;
  std::ifstream in(file);
  DSMOE_CHECK(in.good(), "{}: cannot open", file);
  json object = json::parse(in, nullptr, /*allow_exceptions=*/false);
  DSMOE_CHECK(!object.is_discarded(), "{}: not valid JSON", file);
  return parse_model_config(object, file);
}

namespace {
double yarn_get_mscale(double scale, double mscale) {
  return scale <= 1.0 ? 1.0 : 0.1 * mscale * std::log(scale) + 1.0;
}
}  // namespace

float ModelConfig::softmax_scale() const {
  if (!use_mla()) return static_cast<float>(1.0 / std::sqrt(static_cast<double>(head_dim)));
  double scale = 1.0 / std::sqrt(static_cast<double>(qk_head_dim()));
  // DeepSeek-V2/V3 modeling code: softmax_scale *= mscale^2 under YaRN with mscale_all_dim.
  if (rope_type == RopeType::kYarn && mscale_all_dim != 0.0) {
    double m = yarn_get_mscale(rope_factor, mscale_all_dim);
    scale *= m * m;
  }
  return static_cast<float>(scale);
}

int64_t ModelConfig::kv_cache_row() const {
  return use_mla() ? kv_lora_rank + qk_rope_head_dim : 2 * num_key_value_heads * head_dim;
}

}  // namespace dsmoe
