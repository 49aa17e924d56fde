// test_trainer_state.cpp: a checkpoint's own files (trainer_state.json, the optimizer's step
// count, `latest`) are read by load_checkpoint as outside input: whatever they hold, a resume
// loads or fails with one dsmoe::Error naming the file (the findings of fuzz/fuzz_trainer_state).
#include <cstdint>
#include <filesystem>
#include <limits>
#include <string>

#include "io/safetensors.h"
#include "model/config.h"
#include "model/weights.h"
#include "test_util.h"
#include "train/checkpoint.h"
#include "train/optimizer.h"
#include "util/check.h"

namespace dsmoe {
namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;

// A model small enough that a checkpoint is written in a millisecond.
ModelConfig tiny_config() {
  const json config = {{"model_type", "deepseek_v3"},
                       {"vocab_size", 16},
                       {"hidden_size", 8},
                       {"intermediate_size", 16},
                       {"moe_intermediate_size", 4},
                       {"num_hidden_layers", 2},
                       {"first_k_dense_replace", 1},
                       {"num_attention_heads", 1},
                       {"q_lora_rank", 4},
                       {"kv_lora_rank", 4},
                       {"qk_nope_head_dim", 4},
                       {"qk_rope_head_dim", 2},
                       {"v_head_dim", 4},
                       {"n_routed_experts", 2},
                       {"num_experts_per_tok", 1},
                       {"n_shared_experts", 1},
                       {"n_group", 1},
                       {"topk_group", 1},
                       {"topk_method", "noaux_tc"},
                       {"scoring_func", "sigmoid"},
                       {"max_position_embeddings", 32}};
  return parse_model_config(config, "tiny config");
}

// A checkpoint of step 3 in a temporary directory, and what loading it takes.
class TrainerStateFiles : public ::testing::Test {
 protected:
  void SetUp() override {
    weights_ = random_weights(config_, 1);
    adam_ = make_adamw_state(config_, 0);
    adam_.step = 3;
    TrainerState state;
    state.step = 3;
    save_checkpoint(dir_.str(), json::object(), config_, weights_, adam_, state);
    state_path_ = dir_ / "step-00000003/trainer_state.json";
  }

  // The error of load_checkpoint ("" when it loads).
  std::string load_error() {
    TrainerState state;
    try {
      load_checkpoint(dir_.str(), config_, weights_, adam_, state);
    } catch (const Error& e) {
      return e.what();
    }
    return "";
  }

  // trainer_state.json with `key` set to `value` (or removed when value is discarded).
  void edit_state(const std::string& key, const json& value) {
    json state = json::parse(read_bytes(state_path_));
    if (value.is_discarded())
      state.erase(key);
    else
      state[key] = value;
    write_text(state_path_, state.dump());
  }

  // optimizer.safetensors with its step count replaced.
  void write_optimizer_step(const std::vector<int64_t>& values, const Shape& shape) {
    const std::string path = dir_ / "step-00000003/optimizer.safetensors";
    SafetensorsWriter writer;
    for_each_tensor(config_, adam_.m,
                    [&](const std::string& name, const Shape&, TensorRole, Tensor& tensor) {
                      writer.add_f32("m." + name, tensor);
                    });
    for_each_tensor(config_, adam_.v,
                    [&](const std::string& name, const Shape&, TensorRole, Tensor& tensor) {
                      writer.add_f32("v." + name, tensor);
                    });
    writer.add_i64("step", shape, values.data());
    writer.write(path);
  }

  TempDir dir_;
  ModelConfig config_ = tiny_config();
  ModelWeights weights_;
  AdamWState adam_;
  std::string state_path_;
};

TEST_F(TrainerStateFiles, TheSavedCheckpointLoads) { EXPECT_EQ(load_error(), ""); }

TEST_F(TrainerStateFiles, FieldsOfAnotherTypeAreErrorsNamingTheFileAndField) {
  const json discarded = json(json::value_t::discarded);
  const std::vector<std::pair<std::string, json>> cases = {{"step", "3"},
                                                           {"step", 3.5},
                                                           {"step", -1},
                                                           {"step", true},
                                                           {"skipped_steps", "0"},
                                                           {"skipped_steps", -4},
                                                           {"nonfinite_in_a_row", json::array()},
                                                           {"data_rng", discarded},
                                                           {"data_rng", 7},
                                                           {"noise_rng", discarded}};
  for (const auto& [key, value] : cases) {
    SCOPED_TRACE(key + " = " + value.dump());
    SetUp();
    edit_state(key, value);
    const std::string message = load_error();
    EXPECT_NE(message.find(state_path_), std::string::npos) << message;
    EXPECT_NE(message.find(key), std::string::npos) << message;
  }
}

TEST_F(TrainerStateFiles, RandomGeneratorStatesAreChecked) {
  const json good = json::parse(read_bytes(state_path_))["data_rng"];
  const std::vector<std::pair<std::string, json>> cases = {
      {"state", -5},  {"state", 1.5},  {"state", "1"}, {"has_spare", 1},
      {"spare", "0"}, {"spare", 1e300}};  // 1e300: beyond a float (undefined to convert)
  for (const auto& [key, value] : cases) {
    SCOPED_TRACE(key + " = " + value.dump());
    SetUp();
    json rng = good;
    rng[key] = value;
    edit_state("data_rng", rng);
    const std::string message = load_error();
    EXPECT_NE(message.find(state_path_), std::string::npos) << message;
    EXPECT_NE(message.find("data_rng"), std::string::npos) << message;
  }
}

TEST_F(TrainerStateFiles, CountsThatWouldOverflowAreErrors) {
  // step = optimizer step + skipped steps must not be computed past int64.
  edit_state("skipped_steps", std::numeric_limits<int64_t>::max());
  write_optimizer_step({std::numeric_limits<int64_t>::max()}, {});
  EXPECT_NE(load_error().find(state_path_), std::string::npos);
}

TEST_F(TrainerStateFiles, TheOptimizerStepCountIsOneCountAtLeastZero) {
  const std::string path = dir_ / "step-00000003/optimizer.safetensors";
  for (const auto& [values, shape] :
       std::vector<std::pair<std::vector<int64_t>, Shape>>{{{}, {0}}, {{-1}, {}}, {{3, 3}, {2}}}) {
    SCOPED_TRACE(shape_str(shape));
    SetUp();
    write_optimizer_step(values, shape);
    const std::string message = load_error();
    EXPECT_NE(message.find(path), std::string::npos) << message;
    EXPECT_NE(message.find("'step'"), std::string::npos) << message;
  }
}

TEST_F(TrainerStateFiles, LatestMustNameAStepDirectory) {
  for (const char* name : {"..", ".", "model.safetensors", ""}) {
    SCOPED_TRACE(name);
    write_text(dir_ / "latest", std::string(name) + "\n");
    const std::string message = load_error();
    EXPECT_NE(message.find(dir_ / "latest"), std::string::npos) << message;
  }
}

}  // namespace
}  // namespace dsmoe
