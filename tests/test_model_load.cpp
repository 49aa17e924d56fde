// test_model_load.cpp: checkpoints as they are released: sharded with an index, carrying MTP
// layers, stored as BF16 or as FP8 with 128x128 block scales; and RoPE scaling variants.
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "io/safetensors.h"
#include "model/rope.h"
#include "model/transformer.h"

namespace dsmoe {
namespace {

namespace fs = std::filesystem;
const std::string kFixture = std::string(DSMOE_TEST_DATA) + "/v3-tiny/model";

class ModelLoad : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() /
           ("dsmoe_load_" + std::to_string(::getpid()) + "_" +
            ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(dir_);
    fs::create_directories(dir_);
    fs::copy_file(kFixture + "/config.json", dir_ / "config.json");
    const int64_t ids_init[] = {3, 14, 15, 92, 65, 35, 89, 79};
    ids_.assign(std::begin(ids_init), std::end(ids_init));
    Model reference = Model::load(kFixture);
    reference_logits_ = reference.forward(ids_.data(), 1, 8);
  }
  void TearDown() override { fs::remove_all(dir_); }

  double max_relative_diff(const Model& model) const {
    Tensor logits = model.forward(ids_.data(), 1, 8);
    double max_diff = 0, max_ref = 0;
    for (int64_t i = 0; i < logits.numel(); i++) {
      max_diff = std::max(max_diff, std::fabs(double(logits.data[i]) - reference_logits_.data[i]));
      max_ref = std::max(max_ref, std::fabs(double(reference_logits_.data[i])));
    }
    return max_diff / max_ref;
  }

  fs::path dir_;
  std::vector<int64_t> ids_;
  Tensor reference_logits_;
};

TEST_F(ModelLoad, ShardedWithIndexAndMtpLayers) {
  Checkpoint source(kFixture);
  SafetensorsWriter shards[2];
  nlohmann::json weight_map;
  int i = 0;
  for (const std::string& name : source.names()) {
    const TensorInfo& info = source.get(name);
    const int shard = i++ % 2;
    shards[shard].add(name, info.dtype, info.shape, info.data);
    weight_map[name] = "model-0000" + std::to_string(shard + 1) + "-of-00002.safetensors";
  }
  // A DeepSeek-V3 release carries its MTP module as layer num_hidden_layers (3 here): a
  // transformer block (a copy of layer 2's here), its norms and projection, and copies of the
  // embedding and head.
  std::vector<float> ones(64, 1.0f), eh(64 * 128, 0.01f);
  auto add_mtp = [&](const std::string& name, const Shape& shape, const void* data, DType dtype) {
    shards[1].add(name, dtype, shape, data);
    weight_map[name] = "model-00002-of-00002.safetensors";
  };
  for (const std::string& name : source.names()) {
    const std::string prefix = "model.layers.2.";
    if (name.rfind(prefix, 0) != 0) continue;
    const TensorInfo& info = source.get(name);
    add_mtp("model.layers.3." + name.substr(prefix.size()), info.shape, info.data, info.dtype);
  }
  for (const char* name : {"model.layers.3.enorm.weight", "model.layers.3.hnorm.weight",
                           "model.layers.3.shared_head.norm.weight"})
    add_mtp(name, {64}, ones.data(), DType::kF32);
  add_mtp("model.layers.3.eh_proj.weight", {64, 128}, eh.data(), DType::kF32);
  const TensorInfo& embed = source.get("model.embed_tokens.weight");
  add_mtp("model.layers.3.embed_tokens.weight", embed.shape, embed.data, embed.dtype);
  const TensorInfo& head = source.get("lm_head.weight");
  add_mtp("model.layers.3.shared_head.head.weight", head.shape, head.data, head.dtype);
  shards[0].write((dir_ / "model-00001-of-00002.safetensors").string());
  shards[1].write((dir_ / "model-00002-of-00002.safetensors").string());
  std::ofstream((dir_ / "model.safetensors.index.json").string())
      << nlohmann::json{{"metadata", {{"total_size", 0}}}, {"weight_map", weight_map}}.dump();
  Model model = Model::load(dir_.string());
  EXPECT_EQ(model.weights().mtp.size(), 1u);
  EXPECT_EQ(max_relative_diff(model), 0.0);  // inference leaves the MTP module unused
}

// Writes every matrix of the fixture as `dtype` (F8_E4M3 with a per-128x128-block scale).
void write_converted(const fs::path& path, DType dtype) {
  Checkpoint source(kFixture);
  SafetensorsWriter writer;
  for (const std::string& name : source.names()) {
    const TensorInfo& info = source.get(name);
    std::vector<float> values(shape_numel(info.shape));
    convert_to_f32(info.data, info.dtype, values.size(), values.data());
    if (info.shape.size() != 2 || dtype == DType::kF32) {
      writer.add_f32(name, info.shape, values.data());
    } else if (dtype == DType::kBF16) {
      std::vector<uint16_t> bits(values.size());
      for (size_t j = 0; j < values.size(); j++) bits[j] = f32_to_bf16(values[j]);
      writer.add(name, DType::kBF16, info.shape, bits.data());
    } else {
      const int64_t rows = info.shape[0], cols = info.shape[1];
      const int64_t block_rows = (rows + 127) / 128, block_cols = (cols + 127) / 128;
      std::vector<float> scale(block_rows * block_cols, 0.0f);
      for (int64_t r = 0; r < rows; r++)
        for (int64_t c = 0; c < cols; c++) {
          float& s = scale[(r / 128) * block_cols + c / 128];
          s = std::max(s, std::fabs(values[r * cols + c]) / 448.0f);
        }
      std::vector<uint8_t> codes(values.size());
      for (int64_t r = 0; r < rows; r++)
        for (int64_t c = 0; c < cols; c++)
          codes[r * cols + c] = f32_to_f8e4m3(values[r * cols + c] / scale[(r / 128) * block_cols + c / 128]);
      writer.add(name, DType::kF8_E4M3, info.shape, codes.data());
      writer.add_f32(name.substr(0, name.size() - 7) + ".weight_scale_inv", {block_rows, block_cols},
                     scale.data());
    }
  }
  writer.write(path.string());
}

TEST_F(ModelLoad, Bf16CheckpointIsCloseToF32) {
  write_converted(dir_ / "model.safetensors", DType::kBF16);
  // bf16 keeps 8 significant bits: ~0.4% per weight, a few percent on the logits at most.
  EXPECT_LT(max_relative_diff(Model::load(dir_.string())), 0.05);
}

TEST_F(ModelLoad, Fp8CheckpointWithBlockScalesIsClose) {
  write_converted(dir_ / "model.safetensors", DType::kF8_E4M3);
  // e4m3 keeps 4 significant bits: ~6% per weight.
  EXPECT_LT(max_relative_diff(Model::load(dir_.string())), 0.3);
}

ModelConfig v1_config(const std::string& rope_type, double factor, int64_t max_positions) {
  nlohmann::json json = {{"model_type", "deepseek"}, {"hidden_size", 64},
                         {"num_attention_heads", 4},  {"max_position_embeddings", max_positions},
                         {"rope_theta", 10000.0}};
  if (!rope_type.empty()) json["rope_scaling"] = {{"type", rope_type}, {"factor", factor}};
  return parse_model_config(json, "test");
}

TEST(Rope, LinearScalingDividesPositions) {
  const ModelConfig plain = v1_config("", 1, 2048), linear = v1_config("linear", 4.0, 2048);
  std::vector<float> cos_a(8), sin_a(8), cos_b(8), sin_b(8);  // head_dim 16 -> 8 frequencies
  rope_angles(plain, 3, 1, cos_a.data(), sin_a.data());
  rope_angles(linear, 12, 1, cos_b.data(), sin_b.data());
  for (int i = 0; i < 8; i++) {
    EXPECT_NEAR(cos_a[i], cos_b[i], 1e-6);
    EXPECT_NEAR(sin_a[i], sin_b[i], 1e-6);
  }
}

TEST(Rope, DynamicNtkRescalesTheBaseBeyondTheTrainedLength) {
  const ModelConfig dynamic = v1_config("dynamic", 2.0, 16);
  const int64_t dim = 16, half = 8;
  std::vector<float> cos(20 * half), sin(20 * half);
  rope_angles(dynamic, 0, 10, cos.data(), sin.data());  // within 16: unchanged base
  EXPECT_NEAR(cos[9 * half + 1], std::cos(9 * std::pow(10000.0, -2.0 / dim)), 1e-5);
  rope_angles(dynamic, 0, 20, cos.data(), sin.data());  // 20 > 16: base * (2*20/16 - 1)^(d/(d-2))
  const double base = 10000.0 * std::pow(2.0 * 20 / 16 - 1.0, dim / (dim - 2.0));
  EXPECT_NEAR(cos[19 * half + 1], std::cos(19 * std::pow(base, -2.0 / dim)), 1e-5);
}

}  // namespace
}  // namespace dsmoe
