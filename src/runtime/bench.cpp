// bench.cpp: the measurements of `dsmoe bench` (see bench.h).
#include "runtime/bench.h"

#include <hwy/targets.h>
#include <omp.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <ctime>
#include <fstream>
#include <memory>
#include <sstream>

#include "kernels/cpu/ops.h"
#include "kernels/cpu/quant_ops.h"
#include "runtime/generate.h"
#include "runtime/kv_cache.h"
#include "runtime/speculative.h"
#include "tensor/random.h"
#include "util/check.h"
#include "util/log.h"

namespace dsmoe {

double RepTimes::median() const {
  DSMOE_ASSERT(!seconds.empty());
  std::vector<double> sorted = seconds;
  std::sort(sorted.begin(), sorted.end());
  const size_t n = sorted.size();
  return n % 2 ? sorted[n / 2] : 0.5 * (sorted[n / 2 - 1] + sorted[n / 2]);
}

double RepTimes::best() const {
  DSMOE_ASSERT(!seconds.empty());
  return *std::min_element(seconds.begin(), seconds.end());
}

RepTimes time_reps(const std::function<void()>& fn, int reps, int warmup) {
  for (int i = 0; i < warmup; i++) fn();
  RepTimes times;
  for (int i = 0; i < reps; i++) {
    Timer timer;
    fn();
    times.seconds.push_back(timer.seconds());
  }
  return times;
}

namespace {

int64_t argmax(const Tensor& logits) {
  const int64_t n = logits.numel();
  return std::max_element(logits.data, logits.data + n) - logits.data;
}

}  // namespace

InferenceTimes measure_inference(const Model& model, int64_t n_prompt, int64_t n_decode, int reps,
                                 const InferenceHooks& hooks, uint64_t seed) {
  const ModelConfig& c = model.config();
  DSMOE_CHECK(n_prompt >= 1, "--prompt must be at least 1, got {}", n_prompt);
  DSMOE_CHECK(n_prompt + n_decode <= c.max_position_embeddings,
              "--prompt + --decode = {} exceeds the model's max_position_embeddings {}",
              n_prompt + n_decode, c.max_position_embeddings);
  Rng rng(seed);
  std::vector<int64_t> prompt(n_prompt);  // (P)
  for (int64_t& id : prompt) id = static_cast<int64_t>(rng.next_u64() % c.vocab_size);
  KvCache cache(c, n_prompt + n_decode);
  auto warm_up = [&] {  // the prompt and one decode step, untimed
    cache.clear();
    const Tensor logits = model.forward_cached(prompt.data(), n_prompt, cache.view());
    cache.advance(n_prompt);
    const int64_t next = argmax(logits);
    if (n_decode > 0) model.forward_cached(&next, 1, cache.view());
  };
  warm_up();
  if (hooks.after_warmup) {
    hooks.after_warmup();
    warm_up();  // the heap grows past what after_warmup allocated: first touches, untimed
  }
  InferenceTimes times;
  for (int rep = 0; rep < reps; rep++) {
    cache.clear();
    if (hooks.before_prefill) hooks.before_prefill();
    Timer prefill_timer;
    Tensor logits = model.forward_cached(prompt.data(), n_prompt, cache.view());
    cache.advance(n_prompt);
    times.prefill.seconds.push_back(prefill_timer.seconds());
    if (hooks.beside_decode) hooks.beside_decode();
    Timer decode_timer;
    for (int64_t i = 0; i < n_decode; i++) {
      const int64_t next = argmax(logits);
      logits = model.forward_cached(&next, 1, cache.view());
      cache.advance(1);
    }
    times.decode.seconds.push_back(decode_timer.seconds());
    if (hooks.beside_decode) hooks.beside_decode();
  }
  return times;
}

namespace {

// Distinct experts among the routing's choices.
int64_t distinct_experts(const Routing& routing, int64_t n_experts) {
  std::vector<uint8_t> seen(n_experts, 0);
  int64_t n = 0;
  for (int32_t e : routing.expert) n += seen[e] == 0 ? (seen[e] = 1) : 0;
  return n;
}

}  // namespace

ConcurrentTimes measure_concurrent(const Model& model, int64_t n_seqs, int64_t n_prompt,
                                   int64_t n_decode, int reps, uint64_t seed) {
  const ModelConfig& c = model.config();
  DSMOE_CHECK(n_seqs >= 1, "--concurrent must be at least 1, got {}", n_seqs);
  DSMOE_CHECK(n_prompt >= 1 && n_decode >= 1, "--concurrent needs --prompt and --decode >= 1");
  DSMOE_CHECK(n_prompt + n_decode <= c.max_position_embeddings,
              "--prompt + --decode = {} exceeds the model's max_position_embeddings {}",
              n_prompt + n_decode, c.max_position_embeddings);
  Rng rng(seed);
  ConcurrentTimes times;
  std::vector<std::unique_ptr<KvCache>> caches;
  std::vector<int64_t> first_token(n_seqs);  // each sequence's greedy token after its prompt
  for (int64_t s = 0; s < n_seqs; s++) {
    const int64_t length = std::max<int64_t>(1, n_prompt - s * n_prompt / (2 * n_seqs));
    std::vector<int64_t> prompt(length);
    for (int64_t& id : prompt) id = static_cast<int64_t>(rng.next_u64() % c.vocab_size);
    caches.push_back(std::make_unique<KvCache>(c, length + n_decode));
    first_token[s] = argmax(model.forward_cached(prompt.data(), length, caches[s]->view()));
    caches[s]->advance(length);
    times.prompt_lengths.push_back(length);
  }
  std::vector<int64_t> next(n_seqs);
  std::vector<CachedStep> steps(n_seqs);
  ForwardRecord record;
  record.keep_routes = true;
  int64_t union_sum = 0, union_count = 0;
  auto decode = [&](int64_t n_steps, bool count) {
    for (int64_t s = 0; s < n_seqs; s++) {
      caches[s]->view().n_past = times.prompt_lengths[s];  // roll back to the prompt
      next[s] = first_token[s];
    }
    for (int64_t i = 0; i < n_steps; i++) {
      for (int64_t s = 0; s < n_seqs; s++) steps[s] = {&next[s], 1, &caches[s]->view(), false};
      const Tensor logits = model.forward_cached_batch(steps, count ? &record : nullptr);
      for (int64_t s = 0; s < n_seqs; s++) {
        caches[s]->advance(1);
        const float* row = logits.data + s * c.vocab_size;
        next[s] = std::max_element(row, row + c.vocab_size) - row;
      }
      for (const auto& [layer, routing] : record.routes) {
        union_sum += distinct_experts(routing, c.n_routed_experts);
        union_count++;
      }
      record.routes.clear();
    }
  };
  decode(1, false);  // warm-up: the batch's buffers
  for (int rep = 0; rep < reps; rep++) {
    Timer timer;
    decode(n_decode, rep == 0);
    times.decode.seconds.push_back(timer.seconds());
  }
  if (union_count > 0) times.routed_experts_per_step = static_cast<double>(union_sum) / union_count;
  return times;
}

SpeculativeTimes measure_speculative(const Model& model, int64_t n_prompt, int64_t n_decode,
                                     int64_t draft_tokens, int reps, uint64_t seed) {
  const ModelConfig& c = model.config();
  DSMOE_CHECK(n_prompt >= 1 && n_decode >= 1, "--speculative needs --prompt and --decode >= 1");
  DSMOE_CHECK(n_prompt + n_decode + draft_tokens + 1 <= c.max_position_embeddings,
              "--prompt + --decode + --draft-tokens exceed the model's max_position_embeddings {}",
              c.max_position_embeddings);
  Rng rng(seed);
  std::vector<int64_t> prompt(n_prompt);
  for (int64_t& id : prompt) id = static_cast<int64_t>(rng.next_u64() % c.vocab_size);
  GenerateOptions options;  // greedy
  options.max_new_tokens = n_decode + 1;
  SpeculativeTimes times;
  int64_t drafted = 0, accepted = 0, forwards = 0, decoded = 0, plain_tokens = 0;
  double draft_seconds = 0, verify_seconds = 0, spec_seconds = 0, plain_seconds = 0;
  generate_speculative(model, prompt, options, draft_tokens);  // warm-up
  for (int rep = 0; rep < reps; rep++) {
    GenerateStats plain_stats;
    const std::vector<int64_t> plain = generate(model, prompt, options, &plain_stats);
    times.plain_decode.seconds.push_back(plain_stats.decode_seconds);
    SpeculativeStats stats;
    const std::vector<int64_t> spec =
        generate_speculative(model, prompt, options, draft_tokens, &stats);
    times.decode.seconds.push_back(stats.generate.decode_seconds);
    times.identical = times.identical && spec == plain;
    drafted += stats.drafted, accepted += stats.accepted;
    forwards += stats.main_forwards, decoded += stats.decode_tokens;
    draft_seconds += stats.draft_seconds, verify_seconds += stats.verify_seconds;
    spec_seconds += stats.generate.decode_seconds;
    plain_seconds += plain_stats.decode_seconds;
    plain_tokens += plain_stats.new_tokens - 1;  // the first comes from the prefill
  }
  if (forwards > 0) {
    times.draft_seconds_per_step = draft_seconds / forwards;
    times.verify_seconds_per_step = verify_seconds / forwards;
    times.other_seconds_per_step = (spec_seconds - draft_seconds - verify_seconds) / forwards;
  }
  if (plain_tokens > 0) times.plain_seconds_per_token = plain_seconds / plain_tokens;
  times.acceptance_rate = drafted > 0 ? static_cast<double>(accepted) / drafted : 0.0;
  times.tokens_per_forward = forwards > 0 ? static_cast<double>(decoded) / forwards : 0.0;
  return times;
}

double batched_step_weight_bytes(const ModelConfig& c, int64_t active_bytes, int64_t expert_bytes,
                                 double routed_experts) {
  int64_t n_moe_layers = 0;
  for (int64_t L = 0; L < c.num_hidden_layers; L++) n_moe_layers += c.is_moe_layer(L);
  const double per_layer = routed_experts - static_cast<double>(c.num_experts_per_tok);
  return static_cast<double>(active_bytes) +
         static_cast<double>(n_moe_layers) * per_layer * static_cast<double>(expert_bytes);
}

BandwidthProbe::BandwidthProbe(int64_t bytes, bool hugepages) {
  constexpr int64_t kCols = 4096;  // a row is 8 KiB: the buffer is a whole number of pages
  QuantMatrix& w = matrix_;
  w.format = WeightFormat::kBF16;
  w.cols = kCols;
  w.row_bytes = weight_row_bytes(w.format, kCols);
  w.rows = std::max<int64_t>(1, bytes / static_cast<int64_t>(w.row_bytes));
  const size_t total = static_cast<size_t>(w.rows) * w.row_bytes;
  w.data.reserve(total);  // allocated, not yet touched: ask for hugepages before the first write
  constexpr uintptr_t kHuge = uintptr_t{2} << 20;
  const uintptr_t begin = (reinterpret_cast<uintptr_t>(w.data.data()) + kHuge - 1) & ~(kHuge - 1);
  const uintptr_t end = (reinterpret_cast<uintptr_t>(w.data.data()) + total) & ~(kHuge - 1);
  if (end > begin)
    madvise(reinterpret_cast<void*>(begin), end - begin,
            hugepages ? MADV_HUGEPAGE : MADV_NOHUGEPAGE);
  w.data.resize(total, 0x3c);  // every bf16 element 0x3c3c ~ 0.0115: finite, nonzero pages
  for (WeightFormat format : kProbeKernelFormats)
    ways_.push_back({fmt::format("decode kernel: {} matrix x vector (quant_linear_forward, M = 1)",
                                 weight_format_name(format))});
  for (const cpu::ReadPattern& pattern : cpu::default_read_patterns())
    ways_.push_back({"streaming read: " + cpu::describe(pattern)});
}

std::vector<double> BandwidthProbe::measure_patterns(const std::vector<cpu::ReadPattern>& patterns,
                                                     int reps) const {
  // The first 4096-aligned byte: the loops load whole aligned vectors.
  const uint8_t* data = matrix_.data.data();
  const int64_t skip =
      static_cast<int64_t>((4096 - reinterpret_cast<uintptr_t>(data) % 4096) % 4096);
  const int64_t n = (bytes() - skip) / 4096 * 4096;
  std::vector<double> bytes_per_s;
  uint64_t checksum = 0;
  for (const cpu::ReadPattern& pattern : patterns) {
    checksum ^= cpu::read_buffer(data + skip, n, pattern);  // warm-up
    const RepTimes times =
        time_reps([&] { checksum ^= cpu::read_buffer(data + skip, n, pattern); }, reps);
    bytes_per_s.push_back(static_cast<double>(n) / times.best());
  }
  volatile uint64_t sink = checksum;  // the reads are used
  (void)sink;
  return bytes_per_s;
}

double BandwidthProbe::kernel_bytes_per_s(WeightFormat format, int reps) {
  // The buffer read as a `format` matrix of 4096 columns (its bytes are finite weights and
  // scales in every format: 0x3c3c is bf16 0.0115 and f16 1.06), then restored.
  QuantMatrix& w = matrix_;
  const size_t total = w.data.size();
  const WeightFormat stored_format = w.format;
  const int64_t stored_rows = w.rows;
  const size_t stored_row_bytes = w.row_bytes;
  w.format = format;
  w.row_bytes = weight_row_bytes(format, w.cols);
  w.rows = static_cast<int64_t>(total / w.row_bytes);
  std::vector<float> x(w.cols, 0.5f), y(w.rows);        // (K), (N)
  cpu::quant_linear_forward(y.data(), x.data(), w, 1);  // warm-up
  const RepTimes times =
      time_reps([&] { cpu::quant_linear_forward(y.data(), x.data(), w, 1); }, reps);
  const double bytes_per_s = static_cast<double>(w.rows * w.row_bytes) / times.best();
  w.format = stored_format, w.rows = stored_rows, w.row_bytes = stored_row_bytes;
  return bytes_per_s;
}

double BandwidthProbe::measure(int reps) {
  std::vector<double> measured;
  for (WeightFormat format : kProbeKernelFormats)
    measured.push_back(kernel_bytes_per_s(format, reps));
  for (double pattern : measure_patterns(cpu::default_read_patterns(), reps))
    measured.push_back(pattern);
  double fastest = 0;
  for (size_t i = 0; i < measured.size(); i++) {
    ways_[i].best_bytes_per_s = std::max(ways_[i].best_bytes_per_s, measured[i]);
    fastest = std::max(fastest, measured[i]);
  }
  return fastest;
}

double empty_parallel_region_seconds(int n) {
  RepTimes times;
  std::vector<int> sink(static_cast<size_t>(omp_get_max_threads()));
  for (int i = 0; i < n; i++) {
    Timer timer;
#pragma omp parallel
    sink[static_cast<size_t>(omp_get_thread_num())] = i;  // (a region the compiler keeps)
    times.seconds.push_back(timer.seconds());
  }
  return times.median();
}

double probe_fp32_sgemm(int64_t n, int reps) {
  std::vector<float> a(n * n, 0.5f), b(n * n, 0.25f), c(n * n);  // (n, n) each
  cpu::linear_forward(c.data(), a.data(), b.data(), n, n, n);    // warm-up
  const RepTimes times =
      time_reps([&] { cpu::linear_forward(c.data(), a.data(), b.data(), n, n, n); }, reps);
  return 2.0 * n * n * n / times.best();
}

double probe_quant_peak(WeightFormat format, int64_t m, int64_t n, int64_t k, int reps) {
  Rng rng(7);
  std::vector<float> w32(n * k);  // (n, k)
  for (float& v : w32) v = rng.normal() * 0.05f;
  const QuantMatrix w = quantize_matrix(w32.data(), n, k, format);
  std::vector<float> x(m * k);  // (m, k)
  for (float& v : x) v = rng.normal();
  std::vector<float> y(m * n);                          // (m, n)
  cpu::quant_linear_forward(y.data(), x.data(), w, m);  // warm-up
  const RepTimes times =
      time_reps([&] { cpu::quant_linear_forward(y.data(), x.data(), w, m); }, reps);
  return 2.0 * m * n * k / times.best();
}

double attention_flops_per_token(const ModelConfig& c, double mean_context) {
  const double per_position = c.use_mla()
                                  ? 2.0 * c.num_attention_heads * (c.qk_head_dim() + c.v_head_dim)
                                  : 4.0 * c.num_attention_heads * c.head_dim;
  return per_position * mean_context * c.num_hidden_layers;
}

double forward_flops_per_token(const ModelConfig& c, int64_t active_params, int64_t n_tokens) {
  const double matmul = 2.0 * static_cast<double>(active_params - c.hidden_size);
  return matmul + attention_flops_per_token(c, 0.5 * static_cast<double>(n_tokens + 1));
}

double train_flops_per_token(const ModelConfig& c, int64_t active_params, int64_t seq_len) {
  return 3.0 * forward_flops_per_token(c, active_params, seq_len);
}

namespace {

// The value of "Key:   123 kB" in a /proc file, in bytes; -1 when absent.
int64_t proc_kb_field(const char* path, const std::string& key) {
  std::ifstream file(path);
  std::string line;
  while (std::getline(file, line)) {
    if (line.rfind(key + ":", 0) != 0) continue;
    std::istringstream fields(line.substr(key.size() + 1));
    int64_t kb = -1;
    fields >> kb;
    return kb < 0 ? -1 : kb * 1024;
  }
  return -1;
}

}  // namespace

int64_t peak_rss_bytes() {
  const int64_t hwm = proc_kb_field("/proc/self/status", "VmHWM");
  if (hwm > 0) return hwm;
  rusage usage{};
  getrusage(RUSAGE_SELF, &usage);
  return static_cast<int64_t>(usage.ru_maxrss) * 1024;  // Linux: kilobytes
}

bool reset_peak_rss() {
  std::ofstream clear_refs("/proc/self/clear_refs");
  clear_refs << "5";
  clear_refs.flush();
  return static_cast<bool>(clear_refs);
}

int64_t available_memory_bytes() {
  return std::max<int64_t>(0, proc_kb_field("/proc/meminfo", "MemAvailable"));
}

MachineInfo machine_info() {
  MachineInfo info;
  std::ifstream cpuinfo("/proc/cpuinfo");
  std::string line;
  while (std::getline(cpuinfo, line)) {
    if (line.rfind("model name", 0) != 0) continue;
    const size_t colon = line.find(':');
    if (colon != std::string::npos) info.cpu = line.substr(line.find_first_not_of(' ', colon + 1));
    break;
  }
  if (info.cpu.empty()) info.cpu = "unknown";
  info.cores = static_cast<int>(sysconf(_SC_NPROCESSORS_ONLN));
  info.hwy_target = hwy::TargetName(cpu::quant_dispatch_target());
  const std::time_t now = std::time(nullptr);
  char date[64];
  std::strftime(date, sizeof(date), "%Y-%m-%dT%H:%M:%S%z", std::localtime(&now));
  info.date = date;
  return info;
}

}  // namespace dsmoe
