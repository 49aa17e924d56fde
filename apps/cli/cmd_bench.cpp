// cmd_bench.cpp: dsmoe bench --model DIR [--prompt P] [--decode N] [--train] ... [--json]:
// prefill / decode / training tokens/s, peak RSS, and the machine's roofline measured in the
// same run (see runtime/bench.h for what each number means). Under mpirun the experts are
// spread over the ranks and the all-to-all traffic is reported (apps/cli/bench_parallel.h).
#include <fmt/format.h>
#include <malloc.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <utility>
#include <vector>

#include "apps/cli/bench_parallel.h"
#include "apps/cli/commands.h"
#include "apps/cli/common.h"
#include "apps/cli/parallel.h"
#include "kernels/cpu/ops.h"
#include "kernels/cpu/peak_probe.h"
#include "model/transformer.h"
#include "runtime/bench.h"
#include "tensor/random.h"
#include "train/optimizer.h"
#include "util/check.h"
#include "util/log.h"
#include "util/profile.h"
#include "util/threads.h"

namespace dsmoe::cli {
namespace {

struct BenchArgs {
  std::string model_dir;
  int64_t prompt = 512, decode = 128;
  bool train = false;
  int64_t batch = 8, seq = 256;
  int threads = 0;
  std::string weights = kWeightsAuto;
  int reps = 3;
  int train_warmup = 3;
  bool json = false;
  int64_t bandwidth_mib = 1024;
  std::string peak_size = "full";
  std::string precision = "f32";  // of the training step
  bool no_roofline = false;
  bool bandwidth_search = false;
  std::vector<int64_t> concurrent;           // batch sizes of batched decode (empty: none)
  std::string concurrent_kernels = "exact";  // Model::set_exact_batches
  std::string speculative;                   // "" or "mtp"
  int64_t draft_tokens = 1;                  // with --speculative
  bool profile = false;                      // time decode's kinds of work (util/profile.h)
};

nlohmann::json rep_json(const RepTimes& t, double tokens) {
  return {{"seconds", t.seconds},
          {"median_tokens_per_s", tokens / t.median()},
          {"best_tokens_per_s", tokens / t.best()}};
}

// --profile: where a decoded token's time goes, per kind of work (util/profile.h), over all the
// decode repetitions; "outside_layers" is the rest of the token (embedding, final norm, lm_head,
// argmax). The nested kinds (act_quant, parallel_wait) are parts of the others.
nlohmann::json profile_json(const ProfileTotals& totals, const RepTimes& decode, int64_t tokens) {
  double decode_seconds = 0;
  for (double s : decode.seconds) decode_seconds += s;
  const double n_tokens = static_cast<double>(tokens) * static_cast<double>(decode.seconds.size());
  nlohmann::json kinds = nlohmann::json::object();
  double layers_seconds = 0;
  auto add = [&](const std::string& name, double seconds, double calls) {
    kinds[name] = {{"ms_per_token", 1e3 * seconds / n_tokens},
                   {"share", seconds / decode_seconds},
                   {"calls_per_token", calls / n_tokens}};
  };
  for (int i = 0; i < kProfileOps; i++) {
    const double seconds = static_cast<double>(totals.ns[i]) * 1e-9;
    if (i < kProfileTopLevelOps) layers_seconds += seconds;
    add(kProfileOpNames[i], seconds, static_cast<double>(totals.calls[i]));
  }
  add("outside_layers", decode_seconds - layers_seconds, n_tokens);
  constexpr int kEmptyRegions = 2000;
  return {{"ms_per_token", 1e3 * decode_seconds / n_tokens},
          {"kinds", kinds},
          {"empty_parallel_region_us", 1e6 * empty_parallel_region_seconds(kEmptyRegions)}};
}

void print_profile(const nlohmann::json& p) {
  fmt::print("\ndecode profile: {:.2f} ms per token; an empty parallel region {:.1f} us\n",
             p.at("ms_per_token").get<double>(), p.at("empty_parallel_region_us").get<double>());
  fmt::print("{:<16} {:>12} {:>8} {:>14}\n", "kind", "ms/token", "share", "calls/token");
  for (const auto& kind : p.at("kinds").items()) {
    const nlohmann::json& k = kind.value();
    fmt::print("{:<16} {:>12.3f} {:>7.1f}% {:>14.1f}\n", kind.key(),
               k.at("ms_per_token").get<double>(), 100 * k.at("share").get<double>(),
               k.at("calls_per_token").get<double>());
  }
}

// Bytes of one routed expert (its three matrices) in the model's weight format.
int64_t routed_expert_bytes(const ModelConfig& c, const ModelWeights& w) {
  auto bytes = [](const Tensor& t) {
    return t.quant != nullptr ? static_cast<int64_t>(t.quant->size_bytes())
                              : t.numel() * static_cast<int64_t>(sizeof(float));
  };
  for (int64_t L = 0; L < c.num_hidden_layers; L++)
    if (c.is_moe_layer(L)) {
      const MlpWeights& e = w.layers[L].moe.experts[0];
      return bytes(e.gate_proj) + bytes(e.up_proj) + bytes(e.down_proj);
    }
  return 0;
}

// --concurrent N[,N2..]: N sequences decoded together (forward_cached_batch), against the
// one-sequence decode of the same run (single_decode_tps). The top-level keys are those of the
// last N (decode_tokens_per_s becomes its aggregate); concurrent_runs holds every N's.
void add_concurrent(const BenchArgs& a, const Model& model, int64_t active_bytes,
                    double single_decode_tps, nlohmann::json& out) {
  const ModelConfig& c = model.config();
  const int64_t expert_bytes = routed_expert_bytes(c, model.weights());
  out["single_sequence_decode_tokens_per_s"] = single_decode_tps;
  out["routed_experts_per_layer_step_single"] = c.num_experts_per_tok;
  out["routed_expert_bytes"] = expert_bytes;
  for (int64_t n : a.concurrent) {
    const ConcurrentTimes t = measure_concurrent(model, n, a.prompt, a.decode, a.reps);
    const double tokens = static_cast<double>(n * a.decode);
    const double aggregate = tokens / t.decode.median();
    // The routed experts a step reads grow with N: the union of the rows' experts per MoE layer.
    const double step_bytes =
        batched_step_weight_bytes(c, active_bytes, expert_bytes, t.routed_experts_per_step);
    nlohmann::json run = {
        {"concurrent", n},
        {"concurrent_decode", rep_json(t.decode, tokens)},
        {"concurrent_prompt_lengths", t.prompt_lengths},
        {"decode_tokens_per_s", aggregate},
        {"decode_tokens_per_s_best", tokens / t.decode.best()},
        {"per_sequence_decode_tokens_per_s", aggregate / static_cast<double>(n)},
        {"concurrent_speedup", aggregate / single_decode_tps},
        {"routed_experts_per_layer_step", t.routed_experts_per_step},
        {"concurrent_step_weight_bytes", step_bytes},
        {"concurrent_speedup_bound",
         static_cast<double>(n) * static_cast<double>(active_bytes) / step_bytes}};
    out["concurrent_runs"].push_back(run);
    for (const auto& [key, value] : run.items()) out[key] = value;
  }
}

// One training step as `dsmoe train` takes it: forward_backward on a B x T batch of random ids,
// adamw_step (which leaves the gradients zero for the next step); `warmup` untimed steps, then R
// timed steps. The first steps are slower than the rest: the heap grows to its working size over
// them (every fresh page is zeroed by the kernel on first touch), ~15% on train-s for the first
// timed step after a single warm-up.
RepTimes measure_train(Model& model, int64_t batch, int64_t seq, int reps, int warmup,
                       cpu::MatmulPrecision precision, BenchRanks& ranks, PhaseTraffic& traffic) {
  const ModelConfig& c = model.config();
  make_weights_owned(c, model.mutable_weights());  // mmap'd checkpoints are read-only
  const int64_t n_mtp = static_cast<int64_t>(model.weights().mtp.size());
  ModelWeights grads = zeros_like_weights(c, n_mtp);
  AdamWState adam = make_adamw_state(c, n_mtp);
  ranks.shard_training(c, grads, adam);             // under mpirun: this rank's experts only
  const SeqRange share = ranks.train_share(batch);  // (all of it in one process)
  TrainActs acts;
  Rng rng(99), noise_rng(100);
  TrainOptions options;
  options.noise_rng = &noise_rng;
  std::vector<int64_t> ids(batch * seq);  // (B, T): every rank draws the whole batch
  auto step = [&] {
    const cpu::MatmulPrecisionScope scope(precision);
    for (int64_t& id : ids) id = static_cast<int64_t>(rng.next_u64() % c.vocab_size);
    model.forward_backward(ids.data() + share.first * seq, share.count(), seq, grads, acts,
                           options);
    ranks.reduce_gradients(c, grads);
    adamw_step(c, model.mutable_weights(), grads, adam, 1e-4f, AdamWConfig{});
  };
  time_reps(step, 0, warmup);
  ranks.start();
  const RepTimes times = time_reps(step, reps);
  ranks.stop(traffic, share.count() * seq * reps, total_seconds(times));
  return times;
}

// The read-bandwidth probe's matrix size: --bandwidth-mib, at most a quarter of MemAvailable.
int64_t bandwidth_probe_bytes(const BenchArgs& a) {
  const int64_t cap = available_memory_bytes() / 4;
  const int64_t bytes = a.bandwidth_mib << 20;
  if (cap > 0 && bytes > cap) {
    log_info("bandwidth probe capped to {} MiB by free memory", cap >> 20);
    return cap;
  }
  return bytes;
}

// Each way the bandwidth probe read its buffer, with its best bytes/s (the fastest is the limit).
nlohmann::json ways_json(const BandwidthProbe& probe) {
  nlohmann::json ways = nlohmann::json::array();
  for (const BandwidthProbe::Way& way : probe.ways())
    ways.push_back({{"way", way.name}, {"bytes_per_s", way.best_bytes_per_s}});
  return ways;
}

// --bandwidth-search: every pattern of cpu::search_read_patterns() on a buffer with hugepages
// and on one with 4 KiB pages, best of `reps` each; a markdown table on stderr, JSON returned.
nlohmann::json bandwidth_search(int64_t bytes, int reps) {
  const std::vector<cpu::ReadPattern> patterns = cpu::search_read_patterns();
  nlohmann::json rows = nlohmann::json::array();
  std::vector<std::vector<double>> measured;
  for (bool hugepages : {true, false})
    measured.push_back(BandwidthProbe(bytes, hugepages).measure_patterns(patterns, reps));
  fmt::print(stderr, "| read pattern | GB/s, hugepages | GB/s, 4 KiB pages |\n|---|---|---|\n");
  for (size_t i = 0; i < patterns.size(); i++) {
    fmt::print(stderr, "| {} | {:.1f} | {:.1f} |\n", cpu::describe(patterns[i]),
               measured[0][i] / 1e9, measured[1][i] / 1e9);
    rows.push_back({{"pattern", cpu::describe(patterns[i])},
                    {"hugepages_bytes_per_s", measured[0][i]},
                    {"small_pages_bytes_per_s", measured[1][i]}});
  }
  return rows;
}

// The median of values (mean of the middle two for an even count).
double median_of(std::vector<double> values) { return RepTimes{std::move(values)}.median(); }

// Decode against the bandwidth of its own repetition: `probed` holds the read bandwidth before
// and after each one (bytes/s); their mean over active bytes per token is its roofline.
void add_decode_roofline(const RepTimes& decode, int64_t n_decode, int64_t active_bytes,
                         const std::vector<double>& probed, nlohmann::json& out) {
  std::vector<double> bandwidth, fraction;  // per decode repetition
  for (size_t rep = 0; rep < decode.seconds.size(); rep++) {
    bandwidth.push_back(0.5 * (probed[2 * rep] + probed[2 * rep + 1]));
    const double tokens_per_s = static_cast<double>(n_decode) / decode.seconds[rep];
    fraction.push_back(tokens_per_s * static_cast<double>(active_bytes) / bandwidth.back());
  }
  out["decode"]["read_bandwidth_bytes_per_s"] = bandwidth;
  out["decode"]["fraction_of_roofline"] = fraction;
  out["read_bandwidth_bytes_per_s"] = median_of(bandwidth);
  out["decode_fraction_of_roofline"] = median_of(fraction);
  out["bandwidth_probe_when"] = "before and after each decode repetition";
}

// --speculative mtp: greedy decode with MTP drafts against plain decode, in the same run;
// decode_tokens_per_s becomes the speculative one.
void add_speculative(const BenchArgs& a, const Model& model, nlohmann::json& out) {
  const SpeculativeTimes t = measure_speculative(model, a.prompt, a.decode, a.draft_tokens, a.reps);
  const double tokens = static_cast<double>(a.decode);
  out["speculative"] = a.speculative;
  out["speculative_draft_tokens"] = a.draft_tokens;
  out["speculative_decode"] = rep_json(t.decode, tokens);
  out["speculative_plain_decode"] = rep_json(t.plain_decode, tokens);
  out["speculative_acceptance_rate"] = t.acceptance_rate;
  out["speculative_tokens_per_forward"] = t.tokens_per_forward;
  out["speculative_greedy_identical"] = t.identical;
  out["speculative_draft_seconds_per_step"] = t.draft_seconds_per_step;
  out["speculative_verify_seconds_per_step"] = t.verify_seconds_per_step;
  out["speculative_other_seconds_per_step"] = t.other_seconds_per_step;
  out["speculative_plain_seconds_per_token"] = t.plain_seconds_per_token;
  out["decode_tokens_per_s"] = tokens / t.decode.median();
  out["decode_tokens_per_s_best"] = tokens / t.decode.best();
  out["plain_decode_tokens_per_s"] = tokens / t.plain_decode.median();
  out["speculative_speedup"] = t.plain_decode.median() / t.decode.median();
}

// Under mpirun: the roofline probes measure one process on the machine the ranks share, so they
// are off; --concurrent and --speculative run one process only.
void check_parallel_args(BenchArgs& a, int n_ranks) {
  DSMOE_CHECK(a.concurrent.empty() && a.speculative.empty(),
              "--concurrent and --speculative run in one process, not under mpirun ({} ranks)",
              n_ranks);
  if (!a.no_roofline) log_info("{} ranks: no roofline probes (they measure one process)", n_ranks);
  a.no_roofline = true;
}

int run_bench(BenchArgs a) {
  const std::optional<WeightFormat> format = resolve_weight_format(a.model_dir, a.weights);
  a.weights = weight_format_name(*format);  // "auto" resolved, for the JSON and the table
  DSMOE_CHECK(!a.train || *format == WeightFormat::kF32,
              "--train needs --weights f32 (quantized models cannot be trained), got {}",
              a.weights);
  DSMOE_CHECK(a.peak_size == "full" || a.peak_size == "small",
              "--peak-size must be full or small, got '{}'", a.peak_size);
  BenchRanks ranks(world_comm());
  if (ranks.active()) check_parallel_args(a, ranks.size());
  set_num_threads(a.threads);
  if (a.json) log_level() = LogLevel::kQuiet;
  const MachineInfo machine = machine_info();
  nlohmann::json out;
  const bool small = a.peak_size == "small";
  const int probe_reps = small ? 2 : 5;

  double decode_tps = 0, prefill_tps = 0, train_tps = 0;
  double prefill_flops = 0, train_flops = 0;
  int64_t active_bytes = 0, model_peak_rss = 0;
  // Decode's bandwidth, probed right before and right after each repetition (its mean is that
  // repetition's bandwidth): the probe at the end of the run can read +-20% off on this VM.
  std::unique_ptr<BandwidthProbe> probe;
  std::vector<double> probed;  // bytes/s, two per decode repetition
  bool rss_reset = true;
  ModelConfig c;
  {
    Model model = ranks.load(a.model_dir, a.weights);  // under mpirun, this rank's experts
    c = model.config();
    const int64_t active_params = active_parameters_per_token(c);
    active_bytes = active_weight_bytes_per_token(c, model.mutable_weights());
    out["config"] = {{"model_dir", a.model_dir},
                     {"model_type", c.model_type},
                     {"layers", c.num_hidden_layers},
                     {"hidden_size", c.hidden_size},
                     {"n_routed_experts", c.n_routed_experts},
                     {"num_experts_per_tok", c.num_experts_per_tok},
                     {"vocab_size", c.vocab_size},
                     {"total_params", count_parameters(c)},
                     {"active_params_per_token", active_params}};
    out["active_bytes_per_token"] = active_bytes;
    out["weight_bytes"] = weight_bytes(c, model.mutable_weights());

    InferenceHooks hooks;  // the decode probe's matrix is made after the warm-up
    if (!a.no_roofline && a.decode > 0) {
      hooks.after_warmup = [&] {
        model_peak_rss = peak_rss_bytes();  // the model's peak, before the matrix adds to it
        probe = std::make_unique<BandwidthProbe>(bandwidth_probe_bytes(a));
      };
      hooks.beside_decode = [&] { probed.push_back(probe->measure(probe_reps)); };
    }
    InferenceTraffic inference_traffic;
    if (ranks.active()) add_traffic_hooks(ranks, a.prompt, a.decode, hooks, inference_traffic);
    if (a.profile && a.decode > 0) {  // on for the decodes only, the probes outside
      bool in_decode = false;
      hooks.beside_decode = [inner = hooks.beside_decode, in_decode]() mutable {
        if (in_decode) profile_enable(false);
        if (inner) inner();
        if (!in_decode) profile_enable(true);
        in_decode = !in_decode;
      };
      profile_reset();
    }
    constexpr uint64_t kPromptSeed = 1234;  // each rank's own prompt under mpirun
    const InferenceTimes inf =
        measure_inference(model, a.prompt, a.decode, a.reps, hooks, kPromptSeed + ranks.rank());
    if (probe != nullptr) {
      out["bandwidth_probe_bytes"] = probe->bytes();
      out["read_bandwidth_ways"] = ways_json(*probe);
      probe.reset();
      malloc_trim(0);  // main() keeps freed memory in the heap; give the probe's pages back
      rss_reset = reset_peak_rss();
    }
    out["prefill"] = rep_json(inf.prefill, static_cast<double>(a.prompt));
    prefill_tps = a.prompt / inf.prefill.median();
    out["prefill_tokens_per_s"] = prefill_tps;
    out["prefill_tokens_per_s_best"] = a.prompt / inf.prefill.best();
    prefill_flops = forward_flops_per_token(c, active_params, a.prompt);
    out["prefill_flops_per_token"] = prefill_flops;
    if (a.decode > 0) {
      out["decode"] = rep_json(inf.decode, static_cast<double>(a.decode));
      decode_tps = a.decode / inf.decode.median();
      out["decode_tokens_per_s"] = decode_tps;
      out["decode_tokens_per_s_best"] = a.decode / inf.decode.best();
      if (a.profile) out["decode_profile"] = profile_json(profile_totals(), inf.decode, a.decode);
    }
    if (!probed.empty()) add_decode_roofline(inf.decode, a.decode, active_bytes, probed, out);
    if (!a.speculative.empty()) {
      DSMOE_CHECK(a.concurrent.empty(), "--speculative and --concurrent are separate runs");
      DSMOE_CHECK(a.decode > 0, "--speculative needs --decode >= 1");
      add_speculative(a, model, out);
    }
    if (!a.concurrent.empty()) {
      DSMOE_CHECK(a.decode > 0, "--concurrent needs --decode >= 1");
      model.set_exact_batches(a.concurrent_kernels == "exact");
      out["concurrent_kernels"] = a.concurrent_kernels;
      add_concurrent(a, model, active_bytes, decode_tps, out);
    }
    PhaseTraffic train_traffic;
    if (a.train) {
      const RepTimes t = measure_train(
          model, a.batch, a.seq, a.reps, a.train_warmup,
          a.precision == "bf16" ? cpu::MatmulPrecision::kBF16 : cpu::MatmulPrecision::kF32, ranks,
          train_traffic);
      const double tokens = static_cast<double>(a.batch * a.seq);
      out["train"] = rep_json(t, tokens);
      train_tps = tokens / t.median();
      out["train_tokens_per_s"] = train_tps;
      out["train_tokens_per_s_best"] = tokens / t.best();
      train_flops = train_flops_per_token(c, active_params, a.seq);
      out["train_flops_per_token"] = train_flops;
    }
    // Peak RSS of the model work, without the probes' matrices (where the kernel lets the peak
    // be reset after the decode probe's; otherwise it is counted, and said so).
    out["peak_rss_bytes"] = std::max(model_peak_rss, peak_rss_bytes());
    if (!rss_reset) out["peak_rss_includes_bandwidth_probe"] = true;
    out["ranks"] = ranks.size();
    if (ranks.active()) {
      out["parallel"] =
          parallel_json(ranks, c, static_cast<int64_t>(model.weights().mtp.size()),
                        inference_traffic, inf, a.train ? &train_traffic : nullptr, decode_tps);
      out["weight_bytes_of"] = "rank 0's experts";  // active and total weight bytes above
    }
  }  // the model is freed here: the probes get the memory

  if (!a.no_roofline) {
    log_info("roofline probes ({} peaks)...", a.peak_size);
    if (probed.empty()) {  // no decode measured: the bandwidth of the end of the run
      BandwidthProbe end_probe(bandwidth_probe_bytes(a));
      out["read_bandwidth_bytes_per_s"] = end_probe.measure(probe_reps);
      out["bandwidth_probe_bytes"] = end_probe.bytes();
      out["read_bandwidth_ways"] = ways_json(end_probe);
      out["bandwidth_probe_when"] = "after the model work";
    }
    if (a.bandwidth_search)
      out["bandwidth_search"] = bandwidth_search(bandwidth_probe_bytes(a), probe_reps);
    const double bandwidth = out["read_bandwidth_bytes_per_s"].get<double>();
    const int64_t n = small ? 256 : 2048, m = small ? 32 : 256;
    const double fp32 = probe_fp32_sgemm(n, probe_reps);
    const double bf16 = probe_quant_peak(WeightFormat::kBF16, m, n, n, probe_reps);
    const double int8 = probe_quant_peak(WeightFormat::kQ8_0, m, n, n, probe_reps);
    out["fp32_peak_flops_per_s"] = fp32;
    out["fp32_peak_method"] = fmt::format("cpu::linear_forward (OpenBLAS sgemm) {}^3", n);
    out["bf16_peak_flops_per_s"] = bf16;
    out["bf16_peak_method"] = fmt::format("quant_linear_forward bf16 M={} N=K={}", m, n);
    out["int8_peak_ops_per_s"] = int8;
    out["int8_peak_method"] = fmt::format("quant_linear_forward q8_0 M={} N=K={}", m, n);
    // The instructions' own peaks (register-only loops): what the GEMMs above are measured by.
    const int64_t loop_iterations = small ? (int64_t{1} << 16) : (int64_t{1} << 23);
    out["fp32_fma_peak_flops_per_s"] = cpu::fp32_fma_peak(loop_iterations);
    out["bf16_dot_peak_flops_per_s"] = cpu::bf16_dot_peak(loop_iterations);
    out["int8_dot_peak_ops_per_s"] = cpu::int8_dot_peak(loop_iterations);
    out["decode_roofline_tokens_per_s"] = bandwidth / static_cast<double>(active_bytes);
    // The peak of the units the prefill of this weight format runs on.
    // FP8 prefills through bf16 panels (or float32 rows): its peak is bf16's.
    const bool bf16_peak = *format == WeightFormat::kBF16 || *format == WeightFormat::kFP8;
    const double peak = *format == WeightFormat::kF32 ? fp32 : bf16_peak ? bf16 : int8;
    out["prefill_peak_kind"] = *format == WeightFormat::kF32 ? "fp32" : bf16_peak ? "bf16" : "int8";
    out["prefill_fraction_of_peak"] = prefill_tps * prefill_flops / peak;
    if (a.train)
      out["train_fraction_of_peak"] =
          train_tps * train_flops / (a.precision == "bf16" ? bf16 : fp32);
  }
  out["weights"] = a.weights;
  out["threads"] = num_threads();
  out["prompt"] = a.prompt;
  out["decode_tokens"] = a.decode;
  out["reps"] = a.reps;
  if (a.train) {
    out["train_warmup"] = a.train_warmup;
    out["batch"] = a.batch;
    out["seq"] = a.seq;
    out["train_precision"] = a.precision;
  }
  out["machine"] = {
      {"cpu", machine.cpu}, {"cores", machine.cores}, {"hwy_target", machine.hwy_target}};
  out["date"] = machine.date;
  // How idle threads wait (util/threads.h): spinning threads matter on busy cores.
  const char* wait_policy = std::getenv("OMP_WAIT_POLICY");
  const char* spin_count = std::getenv("GOMP_SPINCOUNT");
  out["omp_wait_policy"] = wait_policy != nullptr ? wait_policy : "";
  out["gomp_spincount"] = spin_count != nullptr ? spin_count : "";
  // OpenBLAS's kernels (the float32 products) follow the CPU unless this forces a core type.
  const char* blas_core = std::getenv("OPENBLAS_CORETYPE");
  out["openblas_coretype"] = blas_core != nullptr ? blas_core : "";

  if (ranks.rank() != 0) return 0;  // rank 0 prints
  if (a.json) {
    std::printf("%s\n", out.dump().c_str());
    return 0;
  }
  fmt::print("dsmoe bench  {}  ({}, {} layers, {} routed experts top-{}, hidden {})\n", a.model_dir,
             c.model_type, c.num_hidden_layers, c.n_routed_experts, c.num_experts_per_tok,
             c.hidden_size);
  fmt::print("weights {}, {} threads, {} reps; machine: {} ({} cores, Highway {}); {}\n", a.weights,
             num_threads(), a.reps, machine.cpu, machine.cores, machine.hwy_target, machine.date);
  fmt::print("active weight bytes per token {:.3f} MB, peak RSS {:.1f} MiB\n\n", active_bytes / 1e6,
             out["peak_rss_bytes"].get<double>() / (1 << 20));
  const bool roof = !a.no_roofline;
  auto frac = [&](const char* key) {
    return roof && out.contains(key) ? fmt::format("{:.1f}%", 100 * out[key].get<double>())
                                     : std::string("-");
  };
  fmt::print("{:<22} {:>12} {:>12} {:>16}\n", "measure", "median t/s", "best t/s", "of roofline");
  fmt::print("{:<22} {:>12.2f} {:>12.2f} {:>16}\n", fmt::format("prefill pp{}", a.prompt),
             prefill_tps, out["prefill_tokens_per_s_best"].get<double>(),
             frac("prefill_fraction_of_peak"));
  if (a.decode > 0)
    fmt::print("{:<22} {:>12.2f} {:>12.2f} {:>16}\n", fmt::format("decode tg{}", a.decode),
               decode_tps, out["decode"]["best_tokens_per_s"].get<double>(),
               frac("decode_fraction_of_roofline"));
  if (!a.speculative.empty())
    fmt::print(
        "{:<22} {:>12.2f} {:>12.2f} {:>16}\n  x{:.2f} plain decode ({:.2f} t/s in the same run); "
        "acceptance {:.1f}%, {:.2f} tokens per main forward; greedy output {}\n",
        fmt::format("decode mtp K={} tg{}", a.draft_tokens, a.decode),
        out["decode_tokens_per_s"].get<double>(), out["decode_tokens_per_s_best"].get<double>(),
        "-", out["speculative_speedup"].get<double>(),
        out["plain_decode_tokens_per_s"].get<double>(),
        100 * out["speculative_acceptance_rate"].get<double>(),
        out["speculative_tokens_per_forward"].get<double>(),
        out["speculative_greedy_identical"].get<bool>() ? "identical" : "DIFFERENT");
  for (const nlohmann::json& run : out.value("concurrent_runs", nlohmann::json::array()))
    fmt::print(
        "{:<22} {:>12.2f} {:>12.2f} {:>16}\n  x{:.2f} one sequence; {:.2f} tokens/s per sequence; "
        "routed experts per layer and step {:.1f} (one sequence: {}), weight-read bound x{:.2f}\n",
        fmt::format("decode x{} tg{}", run["concurrent"].get<int64_t>(), a.decode),
        run["decode_tokens_per_s"].get<double>(), run["decode_tokens_per_s_best"].get<double>(),
        "-", run["concurrent_speedup"].get<double>(),
        run["per_sequence_decode_tokens_per_s"].get<double>(),
        run["routed_experts_per_layer_step"].get<double>(), c.num_experts_per_tok,
        run["concurrent_speedup_bound"].get<double>());
  if (roof) {
    fmt::print(
        "\nroofline: read {:.1f} GB/s ({}) -> decode <= {:.1f} tokens/s; fp32 {:.1f} GFLOP/s "
        "(sgemm), bf16 {:.1f} GFLOP/s, int8 {:.1f} GOP/s (GEMMs); instruction peaks: fp32 FMA "
        "{:.1f}, bf16 dot {:.1f}, int8 dot {:.1f}\n",
        out["read_bandwidth_bytes_per_s"].get<double>() / 1e9,
        out["bandwidth_probe_when"].get<std::string>(),
        out["decode_roofline_tokens_per_s"].get<double>(),
        out["fp32_peak_flops_per_s"].get<double>() / 1e9,
        out["bf16_peak_flops_per_s"].get<double>() / 1e9,
        out["int8_peak_ops_per_s"].get<double>() / 1e9,
        out["fp32_fma_peak_flops_per_s"].get<double>() / 1e9,
        out["bf16_dot_peak_flops_per_s"].get<double>() / 1e9,
        out["int8_dot_peak_ops_per_s"].get<double>() / 1e9);
    fmt::print(
        "prefill vs the {} peak at {:.4g} GFLOP/token; decode vs bandwidth / active "
        "bytes\n",
        out["prefill_peak_kind"].get<std::string>(), prefill_flops / 1e9);
  }
  if (out.contains("decode_profile")) print_profile(out["decode_profile"]);
  if (out.contains("parallel")) print_parallel_summary(out["parallel"]);
  return 0;
}

}  // namespace

Command add_bench(CLI::App& app) {
  auto args = std::make_shared<BenchArgs>();
  app.add_option("--model", args->model_dir, "checkpoint directory")->required();
  app.add_option("--prompt", args->prompt, "prefill prompt length P (default 512)")
      ->check(CLI::PositiveNumber);
  app.add_option("--decode", args->decode, "tokens decoded after the prompt (default 128)")
      ->check(CLI::NonNegativeNumber);
  app.add_flag("--train", args->train, "also time training steps (f32 weights only)");
  app.add_option("--batch", args->batch, "training batch B (default 8)")
      ->check(CLI::PositiveNumber);
  app.add_option("--seq", args->seq, "training sequence length T (default 256)")
      ->check(CLI::Range(int64_t{2}, int64_t{1} << 20));
  app.add_option("--threads", args->threads, "threads (default: all cores)");
  app.add_option("--weights", args->weights,
                 "weight format: auto (default: fp8 for an FP8 checkpoint, else f32), f32, bf16, "
                 "q8_0, q4_0, fp8");
  app.add_option("--reps", args->reps, "repetitions; median and best reported (default 3)")
      ->check(CLI::PositiveNumber);
  app.add_option("--train-warmup", args->train_warmup,
                 "untimed training steps before the timed ones (default 3)")
      ->check(CLI::NonNegativeNumber);
  app.add_option("--precision", args->precision,
                 "training step: f32 (default) or bf16 mixed precision (bf16 products, float32 "
                 "weights and AdamW)")
      ->check(CLI::IsMember({"f32", "bf16"}));
  app.add_flag("--json", args->json, "print one JSON object instead of the table");
  app.add_option("--bandwidth-mib", args->bandwidth_mib,
                 "bf16 matrix size of the read-bandwidth probe, MiB (default 1024; capped at a "
                 "quarter of MemAvailable)")
      ->check(CLI::PositiveNumber);
  app.add_option("--peak-size", args->peak_size,
                 "peak probes: full (sgemm 2048^3, M=256 N=K=2048) or small (256, M=32)");
  app.add_flag("--no-roofline", args->no_roofline, "skip the bandwidth and peak probes");
  app.add_flag("--profile", args->profile,
               "time decode per kind of work (attention, router, experts, ...)");
  app.add_flag("--bandwidth-search", args->bandwidth_search,
               "also read the probe's buffer in every access pattern (streams per thread, "
               "prefetch distance and kind, hugepages or 4 KiB pages): a table on stderr");
  app.add_option("--concurrent", args->concurrent,
                 "also decode N sequences together (batched decode), N or a list N1,N2,..; "
                 "decode_tokens_per_s is then the last N's aggregate")
      ->delimiter(',')
      ->check(CLI::PositiveNumber);
  app.add_option("--concurrent-kernels", args->concurrent_kernels,
                 "exact (default): per-row kernels, each sequence's bits as alone; gemm: the "
                 "GEMMs at the batch's row count (Model::set_exact_batches)")
      ->check(CLI::IsMember({"exact", "gemm"}));
  app.add_option("--speculative", args->speculative,
                 "mtp: also decode greedily with MTP self-speculative decoding, against plain "
                 "decode in the same run; decode_tokens_per_s is then the speculative one")
      ->check(CLI::IsMember({"mtp"}));
  app.add_option("--draft-tokens", args->draft_tokens,
                 "tokens drafted per main-model forward with --speculative (default 1)")
      ->check(CLI::PositiveNumber);
  return [args] {  // under mpirun: on every rank, the experts spread over them
    if (world_comm().size() == 1) return run_bench(*args);
    return run_on_ranks([args] { return run_bench(*args); });
  };
}

}  // namespace dsmoe::cli
