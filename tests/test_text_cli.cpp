// test_text_cli.cpp: text in and out of the dsmoe command: `generate --prompt` and `chat` on a
// random-weight model with DeepSeek-V3's own tokenizer and vocabulary.
#include <sys/wait.h>

#include <array>
#include <cstdio>
#include <filesystem>

#include "test_util.h"
#include "text/tokenizer.h"

namespace dsmoe {
namespace {

namespace fs = std::filesystem;
const std::string kData = DSMOE_TEST_DATA;
const std::string kCli = DSMOE_CLI;

// Runs the dsmoe command with `input` on stdin; returns its exit code and stdout + stderr.
std::pair<int, std::string> run_with_input(const std::string& args, const std::string& input,
                                           const std::string& scratch) {
  const std::string input_path = scratch + "/stdin.txt";
  write_text(input_path, input);
  FILE* pipe = popen((kCli + " " + args + " < " + input_path + " 2>&1").c_str(), "r");
  std::string output;
  std::array<char, 4096> buffer;
  size_t n;
  while ((n = fread(buffer.data(), 1, buffer.size(), pipe)) > 0) output.append(buffer.data(), n);
  const int status = pclose(pipe);
  return {WIFEXITED(status) ? WEXITSTATUS(status) : -1, output};
}

// One model for the whole program: V3 layout, 129,280-row vocabulary, tokenizer files beside it.
class TextCli : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = fs::temp_directory_path() / fmt::format("dsmoe_test_text_cli_{}", ::getpid());
    fs::create_directories(dir_);
    nlohmann::json config =
        nlohmann::json::parse(read_bytes(kData + "/../../configs/chat-v3-tiny.json"));
    config["hidden_size"] = 32;
    config["num_hidden_layers"] = 1;
    write_text(dir_ / "config.json", config.dump());
    const auto [code, output] = run_with_input(
        fmt::format("init --config {} --out {}", (dir_ / "config.json").string(), model()), "",
        dir_.string());
    ASSERT_EQ(code, 0) << output;
    for (const char* file : {"tokenizer.json", "tokenizer_config.json"})
      fs::copy_file(kData + "/tokenizer-v3/" + file, dir_ / "model" / file);
  }
  static void TearDownTestSuite() { fs::remove_all(dir_); }
  static std::string model() { return (dir_ / "model").string(); }
  static std::string scratch() { return dir_.string(); }
  static fs::path dir_;
};
fs::path TextCli::dir_;

TEST_F(TextCli, GeneratePromptEncodesWithTheCheckpointsTokenizer) {
  const std::string prompt = "Hello, world! 你好 12345";
  const auto [code, output] = run_with_input(
      fmt::format("generate --model {} --prompt '{}' --max-new-tokens 4 --print-ids --threads 1",
                  model(), prompt),
      "", scratch());
  ASSERT_EQ(code, 0) << output;
  const std::string ids_line = output.substr(output.find_last_of('\n', output.size() - 2) + 1);
  const text::Tokenizer tokenizer = text::Tokenizer::load(model());
  const std::vector<int64_t> expected = tokenizer.encode(prompt, /*add_special_tokens=*/true);
  std::string expected_prefix;
  for (int64_t id : expected) expected_prefix += std::to_string(id) + ",";
  EXPECT_EQ(ids_line.rfind(expected_prefix, 0), 0u) << ids_line << " vs " << expected_prefix;
  EXPECT_EQ(expected.front(), 0);  // BOS, as tokenizer_config.json's add_bos_token says
}

TEST_F(TextCli, GeneratePromptPrintsTheTextFirst) {
  const auto [code, output] = run_with_input(
      fmt::format("generate --model {} --prompt 'Bonjour' --max-new-tokens 3 --threads 1", model()),
      "", scratch());
  ASSERT_EQ(code, 0) << output;
  EXPECT_NE(output.find("Bonjour"), std::string::npos) << output;
}

TEST_F(TextCli, ChatKeepsTheCacheBetweenTurns) {
  const auto [code, output] = run_with_input(
      fmt::format("chat --model {} --max-new-tokens 4 --threads 1 --system 'Be brief.'", model()),
      "Hi there\nAnd now?\n/reset\nFresh start\n", scratch());
  ASSERT_EQ(code, 0) << output;
  EXPECT_NE(output.find("turn 1:"), std::string::npos) << output;
  // Turn 2 renders the whole conversation again: the system message and turn 1 come from the
  // cache. After /reset the shared prefix is the system message (the cache is kept).
  const size_t turn2 = output.find("turn 2:");
  ASSERT_NE(turn2, std::string::npos) << output;
  const std::string line = output.substr(turn2, output.find('\n', turn2) - turn2);
  int prompt_tokens = 0, from_cache = 0;
  ASSERT_EQ(std::sscanf(line.c_str(), "turn 2: %d prompt tokens, %d of them", &prompt_tokens,
                        &from_cache),
            2)
      << line;
  EXPECT_GT(from_cache, 5) << line;
  EXPECT_LT(from_cache, prompt_tokens) << line;
  EXPECT_NE(output.find("turn 3:"), std::string::npos) << output;
}

TEST_F(TextCli, ChatWithoutATemplateSaysSo) {
  TempDir plain("no_template");
  fs::create_directories(plain / "model");
  for (const char* file : {"config.json", "model.safetensors"})
    fs::copy_file(model() + "/" + file, plain / "model/" + file);
  fs::copy_file(model() + "/tokenizer.json", plain / "model/tokenizer.json");
  const auto [code, output] = run_with_input(
      fmt::format("chat --model {} --threads 1", plain / "model"), "Hi\n", plain.str());
  EXPECT_EQ(code, 1);
  EXPECT_NE(output.find("no chat_template"), std::string::npos) << output;
}

}  // namespace
}  // namespace dsmoe
