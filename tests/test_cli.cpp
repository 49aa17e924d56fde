// test_cli.cpp: the dsmoe command end to end: bad input gives one clear error line and a non-zero
// exit (never a crash), and `init` writes checkpoints that forward/generate load.
#include <gtest/gtest.h>
#include <sys/wait.h>

#include <array>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>

#include "io/safetensors.h"

namespace dsmoe {
namespace {

namespace fs = std::filesystem;
const std::string kData = DSMOE_TEST_DATA;
const std::string kCli = DSMOE_CLI;

struct RunResult {
  int exit_code = -1;  // -1: killed by a signal
  std::string output;  // stdout + stderr
};

RunResult run(const std::string& args) {
  RunResult result;
  FILE* pipe = popen((kCli + " " + args + " 2>&1").c_str(), "r");
  if (pipe == nullptr) return result;
  std::array<char, 4096> buffer;
  size_t n;
  while ((n = fread(buffer.data(), 1, buffer.size(), pipe)) > 0) result.output.append(buffer.data(), n);
  const int status = pclose(pipe);
  result.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  return result;
}

std::string last_line(const std::string& text) {
  std::string trimmed = text.substr(0, text.find_last_not_of('\n') + 1);
  return trimmed.substr(trimmed.find_last_of('\n') + 1);
}

// A scratch copy of a fixture model that a test may damage.
class CliTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() /
           ("dsmoe_cli_" + std::to_string(::getpid()) + "_" +
            ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(dir_);
    fs::create_directories(dir_ / "model");
    for (const char* file : {"config.json", "model.safetensors"})
      fs::copy_file(kData + "/v3-tiny/model/" + file, dir_ / "model" / file);
    input_ = kData + "/v3-tiny/expected.safetensors";
  }
  void TearDown() override { fs::remove_all(dir_); }

  std::string model() const { return (dir_ / "model").string(); }
  std::string forward_args() const {
    return "forward --model " + model() + " --input " + input_ + " --output " +
           (dir_ / "out.safetensors").string();
  }
  // Expects a failure whose last line is "dsmoe: error: ..." containing every `needles`.
  void expect_error(const std::string& args, std::initializer_list<std::string> needles) {
    RunResult r = run(args);
    EXPECT_EQ(r.exit_code, 1) << r.output;
    const std::string line = last_line(r.output);
    EXPECT_EQ(line.rfind("dsmoe: error: ", 0), 0u) << r.output;
    for (const std::string& needle : needles)
      EXPECT_NE(line.find(needle), std::string::npos) << "missing '" << needle << "' in: " << line;
  }
  // Rewrites model.safetensors with `edit` applied to the header JSON (data section kept).
  void edit_header(const std::function<void(nlohmann::json&)>& edit) {
    const fs::path path = dir_ / "model" / "model.safetensors";
    std::ifstream in(path, std::ios::binary);
    uint64_t length = 0;
    in.read(reinterpret_cast<char*>(&length), 8);
    std::string header(length, ' ');
    in.read(header.data(), length);
    std::string data((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    in.close();
    nlohmann::json json = nlohmann::json::parse(header);
    edit(json);
    std::string text = json.dump();
    text.append((8 - text.size() % 8) % 8, ' ');
    std::ofstream out(path, std::ios::binary | std::ios::trunc);
    const uint64_t new_length = text.size();
    out.write(reinterpret_cast<const char*>(&new_length), 8);
    out << text << data;
  }

  fs::path dir_;
  std::string input_;
};

TEST_F(CliTest, ForwardSucceedsOnTheFixture) {
  RunResult r = run(forward_args());
  ASSERT_EQ(r.exit_code, 0) << r.output;
  SafetensorsFile out((dir_ / "out.safetensors").string());
  ASSERT_NE(out.find("logits"), nullptr);
  EXPECT_EQ(out.find("logits")->shape, (Shape{2, 24, 512}));
  EXPECT_NE(out.find("loss"), nullptr);
  EXPECT_NE(out.find("hidden.3"), nullptr);
  EXPECT_EQ(out.find("route.1.idx")->dtype, DType::kI64);
  EXPECT_EQ(out.find("route.2.weight")->shape, (Shape{48, 4}));
}

TEST_F(CliTest, TruncatedCheckpoint) {
  const fs::path path = dir_ / "model" / "model.safetensors";
  fs::resize_file(path, fs::file_size(path) - 100);
  expect_error(forward_args(), {"model.safetensors"});
}

TEST_F(CliTest, HeaderThatLiesAboutOffsets) {
  edit_header([](nlohmann::json& h) {
    h["model.norm.weight"]["data_offsets"][1] = h["model.norm.weight"]["data_offsets"][1].get<int64_t>() + (1 << 30);
  });
  expect_error(forward_args(), {"model.safetensors", "model.norm.weight"});
}

TEST_F(CliTest, MissingTensor) {
  edit_header([](nlohmann::json& h) { h.erase("model.layers.1.mlp.experts.3.up_proj.weight"); });
  expect_error(forward_args(), {"missing tensor", "model.layers.1.mlp.experts.3.up_proj.weight"});
}

TEST_F(CliTest, WrongShape) {
  edit_header([](nlohmann::json& h) { h["model.norm.weight"]["shape"] = {8, 8}; });
  expect_error(forward_args(), {"model.norm.weight", "expected shape [64]", "[8, 8]"});
}

TEST_F(CliTest, UnknownDtype) {
  edit_header([](nlohmann::json& h) { h["model.norm.weight"]["dtype"] = "Q9"; });
  expect_error(forward_args(), {"model.norm.weight", "Q9"});
}

TEST_F(CliTest, UnknownModelType) {
  const fs::path config = dir_ / "model" / "config.json";
  std::ifstream in(config);
  nlohmann::json json = nlohmann::json::parse(in);
  in.close();
  json["model_type"] = "llama";
  std::ofstream(config) << json.dump();
  expect_error(forward_args(), {"config.json", "unknown model_type 'llama'"});
}

TEST_F(CliTest, InputIdsOutOfVocabulary) {
  const std::string input = (dir_ / "ids.safetensors").string();
  SafetensorsWriter writer;
  const int64_t ids[4] = {1, 2, 512, 3};
  writer.add_i64("input_ids", {1, 4}, ids);
  writer.write(input);
  input_ = input;
  expect_error(forward_args(), {"input_ids[0, 2] = 512", "vocabulary"});
  expect_error("generate --model " + model() + " --prompt-ids 5,9999 --max-new-tokens 2",
               {"9999", "vocabulary"});
}

TEST_F(CliTest, MissingModelDirectory) {
  expect_error("generate --model " + (dir_ / "nowhere").string() + " --prompt-ids 1",
               {"nowhere"});
}

TEST_F(CliTest, InitWritesACheckpointThatRuns) {
  for (const char* dtype : {"f32", "bf16"}) {
    const std::string out = (dir_ / (std::string("init_") + dtype)).string();
    RunResult r = run("init --config " + kData + "/v3-yarn/model/config.json --out " + out +
                      " --seed 7 --dtype " + dtype);
    ASSERT_EQ(r.exit_code, 0) << r.output;
    r = run("generate --model " + out + " --prompt-ids 3,1,4,1,5 --max-new-tokens 4 --print-ids");
    ASSERT_EQ(r.exit_code, 0) << r.output;
    EXPECT_EQ(last_line(r.output).rfind("3,1,4,1,5,", 0), 0u) << r.output;
    Checkpoint checkpoint(out);
    EXPECT_EQ(checkpoint.get("model.layers.3.mlp.gate.e_score_correction_bias").dtype,
              std::string(dtype) == "bf16" ? DType::kBF16 : DType::kF32);
  }
  // Same seed, same weights.
  const std::string again = (dir_ / "again").string();
  ASSERT_EQ(run("init --config " + kData + "/v3-yarn/model/config.json --out " + again +
                " --seed 7").exit_code, 0);
  std::ifstream a(dir_ / "init_f32" / "model.safetensors", std::ios::binary);
  std::ifstream b(fs::path(again) / "model.safetensors", std::ios::binary);
  EXPECT_TRUE(std::equal(std::istreambuf_iterator<char>(a), std::istreambuf_iterator<char>(),
                         std::istreambuf_iterator<char>(b)));
}

}  // namespace
}  // namespace dsmoe
