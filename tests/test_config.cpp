// Tests for model/config.h: parse_model_config / load_model_config on the fixture configs, the
// DeepSeek release layouts, the architecture defaults, the derived quantities and the errors.
#include <gtest/gtest.h>
#include <unistd.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <initializer_list>
#include <nlohmann/json.hpp>
#include <string>

#include "model/config.h"
#include "util/check.h"

namespace dsmoe {
namespace {

using nlohmann::json;

std::string fixture(const std::string& name) {
  return std::string(DSMOE_TEST_DATA) + "/" + name + "/model";
}

// The shape keys of a small DeepSeek-V3 model; everything else takes the architecture default.
json v3_minimal() {
  return json{{"model_type", "deepseek_v3"},
              {"vocab_size", 256},
              {"hidden_size", 64},
              {"intermediate_size", 128},
              {"moe_intermediate_size", 32},
              {"num_hidden_layers", 2},
              {"num_attention_heads", 4},
              {"kv_lora_rank", 32},
              {"qk_nope_head_dim", 16},
              {"qk_rope_head_dim", 8},
              {"v_head_dim", 16}};
}

json v2_small() {
  json j = v3_minimal();
  j["model_type"] = "deepseek_v2";
  j["n_routed_experts"] = 16;
  j["num_experts_per_tok"] = 4;
  return j;
}

json v1_small() {
  return json{
      {"model_type", "deepseek"}, {"vocab_size", 256},           {"hidden_size", 64},
      {"intermediate_size", 128}, {"moe_intermediate_size", 32}, {"num_hidden_layers", 2},
      {"num_attention_heads", 4}, {"n_routed_experts", 16},      {"num_experts_per_tok", 4}};
}

// Expects parse_model_config to throw an Error whose message names the source and every `part`.
void expect_error(const json& config, std::initializer_list<std::string> parts) {
  const std::string source = "/models/bad/config.json";
  try {
    parse_model_config(config, source);
    ADD_FAILURE() << "no error for " << config.dump();
  } catch (const Error& e) {
    const std::string what = e.what();
    EXPECT_NE(what.find(source), std::string::npos) << "file not named: " << what;
    for (const std::string& part : parts)
      EXPECT_NE(what.find(part), std::string::npos) << "'" << part << "' not named: " << what;
  }
}

double yarn_mscale(double factor, double mscale) { return 0.1 * mscale * std::log(factor) + 1.0; }

// ---------------------------------------------------------------------------------------------
// Fixtures

TEST(Config, V1TinyFixture) {
  ModelConfig c = load_model_config(fixture("v1-tiny"));
  EXPECT_EQ(c.arch, Arch::kDeepseekV1);
  EXPECT_EQ(c.model_type, "deepseek");
  EXPECT_FALSE(c.use_mla());
  EXPECT_EQ(c.hidden_size, 64);
  EXPECT_EQ(c.head_dim, 16);
  EXPECT_EQ(c.num_key_value_heads, 4);
  EXPECT_EQ(c.rope_dim(), 16);
  EXPECT_EQ(c.rope_type, RopeType::kDefault);  // "rope_scaling": null
  EXPECT_DOUBLE_EQ(c.rope_theta, 10000.0);
  EXPECT_FLOAT_EQ(c.softmax_scale(), 0.25f);  // 16^-0.5
  EXPECT_EQ(c.kv_cache_row(), 2 * 4 * 16);
  EXPECT_EQ(c.n_routed_experts, 16);
  EXPECT_EQ(c.num_experts_per_tok, 4);
  EXPECT_EQ(c.n_shared_experts, 2);
  EXPECT_EQ(c.topk_method, TopkMethod::kGreedy);
  EXPECT_EQ(c.scoring_func, ScoringFunc::kSoftmax);
  EXPECT_FALSE(c.norm_topk_prob);
  EXPECT_FLOAT_EQ(c.routed_scaling_factor, 1.0f);
  EXPECT_FALSE(c.has_router_bias());
  EXPECT_EQ(c.bos_token_id, 0);
  EXPECT_EQ(c.eos_token_id, 1);
  EXPECT_FALSE(c.is_moe_layer(0));  // first_k_dense_replace 1
  EXPECT_TRUE(c.is_moe_layer(1));
  EXPECT_TRUE(c.is_moe_layer(2));
}

TEST(Config, V2TinyFixture) {
  ModelConfig c = load_model_config(fixture("v2-tiny"));
  EXPECT_EQ(c.arch, Arch::kDeepseekV2);
  EXPECT_TRUE(c.use_mla());
  EXPECT_EQ(c.q_lora_rank, 0);  // "q_lora_rank": null
  EXPECT_EQ(c.kv_lora_rank, 32);
  EXPECT_EQ(c.qk_head_dim(), 24);
  EXPECT_EQ(c.v_head_dim, 16);
  EXPECT_EQ(c.rope_dim(), 8);
  EXPECT_EQ(c.topk_method, TopkMethod::kGroupLimitedGreedy);
  EXPECT_EQ(c.scoring_func, ScoringFunc::kSoftmax);
  EXPECT_EQ(c.n_group, 4);
  EXPECT_EQ(c.topk_group, 2);
  EXPECT_FALSE(c.has_router_bias());
  EXPECT_EQ(c.rope_type, RopeType::kDefault);
  EXPECT_FLOAT_EQ(c.softmax_scale(), static_cast<float>(1.0 / std::sqrt(24.0)));
  EXPECT_EQ(c.kv_cache_row(), 32 + 8);
  EXPECT_EQ(c.max_position_embeddings, 256);
}

TEST(Config, V3TinyFixture) {
  ModelConfig c = load_model_config(fixture("v3-tiny"));
  EXPECT_EQ(c.arch, Arch::kDeepseekV3);
  EXPECT_EQ(c.q_lora_rank, 32);
  EXPECT_EQ(c.topk_method, TopkMethod::kNoauxTc);    // no "topk_method" key: V3 default
  EXPECT_EQ(c.scoring_func, ScoringFunc::kSigmoid);  // no "scoring_func" key: V3 default
  EXPECT_TRUE(c.has_router_bias());
  EXPECT_TRUE(c.norm_topk_prob);
  EXPECT_FLOAT_EQ(c.routed_scaling_factor, 2.5f);
  EXPECT_EQ(c.n_shared_experts, 1);
  EXPECT_EQ(c.num_nextn_predict_layers, 1);
  EXPECT_EQ(c.rope_type, RopeType::kDefault);
  EXPECT_FLOAT_EQ(c.softmax_scale(), static_cast<float>(1.0 / std::sqrt(24.0)));
  EXPECT_EQ(c.kv_cache_row(), 40);
  // Loading the file itself instead of the directory gives the same config.
  ModelConfig same = load_model_config(fixture("v3-tiny") + "/config.json");
  EXPECT_EQ(same.q_lora_rank, 32);
  EXPECT_EQ(same.n_routed_experts, c.n_routed_experts);
}

TEST(Config, V3YarnFixture) {
  ModelConfig c = load_model_config(fixture("v3-yarn"));
  EXPECT_EQ(c.arch, Arch::kDeepseekV3);
  EXPECT_EQ(c.q_lora_rank, 0);  // "q_lora_rank": null
  EXPECT_EQ(c.topk_method, TopkMethod::kNoauxTc);
  EXPECT_EQ(c.scoring_func, ScoringFunc::kSigmoid);
  EXPECT_EQ(c.rope_type, RopeType::kYarn);
  EXPECT_DOUBLE_EQ(c.rope_factor, 4.0);
  EXPECT_EQ(c.original_max_position_embeddings, 64);
  EXPECT_DOUBLE_EQ(c.mscale, 1.0);
  EXPECT_DOUBLE_EQ(c.mscale_all_dim, 1.0);
  EXPECT_DOUBLE_EQ(c.beta_fast, 32.0);
  EXPECT_DOUBLE_EQ(c.beta_slow, 1.0);
  EXPECT_DOUBLE_EQ(c.rope_theta, 10000.0);
  const double m = 0.1 * std::log(4.0) + 1.0;
  EXPECT_FLOAT_EQ(c.softmax_scale(), static_cast<float>(m * m / std::sqrt(24.0)));
  EXPECT_EQ(c.kv_cache_row(), 24 + 8);
  EXPECT_FLOAT_EQ(c.routed_scaling_factor, 1.5f);
  // first_k_dense_replace 2 of 4 layers.
  EXPECT_FALSE(c.is_moe_layer(0));
  EXPECT_FALSE(c.is_moe_layer(1));
  EXPECT_TRUE(c.is_moe_layer(2));
  EXPECT_TRUE(c.is_moe_layer(3));
}

// ---------------------------------------------------------------------------------------------
// Layouts and defaults

TEST(Config, MoeLayerFrequencyAndDenseModels) {
  json j = v3_minimal();
  j["first_k_dense_replace"] = 1;
  j["moe_layer_freq"] = 2;
  ModelConfig c = parse_model_config(j, "freq");
  EXPECT_FALSE(c.is_moe_layer(0));
  EXPECT_FALSE(c.is_moe_layer(1));  // odd layers skip the MoE with freq 2
  EXPECT_TRUE(c.is_moe_layer(2));
  EXPECT_FALSE(c.is_moe_layer(3));
  EXPECT_TRUE(c.is_moe_layer(4));
  j["n_routed_experts"] = 0;  // no routed experts: every layer dense
  c = parse_model_config(j, "dense");
  for (int layer = 0; layer < 6; layer++) EXPECT_FALSE(c.is_moe_layer(layer)) << layer;
}

TEST(Config, V3DefaultsForMissingKeys) {
  ModelConfig c = parse_model_config(v3_minimal(), "minimal");
  EXPECT_EQ(c.hidden_size, 64);
  EXPECT_EQ(c.n_routed_experts, 256);
  EXPECT_EQ(c.num_experts_per_tok, 8);
  EXPECT_EQ(c.n_shared_experts, 1);
  EXPECT_EQ(c.n_group, 8);
  EXPECT_EQ(c.topk_group, 4);
  EXPECT_EQ(c.first_k_dense_replace, 3);
  EXPECT_EQ(c.moe_layer_freq, 1);
  EXPECT_TRUE(c.norm_topk_prob);
  EXPECT_FLOAT_EQ(c.routed_scaling_factor, 2.5f);
  EXPECT_EQ(c.topk_method, TopkMethod::kNoauxTc);
  EXPECT_EQ(c.scoring_func, ScoringFunc::kSigmoid);
  EXPECT_EQ(c.q_lora_rank, 1536);  // absent (not null): the V3 default
  EXPECT_EQ(c.max_position_embeddings, 4096);
  EXPECT_FLOAT_EQ(c.rms_norm_eps, 1e-6f);
  EXPECT_EQ(c.rope_type, RopeType::kDefault);
  EXPECT_DOUBLE_EQ(c.rope_theta, 10000.0);
  EXPECT_FALSE(c.tie_word_embeddings);
}

TEST(Config, V2AndV1Defaults) {
  ModelConfig v2 = parse_model_config(v2_small(), "v2");
  EXPECT_EQ(v2.topk_method, TopkMethod::kGreedy);
  EXPECT_EQ(v2.scoring_func, ScoringFunc::kSoftmax);
  EXPECT_FALSE(v2.norm_topk_prob);
  EXPECT_FLOAT_EQ(v2.routed_scaling_factor, 1.0f);
  EXPECT_EQ(v2.n_group, 1);
  EXPECT_EQ(v2.first_k_dense_replace, 0);
  EXPECT_EQ(v2.max_position_embeddings, 2048);
  ModelConfig v1 = parse_model_config(v1_small(), "v1");
  EXPECT_EQ(v1.arch, Arch::kDeepseekV1);
  EXPECT_EQ(v1.num_key_value_heads, 4);  // defaults to num_attention_heads
  EXPECT_EQ(v1.topk_method, TopkMethod::kGreedy);
  EXPECT_FALSE(v1.norm_topk_prob);
  EXPECT_FALSE(v1.attention_bias);
}

// Regression (src/model/config.cpp, kV2Defaults): DeepSeek-V2's configuration_deepseek.py
// defaults are hidden_size=4096 and intermediate_size=11008 (as V1), not the 236B checkpoint's
// 5120 and 12288 that kV2Defaults once held.
TEST(Config, V2ShapeDefaultsMatchDeepseekV2Configuration) {
  ModelConfig c = parse_model_config(json{{"model_type", "deepseek_v2"}}, "v2-defaults");
  EXPECT_EQ(c.vocab_size, 102400);
  EXPECT_EQ(c.hidden_size, 4096);
  EXPECT_EQ(c.intermediate_size, 11008);
  EXPECT_EQ(c.moe_intermediate_size, 1407);
  EXPECT_EQ(c.num_hidden_layers, 30);
  EXPECT_EQ(c.num_attention_heads, 32);
  EXPECT_EQ(c.q_lora_rank, 1536);
  EXPECT_EQ(c.kv_lora_rank, 512);
  EXPECT_EQ(c.n_routed_experts, 0);  // None: a dense model
}

TEST(Config, V2GreadyTypoMeansGreedy) {
  json j = v2_small();
  j["topk_method"] = "gready";
  EXPECT_EQ(parse_model_config(j, "v2").topk_method, TopkMethod::kGreedy);
  j["topk_method"] = "greedy";
  EXPECT_EQ(parse_model_config(j, "v2").topk_method, TopkMethod::kGreedy);
}

TEST(Config, V1IgnoresRoutedScalingFactor) {
  json j = v1_small();
  j["routed_scaling_factor"] = 3.0;
  EXPECT_FLOAT_EQ(parse_model_config(j, "v1").routed_scaling_factor, 1.0f);
  json v2 = v2_small();
  v2["routed_scaling_factor"] = 3.0;
  EXPECT_FLOAT_EQ(parse_model_config(v2, "v2").routed_scaling_factor, 3.0f);
}

// DeepSeek's checkpoints: "rope_scaling" with "type", rope_theta at the top level; transformers 5:
// "rope_parameters" with "rope_type" and rope_theta inside. Both must give the same config.
TEST(Config, ReleaseRopeScalingMatchesRopeParameters) {
  json release = v3_minimal();
  release["rope_theta"] = 10000;
  release["max_position_embeddings"] = 163840;
  release["rope_scaling"] = {
      {"type", "yarn"},         {"factor", 40},   {"original_max_position_embeddings", 4096},
      {"beta_fast", 32},        {"beta_slow", 1}, {"mscale", 0.707},
      {"mscale_all_dim", 0.707}};
  json modern = v3_minimal();
  modern["max_position_embeddings"] = 163840;
  modern["rope_parameters"] = {{"rope_type", "yarn"}, {"rope_theta", 10000.0},
                               {"factor", 40.0},      {"original_max_position_embeddings", 4096},
                               {"beta_fast", 32.0},   {"beta_slow", 1.0},
                               {"mscale", 0.707},     {"mscale_all_dim", 0.707}};
  for (const json& j : {release, modern}) {
    ModelConfig c = parse_model_config(j, "release");
    EXPECT_EQ(c.rope_type, RopeType::kYarn);
    EXPECT_DOUBLE_EQ(c.rope_theta, 10000.0);
    EXPECT_DOUBLE_EQ(c.rope_factor, 40.0);
    EXPECT_EQ(c.original_max_position_embeddings, 4096);
    EXPECT_EQ(c.max_position_embeddings, 163840);
    EXPECT_DOUBLE_EQ(c.beta_fast, 32.0);
    EXPECT_DOUBLE_EQ(c.beta_slow, 1.0);
    EXPECT_DOUBLE_EQ(c.mscale, 0.707);
    EXPECT_DOUBLE_EQ(c.mscale_all_dim, 0.707);
    const double m = yarn_mscale(40.0, 0.707);
    EXPECT_FLOAT_EQ(c.softmax_scale(), static_cast<float>(m * m / std::sqrt(24.0)));
  }
  // The "rope_type" spelling inside rope_scaling works too, and a top-level rope_theta reaches
  // rope_parameters that leave it out.
  json variant = release;
  variant["rope_theta"] = 50000;
  variant["rope_scaling"].erase("type");
  variant["rope_scaling"]["rope_type"] = "yarn";
  ModelConfig c = parse_model_config(variant, "variant");
  EXPECT_EQ(c.rope_type, RopeType::kYarn);
  EXPECT_DOUBLE_EQ(c.rope_theta, 50000.0);
}

TEST(Config, YarnWithoutMscaleAllDimKeepsPlainScale) {
  json j = v3_minimal();
  j["rope_scaling"] = {{"type", "yarn"}, {"factor", 4}, {"original_max_position_embeddings", 64}};
  ModelConfig c = parse_model_config(j, "yarn");
  EXPECT_EQ(c.rope_type, RopeType::kYarn);
  EXPECT_DOUBLE_EQ(c.mscale_all_dim, 0.0);
  EXPECT_FLOAT_EQ(c.softmax_scale(), static_cast<float>(1.0 / std::sqrt(24.0)));
}

TEST(Config, IntegralFloatsAcceptedAsIntegers) {
  json j = v3_minimal();
  j["hidden_size"] = 64.0;
  EXPECT_EQ(parse_model_config(j, "floats").hidden_size, 64);
  j["hidden_size"] = 64.5;
  expect_error(j, {"hidden_size"});
}

// Found by fuzz/fuzz_config (fuzz/corpus/config/crash-float-overflow-int): an integral float
// beyond int64_t was converted anyway (undefined behaviour).
TEST(ConfigErrors, IntegersBeyondTheRangeOfADouble) {
  json j = v3_minimal();
  j["intermediate_size"] = 1.2222222222e28;
  expect_error(j, {"intermediate_size", "out of range"});
  j["intermediate_size"] = 18446744073709551615u;
  expect_error(j, {"intermediate_size", "out of range"});
  j["intermediate_size"] = -1e300;
  expect_error(j, {"intermediate_size", "out of range"});
}

// ---------------------------------------------------------------------------------------------
// Errors: each names the file and the field.

TEST(ConfigErrors, ModelType) {
  json j = v3_minimal();
  j["model_type"] = "llama";
  expect_error(j, {"model_type", "llama"});
  j.erase("model_type");
  expect_error(j, {"model_type"});
  j["model_type"] = nullptr;
  expect_error(j, {"model_type"});
  expect_error(json::array({1, 2}), {});
}

TEST(ConfigErrors, WrongFieldType) {
  json j = v3_minimal();
  j["hidden_size"] = "64";
  expect_error(j, {"hidden_size"});
  j = v3_minimal();
  j["norm_topk_prob"] = "yes";
  expect_error(j, {"norm_topk_prob"});
  j = v3_minimal();
  j["rms_norm_eps"] = "1e-6";
  expect_error(j, {"rms_norm_eps"});
  j = v3_minimal();
  j["scoring_func"] = 1;
  expect_error(j, {"scoring_func"});
  j = v3_minimal();
  j["rope_scaling"] = "yarn";
  expect_error(j, {"rope_scaling"});
}

TEST(ConfigErrors, ExpertGroups) {
  json j = v3_minimal();
  j["n_routed_experts"] = 10;
  j["num_experts_per_tok"] = 2;
  j["n_group"] = 4;
  j["topk_group"] = 2;
  expect_error(j, {"n_routed_experts", "n_group"});  // 10 % 4 != 0
  j["n_routed_experts"] = 16;
  j["topk_group"] = 5;
  expect_error(j, {"topk_group", "n_group"});
  j = v2_small();
  j["topk_method"] = "group_limited_greedy";
  j["n_group"] = 3;
  expect_error(j, {"n_routed_experts", "n_group"});  // 16 % 3 != 0
}

TEST(ConfigErrors, TooManyExpertsPerToken) {
  json j = v2_small();
  j["num_experts_per_tok"] = 17;  // 16 routed experts
  expect_error(j, {"num_experts_per_tok"});
  j = v3_minimal();
  j["n_routed_experts"] = 16;
  j["num_experts_per_tok"] = 17;
  expect_error(j, {"num_experts_per_tok"});
}

TEST(ConfigErrors, UnknownEnumValues) {
  json j = v3_minimal();
  j["rope_scaling"] = {{"type", "ntk"}, {"factor", 2}};
  expect_error(j, {"rope_scaling", "ntk"});
  j = v3_minimal();
  j["rope_parameters"] = {{"rope_type", "longrope"}};
  expect_error(j, {"rope_parameters", "longrope"});
  j = v3_minimal();
  j["scoring_func"] = "relu";
  expect_error(j, {"scoring_func", "relu"});
  j = v3_minimal();
  j["topk_method"] = "best";
  expect_error(j, {"topk_method", "best"});
  j = v3_minimal();
  j["hidden_act"] = "gelu";
  expect_error(j, {"hidden_act", "gelu"});
}

TEST(ConfigErrors, LoadNamesTheFile) {
  const auto dir =
      std::filesystem::temp_directory_path() / ("dsmoe_test_config_" + std::to_string(::getpid()));
  std::filesystem::create_directories(dir);
  const std::string bad = (dir / "config.json").string();
  {
    json j = v3_minimal();
    j["num_attention_heads"] = "four";
    std::ofstream(bad) << j.dump();
  }
  try {
    load_model_config(dir.string());
    ADD_FAILURE() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(bad), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("num_attention_heads"), std::string::npos) << e.what();
  }
  std::ofstream(bad) << "{ not json";
  try {
    load_model_config(bad);
    ADD_FAILURE() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(bad), std::string::npos) << e.what();
  }
  std::filesystem::remove_all(dir);
  EXPECT_THROW(load_model_config((dir / "missing.json").string()), Error);
}

}  // namespace
}  // namespace dsmoe
