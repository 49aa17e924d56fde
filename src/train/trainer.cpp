#include "train/trainer.h"

#include <unistd.h>

#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <sstream>

#include "io/safetensors.h"
#include "kernels/cpu/ops.h"
#include "model/transformer.h"
#include "train/checkpoint.h"
#include "train/data.h"
#include "train/data_parallel.h"
#include "train/failpoint.h"
#include "util/check.h"
#include "util/log.h"
#include "util/threads.h"

namespace dsmoe {
namespace {

namespace fs = std::filesystem;
using ordered_json = nlohmann::ordered_json;

ordered_json read_json(const std::string& path) {
  std::ifstream in(path);
  DSMOE_CHECK(in.good(), "{}: cannot open", path);
  ordered_json json = ordered_json::parse(in, nullptr, false);
  DSMOE_CHECK(!json.is_discarded(), "{}: not valid JSON", path);
  return json;
}

// Keeps the metric lines of steps <= last_step (a resumed run rewrites what came after).
void truncate_metrics(const std::string& path, int64_t last_step) {
  std::ifstream in(path);
  if (!in.good()) return;
  std::string line, kept;
  while (std::getline(in, line)) {
    const nlohmann::json j = nlohmann::json::parse(line, nullptr, false);
    if (!j.is_discarded() && j.value("step", int64_t{0}) <= last_step) kept += line + "\n";
  }
  write_file_atomic(path, kept);
}

// b_i += gamma * sign(mean load - load_i) (DeepSeek-V3 sec. 2.1.2): the bias moves selection
// toward under-loaded experts; gate weights never see it.
void update_expert_bias(const ModelConfig& c, ModelWeights& w,
                        const std::map<int64_t, std::vector<int64_t>>& loads) {
  for (const auto& [layer, load] : loads) {
    double mean = 0.0;
    for (int64_t l : load) mean += static_cast<double>(l) / load.size();
    float* bias = w.block(layer).moe.e_score_correction_bias.data;
    for (size_t e = 0; e < load.size(); e++) {
      const double gap = mean - static_cast<double>(load[e]);
      bias[e] += c.bias_update_rate * static_cast<float>((gap > 0) - (gap < 0));
    }
  }
}

double max_over_mean(const std::vector<int64_t>& load) {
  int64_t max_load = 0, total = 0;
  for (int64_t l : load) max_load = std::max(max_load, l), total += l;
  return total > 0 ? static_cast<double>(max_load) * load.size() / total : 0.0;
}

// The 5 tokens each expert of each MoE layer took most often in this batch (byte tokens).
nlohmann::json routing_analytics(const ModelConfig& c, const TrainActs& acts,
                                 const std::vector<int64_t>& ids) {
  nlohmann::json layers = nlohmann::json::object();
  for (int64_t L = 0; L < c.num_hidden_layers; L++) {
    if (!c.is_moe_layer(L)) continue;
    const Routing& r = acts.layers[L].moe.routing;
    std::vector<std::map<int64_t, int64_t>> counts(c.n_routed_experts);
    for (int64_t t = 0; t < r.n_tokens; t++)
      for (int64_t j = 0; j < r.top_k; j++) counts[r.expert[t * r.top_k + j]][ids[t]]++;
    nlohmann::json experts = nlohmann::json::array();
    for (const auto& expert : counts) {
      std::vector<std::pair<int64_t, int64_t>> sorted(expert.begin(), expert.end());
      std::sort(sorted.begin(), sorted.end(), [](auto& a, auto& b) {
        return a.second > b.second || (a.second == b.second && a.first < b.first);
      });
      nlohmann::json top = nlohmann::json::array();
      for (size_t i = 0; i < std::min<size_t>(5, sorted.size()); i++)
        top.push_back({sorted[i].first, sorted[i].second});
      experts.push_back(top);
    }
    layers[std::to_string(L)] = experts;
  }
  return layers;
}

void print_progress(int64_t step, int64_t steps, const StepStats& s, double tokens_per_s,
                    double load_ratio, bool tty, const std::string& parallel = "") {
  constexpr int kWidth = 24;
  const int filled = static_cast<int>(kWidth * (step + 1) / steps);
  std::string bar(filled, '=');
  if (filled < kWidth) bar += '>' + std::string(kWidth - filled - 1, ' ');
  std::fprintf(
      stderr, "%sstep %lld/%lld [%s] loss %.4f aux %.5f | %.0f tok/s | load max/mean %.2f%s%s",
      tty ? "\r" : "", static_cast<long long>(step + 1), static_cast<long long>(steps), bar.c_str(),
      s.loss, s.aux_loss, tokens_per_s, load_ratio, parallel.c_str(), tty ? "" : "\n");
  std::fflush(stderr);
}

// The newest published checkpoint, for messages.
std::string latest_or_none(const std::string& out_dir) {
  try {
    const std::string latest = latest_checkpoint_dir(out_dir);
    return latest.empty() ? "none" : latest;
  } catch (const Error& e) {
    return e.what();
  }
}

}  // namespace

double train(const TrainConfig& tc) {
  DSMOE_CHECK(!tc.out_dir.empty(), "--out is required");
  DSMOE_CHECK(tc.steps > 0 && tc.batch_size > 0 && tc.seq_len > 1 && tc.grad_accum > 0,
              "steps, batch size, grad accumulation must be positive and seq_len >= 2");
  DSMOE_CHECK(tc.max_nonfinite_steps >= 0, "--max-nonfinite-steps must be >= 0");
  const Failpoints failpoints = read_failpoints();  // test hooks; none in normal use
  DSMOE_CHECK(tc.precision == "f32" || tc.precision == "bf16",
              "--precision must be f32 or bf16, got '{}'", tc.precision);
  const cpu::MatmulPrecisionScope precision(tc.precision == "bf16" ? cpu::MatmulPrecision::kBF16
                                                                   : cpu::MatmulPrecision::kF32);
  fs::create_directories(tc.out_dir);
  const std::string latest = latest_checkpoint_dir(tc.out_dir);
  DSMOE_CHECK(tc.resume || latest.empty(),
              "{}: holds a checkpoint ({}); pass --resume to continue it or choose another --out",
              tc.out_dir, latest);
  // The model's config: the checkpoint's when resuming (a --model-config must agree with it).
  ordered_json config_json;
  if (tc.resume) {
    DSMOE_CHECK(!latest.empty(), "{}: no checkpoint to resume", tc.out_dir);
    config_json = read_json(latest + "/config.json");
    if (!tc.model_config.empty())
      DSMOE_CHECK(nlohmann::json::parse(read_json(tc.model_config).dump()) ==
                      nlohmann::json::parse(config_json.dump()),  // key order does not matter
                  "{} contradicts the config of the checkpoint in {}", tc.model_config, latest);
  } else {
    DSMOE_CHECK(!tc.model_config.empty(), "--model-config is required to start training");
    config_json = read_json(tc.model_config);
  }
  // Under mpirun: data parallel over the ranks, experts spread (train/data_parallel.h).
  TrainParallel parallel(world_comm());
  const bool rank0 = parallel.rank() == 0;
  DSMOE_CHECK(tc.batch_size % parallel.size() == 0,
              "--batch-size {} is not a multiple of the {} ranks", tc.batch_size, parallel.size());
  const ModelConfig config =
      parallel.placed(parse_model_config(nlohmann::json::parse(config_json.dump()),
                                         tc.resume ? latest + "/config.json" : tc.model_config));
  DSMOE_CHECK(config.vocab_size >= 256,
              "the byte-level tokenizer needs vocab_size >= 256, the "
              "config has {}",
              config.vocab_size);

  Model model(config, random_weights(config, tc.seed));
  const int64_t n_mtp = static_cast<int64_t>(model.weights().mtp.size());
  AdamWState adam = make_adamw_state(config, n_mtp);
  TrainerState state;
  const std::vector<int64_t> tokens = read_byte_tokens(tc.data_files);
  BatchSampler sampler(&tokens, tc.seq_len, tc.seed + 1);
  Rng noise_rng(tc.seed + 2);
  if (tc.resume) {
    load_checkpoint(tc.out_dir, config, model.mutable_weights(), adam, state);
    sampler.rng().restore(state.data_rng);
    noise_rng.restore(state.noise_rng);
    log_info("resumed {} at step {}", latest, state.step);
  }
  const std::string metrics_path = tc.out_dir + "/metrics.jsonl";
  if (rank0) truncate_metrics(metrics_path, tc.resume ? state.step : 0);
  std::ofstream metrics;
  if (rank0) metrics.open(metrics_path, std::ios::app);

  LrSchedule schedule = tc.schedule;
  schedule.total_steps = tc.steps;
  ModelWeights grads = zeros_like_weights(config, n_mtp);
  parallel.shard(config, model.mutable_weights(), grads, adam, tc.ep_node_limit);
  const int64_t first_seq = parallel.first_seq(tc.batch_size);
  const int64_t n_seqs = parallel.count_seqs(tc.batch_size);  // this rank's share
  TrainActs acts;
  TrainOptions options;
  options.noise_rng = &noise_rng;
  std::vector<int64_t> ids(tc.batch_size * tc.seq_len);
  const bool quiet = tc.quiet || !rank0;
  const bool tty = isatty(fileno(stderr)) && !quiet;
  log_info(
      "training {} ({:.2f} M parameters) on {} tokens: {} steps of {} x {} x {} tokens, {} "
      "threads",
      arch_name(config.arch), count_parameters(config) / 1e6, tokens.size(), tc.steps,
      tc.grad_accum, tc.batch_size, tc.seq_len, num_threads());
  double last_loss = 0.0;
  for (; state.step < tc.steps; state.step++) {
    Timer timer;  // grads are zero here: made so, then left so by adamw_step or zero_grads
    StepStats total;
    std::map<int64_t, std::vector<int64_t>> loads;
    for (int64_t micro = 0; micro < tc.grad_accum; micro++) {
      sampler.next(tc.batch_size, ids.data());
      const StepStats s = model.forward_backward(ids.data() + first_seq * tc.seq_len, n_seqs,
                                                 tc.seq_len, grads, acts, options);
      total.loss += s.loss / tc.grad_accum;
      total.aux_loss += s.aux_loss / tc.grad_accum;
      total.mtp_loss.resize(s.mtp_loss.size(), 0.0);
      for (size_t k = 0; k < s.mtp_loss.size(); k++)
        total.mtp_loss[k] += s.mtp_loss[k] / tc.grad_accum;
      total.n_dropped += s.n_dropped;
      for (const auto& [layer, load] : s.expert_load) {
        auto& sum = loads[layer];
        sum.resize(load.size(), 0);
        for (size_t e = 0; e < load.size(); e++) sum[e] += load[e];
      }
    }
    parallel.reduce_gradients(config, grads);
    parallel.reduce_stats(total.loss, total.aux_loss, total.mtp_loss, total.n_dropped, loads);
    if (tc.grad_accum > 1) scale_grads(config, grads, 1.0f / tc.grad_accum);
    if (failpoints.nan_loss.contains(state.step + 1)) total.loss = NAN;
    if (failpoints.nan_grad.contains(state.step + 1)) grads.embed_tokens.data[0] = NAN;
    double grad_norm = parallel.grad_norm(config, grads);
    const float lr = learning_rate(schedule, state.step);
    const bool finite = std::isfinite(total.loss + total.aux_loss) && std::isfinite(grad_norm);
    if (finite) {
      const float clip = tc.grad_clip > 0 && grad_norm > tc.grad_clip
                             ? static_cast<float>(tc.grad_clip / grad_norm)
                             : 1.0f;
      adamw_step(config, model.mutable_weights(), grads, adam, lr, tc.adamw, clip);
      if (config.expert_bias_update) update_expert_bias(config, model.mutable_weights(), loads);
      last_loss = total.loss;
      state.nonfinite_in_a_row = 0;
    } else {
      zero_grads(config, grads);
      state.skipped_steps++;
      state.nonfinite_in_a_row++;
      log_info(
          "\nwarning: step {}: non-finite loss {} or gradient norm {}; step skipped ({} in a "
          "row, {} in all)",
          state.step + 1, total.loss, grad_norm, state.nonfinite_in_a_row, state.skipped_steps);
    }
    const double seconds = timer.seconds();
    const double tokens_per_s = tc.grad_accum * tc.batch_size * tc.seq_len / seconds;
    double worst_ratio = 0.0;
    nlohmann::json load_json = nlohmann::json::object(), bias_json = nlohmann::json::object();
    for (const auto& [layer, load] : loads) {
      worst_ratio = std::max(worst_ratio, max_over_mean(load));
      load_json[std::to_string(layer)] = load;
      if (config.has_router_bias()) {
        const Tensor& b = model.mutable_weights().block(layer).moe.e_score_correction_bias;
        bias_json[std::to_string(layer)] = std::vector<float>(b.data, b.data + b.numel());
      }
    }
    nlohmann::json line = {{"step", state.step + 1},
                           {"loss", total.loss},
                           {"aux_loss", total.aux_loss},
                           {"lr", lr},
                           {"grad_norm", grad_norm},
                           {"tokens_per_s", tokens_per_s},
                           {"step_seconds", seconds},
                           {"load_max_over_mean", worst_ratio},
                           {"dropped", total.n_dropped},
                           {"skipped", !finite},
                           {"skipped_steps", state.skipped_steps},
                           {"expert_load", load_json}};
    if (!bias_json.empty()) line["expert_bias"] = bias_json;
    if (!total.mtp_loss.empty()) line["mtp_loss"] = total.mtp_loss;  // L_k, k = 1..D
    if (tc.analytics_every > 0 && (state.step + 1) % tc.analytics_every == 0)
      line["expert_tokens"] = routing_analytics(config, acts, ids);  // (rank 0's share)
    std::string traffic;
    if (parallel.active()) {
      line["parallel"] = parallel.step_traffic();
      traffic = parallel.traffic_summary(line["parallel"], seconds);
    }
    if (rank0) metrics << line.dump() << "\n";
    metrics.flush();
    DSMOE_CHECK(!rank0 || metrics.good(),
                "{}: cannot write step {} (disk full?); the newest checkpoint is {}", metrics_path,
                state.step + 1, latest_or_none(tc.out_dir));
    DSMOE_CHECK(tc.max_nonfinite_steps == 0 || state.nonfinite_in_a_row < tc.max_nonfinite_steps,
                "step {}: {} non-finite steps in a row (loss {}, gradient norm {}): training "
                "stopped; the newest checkpoint is {}. Lower --lr or --grad-clip, or raise "
                "--max-nonfinite-steps",
                state.step + 1, state.nonfinite_in_a_row, total.loss, grad_norm,
                latest_or_none(tc.out_dir));
    if (!quiet && ((state.step + 1) % tc.log_every == 0 || state.step + 1 == tc.steps))
      print_progress(state.step, tc.steps, total, tokens_per_s, worst_ratio, tty, traffic);
    const bool last = state.step + 1 == tc.steps;
    if (last || (tc.save_every > 0 && (state.step + 1) % tc.save_every == 0)) {
      TrainerState saved = state;
      saved.step = state.step + 1;
      saved.data_rng = sampler.rng().snapshot();
      saved.noise_rng = noise_rng.snapshot();
      parallel.gather_experts(config, model.mutable_weights(), adam);  // to rank 0
      if (rank0) {
        try {
          save_checkpoint(tc.out_dir, config_json, config, model.mutable_weights(), adam, saved);
        } catch (const std::exception& e) {  // dsmoe::Error, or std::filesystem's
          fail(fmt::format(
              "step {}: checkpoint not saved: {}; the newest checkpoint is {} (resume from it "
              "with --resume)",
              saved.step, e.what(), latest_or_none(tc.out_dir)));
        }
      }
      parallel.comm().barrier();
    }
  }
  if (tty) std::fprintf(stderr, "\n");
  return last_loss;
}

}  // namespace dsmoe
