// Tests for train/: the training loop end to end on a tiny V3 model and a small text file (the
// loss falls, resume is bit-exact, checkpoints are safe, bad input is refused without harm,
// non-finite steps are skipped, metrics.jsonl) and the learning-rate schedule. AdamW itself:
// tests/test_optimizer.cpp.
#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <numbers>
#include <sstream>
#include <string>
#include <vector>

#include "io/safetensors.h"
#include "model/config.h"
#include "model/transformer.h"
#include "model/weights.h"
#include "tensor/random.h"
#include "tiny_models.h"
#include "train/checkpoint.h"
#include "train/optimizer.h"
#include "train/trainer.h"
#include "util/check.h"
#include "util/threads.h"

namespace dsmoe {
namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;

// ---------------------------------------------------------------------------------------------
// Helpers

// Sets the thread count for a scope.
class Threads {
 public:
  explicit Threads(int n) : saved_(num_threads()) { set_num_threads(n); }
  ~Threads() { set_num_threads(saved_); }

 private:
  int saved_;
};

// Every file under `dir` (relative path -> bytes).
std::map<std::string, std::string> snapshot(const std::string& dir) {
  std::map<std::string, std::string> files;
  for (const auto& entry : fs::recursive_directory_iterator(dir))
    if (entry.is_regular_file())
      files[fs::relative(entry.path(), dir).string()] = read_bytes(entry.path().string());
  return files;
}

// A few KB of sentences of several kinds, repeated.
std::string training_text() {
  const char* sentences[] = {"the cat sat on the mat and the dog sat on the log. ",
                             "one two three four five six seven eight nine ten. ",
                             "abcabcabc xyzxyzxyz abcabcabc xyzxyzxyz. ",
                             "routing sends every token to two of eight experts. ",
                             "0101 1010 0101 1010 0101. "};
  std::string text;
  for (int i = 0; i < 80; i++) text += sentences[(i * 3 + i / 5) % 5];
  return text;
}

// Tiny DeepSeek-V3 (tiny_models.h) with the byte vocabulary and two layers: layer 0 dense,
// layer 1 MoE with 8 routed experts top-2 in 4 groups (2 kept) and 1 shared expert.
json tiny_train_json() { return tiny_v3_json(/*n_layers=*/2, /*vocab=*/256); }

// A model config and a data file in `dir`, and a TrainConfig that uses them.
TrainConfig setup(const TempDir& dir, const json& options = json::object(), int64_t steps = 8) {
  json config = tiny_train_json();
  for (const auto& [key, value] : options.items()) config[key] = value;
  write_text(dir / "config.json", config.dump(2));
  write_text(dir / "data.txt", training_text());
  TrainConfig tc;
  tc.model_config = dir / "config.json";
  tc.data_files = {dir / "data.txt"};
  tc.out_dir = dir / "run";
  tc.steps = steps;
  tc.batch_size = 4;
  tc.seq_len = 32;
  tc.schedule.max_lr = 1e-2f;
  tc.schedule.min_lr = 1e-3f;
  tc.schedule.warmup_steps = 2;
  tc.seed = 1;
  tc.quiet = true;
  return tc;
}

// Runs `fn`, which must throw dsmoe::Error; returns its message.
template <typename Fn>
std::string error_of(Fn&& fn) {
  try {
    fn();
  } catch (const Error& e) {
    return e.what();
  }
  ADD_FAILURE() << "expected a dsmoe::Error";
  return "";
}

std::string latest_name(const std::string& out_dir) {
  std::string name = read_bytes(out_dir + "/latest");
  while (!name.empty() && (name.back() == '\n' || name.back() == ' ')) name.pop_back();
  return name;
}

// ---------------------------------------------------------------------------------------------
// Training makes progress

TEST(Train, LossFalls) {
  TempDir dir;
  TrainConfig tc = setup(dir, json::object(), 40);
  tc.schedule.warmup_steps = 4;
  const double final_loss = train(tc);
  const std::vector<json> lines = read_metrics(tc.out_dir + "/metrics.jsonl");
  ASSERT_EQ(lines.size(), 40u);
  const double first = lines.front()["loss"].get<double>();
  const double last = lines.back()["loss"].get<double>();
  EXPECT_EQ(final_loss, last);
  EXPECT_GT(first, 5.0);  // about log(256) from random weights
  EXPECT_LT(last, 0.5 * first) << "first " << first << " last " << last;
}

// ---------------------------------------------------------------------------------------------
// Resume is bit-exact

struct ResumeCase {
  std::string name;
  json options;
  int64_t grad_accum = 1;
  int threads = 1;
};

void PrintTo(const ResumeCase& c, std::ostream* os) { *os << c.name; }

class Resume : public ::testing::TestWithParam<ResumeCase> {};
class ResumeStop : public ::testing::TestWithParam<ResumeCase> {};

void expect_same_checkpoint(const std::string& a, const std::string& b) {
  for (const char* file : {"model.safetensors", "optimizer.safetensors", "trainer_state.json"})
    EXPECT_TRUE(read_bytes(a + "/" + file) == read_bytes(b + "/" + file))
        << file << " differs between " << a << " and " << b;
}

// A run killed after its step-4 checkpoint and resumed ends at the same bytes as a run that was
// never interrupted (same seed, same schedule, same thread count).
TEST_P(Resume, AfterAKillIsBitExact) {
  const ResumeCase& rc = GetParam();
  const Threads threads(rc.threads);
  TempDir dir;
  TrainConfig straight = setup(dir, rc.options);
  straight.grad_accum = rc.grad_accum;
  train(straight);

  TrainConfig saving = straight;  // the same run, checkpointing at step 4 too
  saving.out_dir = dir / "saving";
  saving.save_every = 4;
  train(saving);
  expect_same_checkpoint(straight.out_dir + "/step-00000008", saving.out_dir + "/step-00000008");

  // What a kill just after step 4 leaves: step-4 complete and `latest` naming it; metrics lines
  // may run ahead of the checkpoint.
  const std::string killed = dir / "killed";
  fs::create_directories(killed);
  fs::copy(saving.out_dir + "/step-00000004", killed + "/step-00000004");
  write_text(killed + "/latest", "step-00000004\n");
  fs::copy_file(saving.out_dir + "/metrics.jsonl", killed + "/metrics.jsonl");
  TrainConfig resumed = straight;
  resumed.out_dir = killed;
  resumed.model_config = "";  // taken from the checkpoint
  resumed.resume = true;
  train(resumed);
  EXPECT_EQ(latest_name(killed), "step-00000008");
  expect_same_checkpoint(straight.out_dir + "/step-00000008", killed + "/step-00000008");
  EXPECT_TRUE(read_bytes(straight.out_dir + "/model.safetensors") ==
              read_bytes(killed + "/model.safetensors"));
  // metrics.jsonl: the lines after the checkpoint were replaced, one line per step.
  const std::vector<json> a = read_metrics(straight.out_dir + "/metrics.jsonl");
  const std::vector<json> b = read_metrics(killed + "/metrics.jsonl");
  ASSERT_EQ(a.size(), 8u);
  ASSERT_EQ(b.size(), 8u);
  for (size_t i = 0; i < a.size(); i++) {
    EXPECT_EQ(b[i]["step"], static_cast<int64_t>(i + 1));
    for (const char* key : {"loss", "aux_loss", "lr", "grad_norm", "expert_load"})
      EXPECT_EQ(a[i][key], b[i][key]) << key << " at step " << i + 1;
  }
}

// Stopping after 4 steps and resuming to 8 equals 8 steps straight when the learning rate does
// not depend on the run's length (a constant schedule; the cosine is stretched over `steps`).
TEST_P(ResumeStop, StopAndContinueIsBitExact) {
  const ResumeCase& rc = GetParam();
  const Threads threads(rc.threads);
  TempDir dir;
  TrainConfig straight = setup(dir, rc.options);
  straight.grad_accum = rc.grad_accum;
  straight.schedule.warmup_steps = 0;
  straight.schedule.min_lr = straight.schedule.max_lr;
  train(straight);

  TrainConfig first = straight;
  first.out_dir = dir / "stopped";
  first.steps = 4;
  train(first);
  EXPECT_EQ(latest_name(first.out_dir), "step-00000004");
  TrainConfig second = first;
  second.steps = 8;
  second.resume = true;  // with the same --model-config: it agrees with the checkpoint
  train(second);
  expect_same_checkpoint(straight.out_dir + "/step-00000008", first.out_dir + "/step-00000008");
}

std::vector<ResumeCase> resume_cases() {
  return {
      {"Plain", json::object()},
      {"GradAccum2", json::object(), 2},
      {"NoisyGatingBiasUpdateAndAuxLoss",
       {{"noisy_gating", true},
        {"moe_router_enable_expert_bias", true},
        {"moe_router_bias_update_rate", 0.01},
        {"aux_loss_alpha", 0.01},
        {"seq_aux", true}},
       2},
      // V2 routing with every balance loss and token dropping, and tied embeddings.
      {"V2BalanceCapacityTied",
       {{"model_type", "deepseek_v2"},
        {"scoring_func", "softmax"},
        {"topk_method", "group_limited_greedy"},
        {"aux_loss_alpha", 0.01},
        {"moe_device_level_aux_loss_coeff", 0.01},
        {"moe_comm_aux_loss_coeff", 0.01},
        {"moe_expert_capacity_factor", 1.0},
        {"tie_word_embeddings", true}}},
  };
}

std::vector<ResumeCase> resume_cases_and_two_threads() {
  std::vector<ResumeCase> cases = resume_cases();
  cases.push_back({"TwoThreads", {{"noisy_gating", true}}, 2, 2});
  return cases;
}

INSTANTIATE_TEST_SUITE_P(Train, Resume, ::testing::ValuesIn(resume_cases_and_two_threads()),
                         [](const auto& info) { return info.param.name; });
INSTANTIATE_TEST_SUITE_P(Train, ResumeStop, ::testing::ValuesIn(resume_cases()),
                         [](const auto& info) { return info.param.name; });

// ---------------------------------------------------------------------------------------------
// Checkpoints are safe

TEST(Checkpoint, LatestNamesACompleteStepDirectory) {
  TempDir dir;
  TrainConfig tc = setup(dir, json::object(), 6);
  tc.save_every = 2;
  train(tc);
  EXPECT_EQ(latest_name(tc.out_dir), "step-00000006");
  std::vector<std::string> steps;
  for (const auto& entry : fs::directory_iterator(tc.out_dir)) {
    const std::string name = entry.path().filename().string();
    EXPECT_EQ(name.find(".tmp"), std::string::npos) << "left over: " << name;
    if (entry.is_directory()) steps.push_back(name);
  }
  std::sort(steps.begin(), steps.end());
  EXPECT_EQ(steps, (std::vector<std::string>{"step-00000004", "step-00000006"}));  // keep_last 2
  const std::string latest = tc.out_dir + "/step-00000006";
  std::vector<std::string> files;
  for (const auto& entry : fs::directory_iterator(latest))
    files.push_back(entry.path().filename().string());
  std::sort(files.begin(), files.end());
  EXPECT_EQ(files, (std::vector<std::string>{"config.json", "model.safetensors",
                                             "optimizer.safetensors", "trainer_state.json"}));
  // Every tensor is there, in both files.
  const ModelConfig config = load_model_config(latest);
  ModelWeights names;
  int64_t n_tensors = 0;
  for_each_tensor(config, names,
                  [&](const std::string&, const Shape&, TensorRole, Tensor&) { n_tensors++; });
  EXPECT_EQ(static_cast<int64_t>(SafetensorsFile(latest + "/model.safetensors").tensors().size()),
            n_tensors);
  EXPECT_EQ(
      static_cast<int64_t>(SafetensorsFile(latest + "/optimizer.safetensors").tensors().size()),
      2 * n_tensors + 1);  // m, v and the step count
  const json state = json::parse(read_bytes(latest + "/trainer_state.json"));
  EXPECT_EQ(state["step"], 6);
  // The top-level copy is the newest weights and loads for inference.
  EXPECT_TRUE(read_bytes(tc.out_dir + "/model.safetensors") ==
              read_bytes(latest + "/model.safetensors"));
  EXPECT_EQ(read_bytes(tc.out_dir + "/config.json"), read_bytes(latest + "/config.json"));
  const Model model = Model::load(tc.out_dir);
  const std::vector<int64_t> ids = {104, 101, 108, 108, 111};
  const Tensor logits = model.forward(ids.data(), 1, 5);
  for (int64_t i = 0; i < logits.numel(); i++) ASSERT_TRUE(std::isfinite(logits.data[i]));
}

TEST(Checkpoint, CorruptFileFailsResumeAndTouchesNothing) {
  for (const char* file : {"model.safetensors", "optimizer.safetensors"}) {
    SCOPED_TRACE(file);
    TempDir dir;
    TrainConfig tc = setup(dir, json::object(), 4);
    train(tc);
    const std::string path = tc.out_dir + "/step-00000004/" + file;
    fs::resize_file(path, fs::file_size(path) / 2);
    const auto before = snapshot(tc.out_dir);
    tc.steps = 8;
    tc.resume = true;
    const std::string message = error_of([&] { train(tc); });
    EXPECT_NE(message.find(path), std::string::npos) << message;
    EXPECT_TRUE(snapshot(tc.out_dir) == before) << "a failed resume must not modify anything";
  }
}

TEST(Checkpoint, ConfigContradictingTheCheckpointIsAnError) {
  TempDir dir;
  TrainConfig tc = setup(dir, json::object(), 4);
  train(tc);
  json other = tiny_train_json();
  other["hidden_size"] = 48;
  write_text(dir / "other.json", other.dump(2));
  const auto before = snapshot(tc.out_dir);
  TrainConfig resume = tc;
  resume.steps = 6;
  resume.resume = true;
  resume.model_config = dir / "other.json";
  const std::string message = error_of([&] { train(resume); });
  EXPECT_NE(message.find("contradicts"), std::string::npos) << message;
  EXPECT_NE(message.find(dir / "other.json"), std::string::npos) << message;
  EXPECT_TRUE(snapshot(tc.out_dir) == before);
  // The agreeing config resumes.
  resume.model_config = tc.model_config;
  EXPECT_NO_THROW(train(resume));
  EXPECT_EQ(latest_name(tc.out_dir), "step-00000006");
}

// Regression: the same config with its keys in another order (re-saved by an editor or a script)
// must not count as contradicting the checkpoint (an ordered_json comparison once refused it).
TEST(Checkpoint, SameConfigWithKeysInAnotherOrderResumes) {
  TempDir dir;
  TrainConfig tc = setup(dir, json::object(), 2);
  train(tc);
  const json original = json::parse(read_bytes(tc.model_config));
  nlohmann::ordered_json reversed;
  std::vector<std::string> keys;
  for (const auto& [key, value] : original.items()) keys.push_back(key);
  for (auto it = keys.rbegin(); it != keys.rend(); ++it) reversed[*it] = original[*it];
  ASSERT_EQ(json::parse(reversed.dump()), original);  // the same config
  write_text(dir / "reordered.json", reversed.dump(2));
  tc.model_config = dir / "reordered.json";
  tc.steps = 3;
  tc.resume = true;
  EXPECT_NO_THROW(train(tc));
  EXPECT_EQ(latest_name(tc.out_dir), "step-00000003");
}

// A save that fails half way (here: the model file cannot be created) leaves `latest` on the
// previous complete checkpoint, which still resumes to the same bytes as an uninterrupted run.
TEST(Checkpoint, FailedSaveKeepsThePreviousCheckpoint) {
  TempDir dir;
  TrainConfig straight = setup(dir, json::object(), 4);
  straight.save_every = 2;
  train(straight);
  TrainConfig tc = straight;
  tc.out_dir = dir / "failing";
  const std::string blocker = tc.out_dir + "/step-00000004/model.safetensors.tmp";
  fs::create_directories(blocker);  // open(O_CREAT) of a directory fails
  const std::string message = error_of([&] { train(tc); });
  EXPECT_NE(message.find(blocker), std::string::npos) << message;
  EXPECT_EQ(latest_name(tc.out_dir), "step-00000002");
  EXPECT_TRUE(read_bytes(tc.out_dir + "/model.safetensors") ==
              read_bytes(tc.out_dir + "/step-00000002/model.safetensors"));
  fs::remove_all(blocker);
  tc.resume = true;
  train(tc);
  EXPECT_EQ(latest_name(tc.out_dir), "step-00000004");
  expect_same_checkpoint(straight.out_dir + "/step-00000004", tc.out_dir + "/step-00000004");
  EXPECT_EQ(read_metrics(tc.out_dir + "/metrics.jsonl").size(), 4u);
}

TEST(Checkpoint, FreshRunIntoACheckpointDirectoryIsAnError) {
  TempDir dir;
  TrainConfig tc = setup(dir, json::object(), 2);
  train(tc);
  const auto before = snapshot(tc.out_dir);
  const std::string message = error_of([&] { train(tc); });
  EXPECT_NE(message.find("--resume"), std::string::npos) << message;
  EXPECT_TRUE(snapshot(tc.out_dir) == before) << "nothing may be destroyed";
}

TEST(Checkpoint, ResumeWithoutACheckpointIsAnError) {
  TempDir dir;
  TrainConfig tc = setup(dir, json::object(), 2);
  tc.resume = true;
  const std::string message = error_of([&] { train(tc); });
  EXPECT_NE(message.find("no checkpoint"), std::string::npos) << message;
}

TEST(TrainData, EmptyOrMissingDataFileIsAnErrorNamingIt) {
  TempDir dir;
  TrainConfig tc = setup(dir, json::object(), 2);
  write_text(dir / "empty.txt", "");
  tc.data_files = {dir / "data.txt", dir / "empty.txt"};
  std::string message = error_of([&] { train(tc); });
  EXPECT_NE(message.find(dir / "empty.txt"), std::string::npos) << message;
  EXPECT_NE(message.find("empty"), std::string::npos) << message;
  EXPECT_FALSE(fs::exists(tc.out_dir + "/latest"));
  tc.data_files = {dir / "missing.txt"};
  message = error_of([&] { train(tc); });
  EXPECT_NE(message.find(dir / "missing.txt"), std::string::npos) << message;
  // Fewer tokens than one sequence.
  write_text(dir / "short.txt", "too short");
  tc.data_files = {dir / "short.txt"};
  message = error_of([&] { train(tc); });
  EXPECT_NE(message.find("fewer than one sequence"), std::string::npos) << message;
}

// ---------------------------------------------------------------------------------------------
// Non-finite steps

// A learning rate of 1e30 sends the weights to inf/NaN after a step or two; every step from
// then on must be skipped with a warning (not applied, not a crash) and the run still finishes.
TEST(Train, NonFiniteLossSkipsTheStep) {
  TempDir dir;
  TrainConfig tc = setup(dir, json::object(), 6);
  tc.schedule.max_lr = tc.schedule.min_lr = 1e30f;
  tc.schedule.warmup_steps = 0;
  tc.max_nonfinite_steps = 0;  // never stop: this test is about skipping (test_faults: stopping)
  ::testing::internal::CaptureStderr();
  EXPECT_NO_THROW(train(tc));
  const std::string log = ::testing::internal::GetCapturedStderr();
  const std::vector<json> lines = read_metrics(tc.out_dir + "/metrics.jsonl");
  ASSERT_EQ(lines.size(), 6u);
  EXPECT_FALSE(lines.front()["skipped"].get<bool>());
  EXPECT_TRUE(lines.back()["skipped"].get<bool>());
  int64_t skipped = 0;
  bool seen_skip = false;
  for (const json& line : lines) {
    const bool s = line["skipped"].get<bool>();
    if (seen_skip) {
      EXPECT_TRUE(s) << "step " << line["step"] << ": the weights stay non-finite";
    }
    seen_skip = seen_skip || s;
    skipped += s;
  }
  EXPECT_NE(log.find("warning"), std::string::npos) << log;
  const json state = json::parse(read_bytes(tc.out_dir + "/step-00000006/trainer_state.json"));
  EXPECT_EQ(state["step"], 6);
  EXPECT_EQ(state["skipped_steps"], skipped);
  // The checkpoint of a run with skipped steps still resumes (step = optimizer steps + skipped).
  tc.steps = 7;
  tc.resume = true;
  EXPECT_NO_THROW(train(tc));
  EXPECT_EQ(read_metrics(tc.out_dir + "/metrics.jsonl").size(), 7u);
}

// ---------------------------------------------------------------------------------------------
// Metrics and the schedule

TEST(Train, MetricsHaveOneLinePerStep) {
  TempDir dir;
  TrainConfig tc = setup(dir, {{"aux_loss_alpha", 0.01}}, 5);
  train(tc);
  const std::vector<json> lines = read_metrics(tc.out_dir + "/metrics.jsonl");
  ASSERT_EQ(lines.size(), 5u);
  LrSchedule schedule = tc.schedule;
  schedule.total_steps = tc.steps;
  const int64_t assignments = tc.batch_size * tc.seq_len * 2;  // top-2
  for (size_t i = 0; i < lines.size(); i++) {
    const json& line = lines[i];
    SCOPED_TRACE(line.dump());
    EXPECT_EQ(line["step"], static_cast<int64_t>(i + 1));
    for (const char* key : {"loss", "aux_loss", "lr", "grad_norm", "load_max_over_mean"}) {
      ASSERT_TRUE(line.contains(key) && line[key].is_number()) << key;
      EXPECT_TRUE(std::isfinite(line[key].get<double>())) << key;
    }
    EXPECT_GT(line["loss"].get<double>(), 0.0);
    EXPECT_GT(line["aux_loss"].get<double>(), 0.0);
    EXPECT_GT(line["grad_norm"].get<double>(), 0.0);
    EXPECT_EQ(line["lr"].get<float>(), learning_rate(schedule, static_cast<int64_t>(i)));
    ASSERT_TRUE(line["expert_load"].is_object());
    ASSERT_EQ(line["expert_load"].size(), 1u);  // one MoE layer
    const std::vector<int64_t> load = line["expert_load"]["1"].get<std::vector<int64_t>>();
    ASSERT_EQ(load.size(), 8u);
    int64_t total = 0, max_load = 0;
    for (int64_t l : load) total += l, max_load = std::max(max_load, l);
    EXPECT_EQ(total, assignments);
    EXPECT_NEAR(line["load_max_over_mean"].get<double>(), max_load * 8.0 / total, 1e-12);
    EXPECT_FALSE(line["skipped"].get<bool>());
  }
}

// A model with MTP modules: each line has the losses of its depths (metrics.jsonl "mtp_loss").
TEST(Train, MetricsHaveTheMtpLossPerDepth) {
  TempDir dir;
  train(setup(dir, {{"num_nextn_predict_layers", 2}}, 3));
  const std::vector<json> lines = read_metrics(dir / "run/metrics.jsonl");
  ASSERT_EQ(lines.size(), 3u);
  for (const json& line : lines) {
    SCOPED_TRACE(line.dump());
    ASSERT_TRUE(line.contains("mtp_loss") && line["mtp_loss"].is_array());
    const std::vector<double> mtp = line["mtp_loss"].get<std::vector<double>>();
    ASSERT_EQ(mtp.size(), 2u);
    for (double l : mtp) EXPECT_TRUE(std::isfinite(l) && l > 0.0) << l;
  }
  // Without MTP modules the key is absent.
  TempDir plain_dir;
  train(setup(plain_dir, json::object(), 1));
  EXPECT_FALSE(read_metrics(plain_dir / "run/metrics.jsonl")[0].contains("mtp_loss"));
}

TEST(LearningRate, WarmupThenCosine) {
  LrSchedule s;
  s.max_lr = 1e-3f;
  s.min_lr = 1e-4f;
  s.warmup_steps = 10;
  s.total_steps = 110;
  EXPECT_FLOAT_EQ(learning_rate(s, 0), 1e-4f);  // max / warmup
  EXPECT_FLOAT_EQ(learning_rate(s, 4), 5e-4f);
  EXPECT_FLOAT_EQ(learning_rate(s, 9), 1e-3f);
  EXPECT_FLOAT_EQ(learning_rate(s, 10), 1e-3f);    // the cosine starts at max
  EXPECT_FLOAT_EQ(learning_rate(s, 60), 5.5e-4f);  // half way: (max + min) / 2
  EXPECT_FLOAT_EQ(learning_rate(s, 35),
                  1e-4f + 9e-4f * 0.5f * (1.0f + std::cos(std::numbers::pi_v<float> / 4)));
  EXPECT_FLOAT_EQ(learning_rate(s, 110), 1e-4f);  // the end
  EXPECT_FLOAT_EQ(learning_rate(s, 500), 1e-4f);  // and after
  for (int64_t step = 10; step < 110; step++)
    EXPECT_LE(learning_rate(s, step + 1), learning_rate(s, step)) << step;
  // No warm-up: the cosine from step 0.
  s.warmup_steps = 0;
  EXPECT_FLOAT_EQ(learning_rate(s, 0), 1e-3f);
  EXPECT_FLOAT_EQ(learning_rate(s, 55), 5.5e-4f);
}

}  // namespace
}  // namespace dsmoe
