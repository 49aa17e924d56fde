// test_bench.cpp: `dsmoe bench` end to end on the tiny V3 fixture (JSON keys present and
// positive, quantized runs, one-line errors) and the arithmetic of runtime/bench.h.
#include <gtest/gtest.h>
#include <sys/wait.h>

#include <array>
#include <cstdio>
#include <nlohmann/json.hpp>
#include <string>

#include "model/config.h"
#include "model/weights.h"
#include "runtime/bench.h"

namespace dsmoe {
namespace {

const std::string kData = DSMOE_TEST_DATA;
const std::string kCli = DSMOE_CLI;
const std::string kModel = kData + "/v3-tiny/model";
// Tiny probes and workloads so that a run takes well under a second (also under ASan).
const std::string kSmall =
    " --prompt 8 --decode 4 --reps 2 --bandwidth-mib 16 --peak-size small --threads 2";

struct RunResult {
  int exit_code = -1;  // -1: killed by a signal
  std::string output;
};

RunResult run(const std::string& args, bool with_stderr) {
  RunResult result;
  const std::string redirect = with_stderr ? " 2>&1" : " 2>/dev/null";
  // Sleeping (not spinning) OpenMP threads keep the test fast on a machine shared with builds.
  FILE* pipe = popen(("OMP_WAIT_POLICY=PASSIVE " + kCli + " " + args + redirect).c_str(), "r");
  if (pipe == nullptr) return result;
  std::array<char, 4096> buffer;
  size_t n;
  while ((n = fread(buffer.data(), 1, buffer.size(), pipe)) > 0)
    result.output.append(buffer.data(), n);
  const int status = pclose(pipe);
  result.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  return result;
}

nlohmann::json run_json(const std::string& args) {
  const RunResult r = run("bench --model " + kModel + kSmall + " --json " + args, false);
  EXPECT_EQ(r.exit_code, 0) << r.output;
  nlohmann::json j = nlohmann::json::parse(r.output, nullptr, /*allow_exceptions=*/false);
  EXPECT_TRUE(j.is_object()) << "not one JSON object: " << r.output;
  return j;
}

void expect_positive(const nlohmann::json& j, const char* key) {
  ASSERT_TRUE(j.contains(key)) << key;
  ASSERT_TRUE(j[key].is_number()) << key;
  EXPECT_GT(j[key].get<double>(), 0.0) << key;
}

TEST(BenchCli, JsonF32WithTraining) {
  const nlohmann::json j = run_json("--train --batch 2 --seq 16");
  for (const char* key : {"prefill_tokens_per_s",
                          "prefill_tokens_per_s_best",
                          "decode_tokens_per_s",
                          "decode_tokens_per_s_best",
                          "train_tokens_per_s",
                          "train_tokens_per_s_best",
                          "active_bytes_per_token",
                          "weight_bytes",
                          "read_bandwidth_bytes_per_s",
                          "peak_rss_bytes",
                          "fp32_peak_flops_per_s",
                          "bf16_peak_flops_per_s",
                          "int8_peak_ops_per_s",
                          "decode_roofline_tokens_per_s",
                          "decode_fraction_of_roofline",
                          "prefill_fraction_of_peak",
                          "train_fraction_of_peak",
                          "prefill_flops_per_token",
                          "train_flops_per_token",
                          "fp32_fma_peak_flops_per_s",
                          "threads"})
    expect_positive(j, key);
  // 0 where the CPU lacks AVX512-BF16 / VNNI, else positive.
  for (const char* key : {"bf16_dot_peak_flops_per_s", "int8_dot_peak_ops_per_s"}) {
    ASSERT_TRUE(j[key].is_number()) << key;
    EXPECT_GE(j[key].get<double>(), 0.0) << key;
  }
  EXPECT_EQ(j["weights"], "f32");
  EXPECT_EQ(j["threads"], 2);
  EXPECT_EQ(j["prefill_peak_kind"], "fp32");
  EXPECT_EQ(j["config"]["model_type"], "deepseek_v3");
  EXPECT_EQ(j["config"]["layers"], 3);
  EXPECT_EQ(j["config"]["hidden_size"], 64);
  EXPECT_EQ(j["prefill"]["seconds"].size(), 2u);
  EXPECT_EQ(j["train"]["seconds"].size(), 2u);
  EXPECT_EQ(j["train_warmup"], 3);  // untimed steps before the timed ones (the default)
  EXPECT_TRUE(j["openblas_coretype"].is_string());
  EXPECT_FALSE(j["machine"]["cpu"].get<std::string>().empty());
  EXPECT_FALSE(j["machine"]["hwy_target"].get<std::string>().empty());
  EXPECT_FALSE(j["date"].get<std::string>().empty());
  // The f32 active bytes are 4 per active parameter; fewer than all the weights (top-4 of 16).
  EXPECT_EQ(j["active_bytes_per_token"].get<int64_t>(),
            4 * j["config"]["active_params_per_token"].get<int64_t>());
  EXPECT_LT(j["active_bytes_per_token"].get<int64_t>(), j["weight_bytes"].get<int64_t>());
  // The bandwidth is probed around each decode repetition; each one's fraction of roofline is
  // its tokens/s over (the mean of its two probes / active bytes), and the reported one their
  // median (of 2: the mean).
  EXPECT_EQ(j["bandwidth_probe_when"], "before and after each decode repetition");
  const nlohmann::json& bandwidth = j["decode"]["read_bandwidth_bytes_per_s"];
  const nlohmann::json& fraction = j["decode"]["fraction_of_roofline"];
  ASSERT_EQ(bandwidth.size(), 2u);
  ASSERT_EQ(fraction.size(), 2u);
  const double active = j["active_bytes_per_token"].get<double>();
  for (size_t rep = 0; rep < 2; rep++)
    EXPECT_NEAR(
        fraction[rep].get<double>(),
        4.0 / j["decode"]["seconds"][rep].get<double>() * active / bandwidth[rep].get<double>(),
        1e-9 * fraction[rep].get<double>());
  EXPECT_NEAR(j["decode_fraction_of_roofline"].get<double>(),
              0.5 * (fraction[0].get<double>() + fraction[1].get<double>()), 1e-12);
  EXPECT_NEAR(j["read_bandwidth_bytes_per_s"].get<double>(),
              0.5 * (bandwidth[0].get<double>() + bandwidth[1].get<double>()), 1.0);
}

// Without decode the bandwidth is probed after the model work; with it, the probe's matrix
// (here 64 MiB) is not counted in the peak RSS of the model work (the tiny model needs ~30 MiB).
TEST(BenchCli, BandwidthProbeWhenAndPeakRss) {
  const std::string common =
      "bench --model " + kModel + " --prompt 8 --reps 1 --peak-size small --threads 2 --json";
  const RunResult no_decode_run = run(common + " --decode 0 --bandwidth-mib 16", false);
  ASSERT_EQ(no_decode_run.exit_code, 0) << no_decode_run.output;
  const nlohmann::json no_decode = nlohmann::json::parse(no_decode_run.output);
  EXPECT_EQ(no_decode["bandwidth_probe_when"], "after the model work");
  expect_positive(no_decode, "read_bandwidth_bytes_per_s");
  EXPECT_FALSE(no_decode.contains("decode_fraction_of_roofline"));
  const RunResult decode_run = run(common + " --decode 4 --bandwidth-mib 64", false);
  ASSERT_EQ(decode_run.exit_code, 0) << decode_run.output;
  const nlohmann::json j = nlohmann::json::parse(decode_run.output);
  EXPECT_EQ(j["bandwidth_probe_bytes"].get<int64_t>(), int64_t{64} << 20);
#if !defined(__SANITIZE_ADDRESS__)  // ASan holds freed memory in its quarantine
  if (!j.contains("peak_rss_includes_bandwidth_probe")) {
    EXPECT_LT(j["peak_rss_bytes"].get<int64_t>(), int64_t{60} << 20);
  }
#endif
}

TEST(BenchCli, JsonQ8_0WithoutTraining) {
  const nlohmann::json f32 = run_json("--no-roofline");
  const nlohmann::json j = run_json("--weights q8_0");
  for (const char* key : {"prefill_tokens_per_s", "decode_tokens_per_s", "active_bytes_per_token",
                          "read_bandwidth_bytes_per_s", "peak_rss_bytes"})
    expect_positive(j, key);
  EXPECT_EQ(j["weights"], "q8_0");
  EXPECT_EQ(j["prefill_peak_kind"], "int8");
  EXPECT_FALSE(j.contains("train_tokens_per_s"));
  EXPECT_FALSE(f32.contains("read_bandwidth_bytes_per_s"));  // --no-roofline
  EXPECT_LT(j["active_bytes_per_token"].get<int64_t>(),
            f32["active_bytes_per_token"].get<int64_t>());
}

// --profile: decode's time per kind of work, on during the decode repetitions only (the
// bandwidth probes run outside it); the top-level kinds and the rest (outside_layers) add up to
// the decode time; v3-tiny has 3 layers, the first one dense.
TEST(BenchCli, DecodeProfile) {
  const nlohmann::json j = run_json("--weights q8_0 --profile");
  ASSERT_TRUE(j.contains("decode_profile")) << j.dump();
  const nlohmann::json& kinds = j["decode_profile"]["kinds"];
  EXPECT_EQ(kinds["attention"]["calls_per_token"].get<double>(), 3.0);
  EXPECT_EQ(kinds["dense_mlp"]["calls_per_token"].get<double>(), 1.0);
  EXPECT_EQ(kinds["router"]["calls_per_token"].get<double>(), 2.0);
  EXPECT_GT(kinds["experts"]["ms_per_token"].get<double>(), 0.0);
  EXPECT_GT(kinds["act_quant"]["calls_per_token"].get<double>(), 0.0);
  double share = 0;
  for (const char* top : {"attention", "router", "experts", "moe_combine", "dense_mlp",
                          "norm_residual", "outside_layers"})
    share += kinds[top]["share"].get<double>();
  EXPECT_NEAR(share, 1.0, 1e-9);
  EXPECT_GE(kinds["outside_layers"]["share"].get<double>(), 0.0);
  expect_positive(j["decode_profile"], "empty_parallel_region_us");
  EXPECT_FALSE(run_json("--weights q8_0 --no-roofline").contains("decode_profile"));
}

TEST(BenchCli, HumanTable) {
  const RunResult r = run("bench --model " + kModel + kSmall + " --no-roofline", true);
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("deepseek_v3, 3 layers"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("prefill pp8"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("decode tg4"), std::string::npos) << r.output;
}

TEST(BenchCli, ErrorsAreOneLine) {
  for (const std::string& args : {std::string("--train --weights bf16"),
                                  std::string("--weights q5_k"), std::string("--peak-size huge")}) {
    const RunResult r = run("bench --model " + kModel + " " + args, true);
    EXPECT_EQ(r.exit_code, 1) << args;
    EXPECT_EQ(r.output.find('\n'), r.output.size() - 1) << args << ": " << r.output;
    EXPECT_NE(r.output.find("dsmoe: error:"), std::string::npos) << r.output;
  }
}

// bench/configs parse, with the sizes the issue states (checked without writing the weights:
// infer-lite8 is ~9 GB at bf16).
TEST(BenchConfigs, ParseWithIssueShapes) {
  const std::string dir = kData + "/../../bench/configs/";
  const ModelConfig lite = load_model_config(dir + "infer-lite8.json");
  EXPECT_EQ(lite.arch, Arch::kDeepseekV2);
  EXPECT_EQ(lite.num_hidden_layers, 8);
  EXPECT_EQ(lite.q_lora_rank, 0);
  EXPECT_EQ(lite.rope_type, RopeType::kYarn);
  EXPECT_DOUBLE_EQ(lite.rope_factor, 40.0);
  EXPECT_EQ(lite.original_max_position_embeddings, 4096);
  EXPECT_EQ(lite.scoring_func, ScoringFunc::kSoftmax);
  EXPECT_EQ(lite.topk_method, TopkMethod::kGreedy);
  // 8 x 13.77 M attention + 67.24 M dense MLP + 7 x 571.08 M MoE + 2 x 209.7 M embedding/head.
  EXPECT_EQ(count_parameters(lite), 4594374656);
  const ModelConfig s = load_model_config(dir + "train-s.json");
  EXPECT_EQ(s.arch, Arch::kDeepseekV3);
  EXPECT_EQ(s.scoring_func, ScoringFunc::kSigmoid);
  EXPECT_EQ(s.topk_method, TopkMethod::kNoauxTc);
  EXPECT_EQ(s.n_group, 8);
  EXPECT_EQ(s.topk_group, 4);
  EXPECT_NEAR(count_parameters(s) / 1e6, 141.173, 0.001);
  // The full DeepSeek-V2-Lite shape: infer-lite8 with all 27 layers, 15.7 B parameters.
  const ModelConfig full = load_model_config(dir + "v2-lite.json");
  EXPECT_EQ(full.num_hidden_layers, 27);
  // 19 more MoE layers of 584.85 M each (attention, norms, 64 + 2 experts, router).
  EXPECT_EQ(count_parameters(full), 4594374656 + 19 * int64_t{584847872});
  EXPECT_EQ(count_parameters(full), 15706484224);
}

TEST(BenchMath, RepTimes) {
  RepTimes t{{3.0, 1.0, 2.0}};
  EXPECT_DOUBLE_EQ(t.median(), 2.0);
  EXPECT_DOUBLE_EQ(t.best(), 1.0);
  t.seconds.push_back(4.0);
  EXPECT_DOUBLE_EQ(t.median(), 2.5);
}

TEST(BenchMath, FlopModel) {
  ModelConfig c;
  c.arch = Arch::kDeepseekV2;
  c.hidden_size = 16;
  c.num_hidden_layers = 2;
  c.num_attention_heads = 4;
  c.qk_nope_head_dim = 8;
  c.qk_rope_head_dim = 4;
  c.v_head_dim = 8;
  // Per layer and context position: 2 * heads * (qk + v) = 2 * 4 * 20 = 160.
  EXPECT_DOUBLE_EQ(attention_flops_per_token(c, 1.0), 320.0);
  // 2 * (1016 - 16) matmul FLOPs + attention at mean context (3 + 1) / 2 = 2.
  EXPECT_DOUBLE_EQ(forward_flops_per_token(c, 1016, 3), 2000.0 + 640.0);
  EXPECT_DOUBLE_EQ(train_flops_per_token(c, 1016, 3), 3 * 2640.0);
}

}  // namespace
}  // namespace dsmoe
