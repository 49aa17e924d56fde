// bench.h: the measurements of `dsmoe bench`: prefill / decode timings through the KV cache, the
// machine's roofline probes (weight-read bandwidth, fp32 / bf16 / int8 peaks), the FLOP model of
// a token, peak RSS and a description of the machine.
#pragma once
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "kernels/cpu/read_probe.h"
#include "kernels/quant.h"
#include "model/config.h"
#include "model/transformer.h"

namespace dsmoe {

// Wall-clock seconds of R repetitions of one measurement.
struct RepTimes {
  std::vector<double> seconds;
  double median() const;  // of the repetitions (mean of the middle two for even R)
  double best() const;    // the fastest repetition
};

// Runs fn() `warmup` times untimed, then `reps` times timed.
RepTimes time_reps(const std::function<void()>& fn, int reps, int warmup = 0);

// Prefill: a prompt of n_prompt random ids (fixed seed) through a fresh KvCache with
// model.forward_cached (logits of the last position); decode: n_decode more tokens, one per
// forward_cached call, each the greedy choice from the previous logits. Each repetition starts
// from an empty cache. An untimed warm-up first runs the prompt and one decode step: it pages
// the weights in and grows the heap to its working size (fresh pages are zeroed on first touch:
// the first 512-token Q8_0 prefill on infer-lite8 took 2.1 s, the later ones 0.9 s).
struct InferenceTimes {
  RepTimes prefill;  // seconds for n_prompt tokens
  RepTimes decode;   // seconds for n_decode tokens
};
// Work `dsmoe bench` slots in, outside the timers:
// - after_warmup: after the warm-up, which then runs again (what it allocates can take the heap
//   memory the warm-up freed; the repetitions must not be the ones that touch fresh pages);
// - beside_decode: right before and right after each repetition's decode. The bench probes the
//   read bandwidth there, so that each decode is compared with the bandwidth of its own minute
//   (this VM's swings by +-20% within minutes).
// - before_prefill: right before each repetition's prefill.
struct InferenceHooks {
  std::function<void()> after_warmup, beside_decode, before_prefill;
};
InferenceTimes measure_inference(const Model& model, int64_t n_prompt, int64_t n_decode, int reps,
                                 const InferenceHooks& hooks = {}, uint64_t seed = 1234);

// Batched decode (Model::forward_cached_batch): n_seqs sequences with prompts of different
// lengths (n_prompt down to about n_prompt / 2, random ids), prefilled once untimed; each
// repetition decodes n_decode steps of all of them together from the same point (the caches
// rolled back to the prompts), each sequence taking its greedy token. Also the routed experts a
// step touches: per MoE layer, the size of the union of the experts of all n_seqs rows.
struct ConcurrentTimes {
  RepTimes decode;                      // seconds for n_decode steps of all n_seqs sequences
  double routed_experts_per_step = 0;   // mean over steps and MoE layers of that union's size
  std::vector<int64_t> prompt_lengths;  // per sequence
};
ConcurrentTimes measure_concurrent(const Model& model, int64_t n_seqs, int64_t n_prompt,
                                   int64_t n_decode, int reps, uint64_t seed = 1234);

// The weight bytes one decode step of n_seqs sequences reads when the routed experts of a MoE
// layer are read once for all of them: the bytes of a token (active_bytes) with its routed
// experts (num_experts_per_tok per MoE layer, expert_bytes each) replaced by routed_experts
// (the mean union per layer). n_seqs * active_bytes over it bounds the speed-up of batched
// decode over one sequence where decode reads weights at a fixed bandwidth.
double batched_step_weight_bytes(const ModelConfig& config, int64_t active_bytes,
                                 int64_t expert_bytes, double routed_experts);

// MTP self-speculative decoding (runtime/speculative.h) against plain decoding, greedy, in the
// same run: per repetition (alternating) a plain generate() and a generate_speculative() of
// n_decode + 1 new tokens after the same random prompt; the decode timers cover the n_decode
// tokens after the first (which the prefill gives).
struct SpeculativeTimes {
  RepTimes decode;                // speculative, seconds for n_decode tokens
  RepTimes plain_decode;          // plain
  double acceptance_rate = 0;     // accepted / drafted, over the repetitions
  double tokens_per_forward = 0;  // decoded tokens per main-model forward
  bool identical = true;          // the speculative output was the plain one token for token
  // Per verification step (mean over the repetitions), seconds: the MTP module's share (catch-up
  // and drafts), the main model's verification forward, and the rest (acceptance, sampling,
  // rollback); and a plain decode step for comparison.
  double draft_seconds_per_step = 0;
  double verify_seconds_per_step = 0;
  double other_seconds_per_step = 0;
  double plain_seconds_per_token = 0;
};
SpeculativeTimes measure_speculative(const Model& model, int64_t n_prompt, int64_t n_decode,
                                     int64_t draft_tokens, int reps, uint64_t seed = 1234);

// Read bandwidth in bytes/s: the fastest of several ways to stream a buffer of ~`bytes` bytes
// (hugepages requested) on all threads, so that no engine's decode reads above it (issue 16
// part 2): the streaming-read patterns of cpu::default_read_patterns() (streams per thread,
// software prefetch) and the decode kernels themselves (the buffer as a bf16, Q8_0 and Q4_0
// matrix of 4096 columns times one vector, cpu::quant_linear_forward at M = 1). Each way's best of
// `reps` passes; measure() returns the fastest way's and keeps every way's best over all calls
// (ways()). The buffer is made once and measured as often as asked.
class BandwidthProbe {
 public:
  struct Way {
    std::string name;
    double best_bytes_per_s = 0;  // over all measure() calls
  };
  explicit BandwidthProbe(int64_t bytes, bool hugepages = true);
  double measure(int reps);
  // One pass of each pattern of `patterns` (best of reps): bytes/s per pattern, in order.
  std::vector<double> measure_patterns(const std::vector<cpu::ReadPattern>& patterns,
                                       int reps) const;
  int64_t bytes() const { return static_cast<int64_t>(matrix_.data.size()); }
  const std::vector<Way>& ways() const { return ways_; }
  // The decode kernels the probe times (the buffer read as a matrix of each format).
  static constexpr WeightFormat kProbeKernelFormats[] = {WeightFormat::kBF16, WeightFormat::kQ8_0,
                                                         WeightFormat::kQ4_0};

 private:
  double kernel_bytes_per_s(WeightFormat format, int reps);  // best of reps
  QuantMatrix matrix_;  // the bf16 matrix, also the buffer the patterns read
  std::vector<Way> ways_;
};

// Seconds of one empty OpenMP parallel region on all threads (the median of `n`, back to back):
// the fork/join cost every parallel product of a decoded token pays.
double empty_parallel_region_seconds(int n);

// fp32 peak in FLOP/s: cpu::linear_forward (OpenBLAS sgemm) of n x n x n, 2 n^3 FLOPs, best of
// `reps`.
double probe_fp32_sgemm(int64_t n, int reps);

// Peak of cpu::quant_linear_forward with `format` weights [n, k] and m activation rows, in useful
// FLOP/s (2 m n k per product; for bf16 the kernel's hi + lo split does twice the dot products,
// for Q8_0 it counts int8 multiply-adds, as llama.cpp does), best of `reps`.
double probe_quant_peak(WeightFormat format, int64_t m, int64_t n, int64_t k, int reps);

// FLOP model of one token (documented in bench/README.md):
//   matmul = 2 * (active parameters - one embedding row)   [active_params from the f32 weights]
//   attention at context length t, per layer: 2 * heads * (qk_head_dim + v_head_dim) * t (MLA,
//   the naive form prefill uses), 4 * heads * head_dim * t (V1).
// prefill of P tokens averages t over 1..P: t = (P + 1) / 2. A training step costs 3x its forward
// (the backward pass computes two products per forward product). MTP modules are not counted.
double attention_flops_per_token(const ModelConfig& config, double mean_context);
double forward_flops_per_token(const ModelConfig& config, int64_t active_params, int64_t n_tokens);
double train_flops_per_token(const ModelConfig& config, int64_t active_params, int64_t seq_len);

// Peak resident set size of this process in bytes (VmHWM of /proc/self/status, else
// getrusage's ru_maxrss).
int64_t peak_rss_bytes();
// Sets the peak to the current resident set size (Linux >= 4.0: "5" into /proc/self/clear_refs),
// so that memory freed since (a probe's matrix) leaves the next peak_rss_bytes(); false when the
// kernel refuses.
bool reset_peak_rss();
// MemAvailable of /proc/meminfo in bytes (0 when unknown).
int64_t available_memory_bytes();

struct MachineInfo {
  std::string cpu;         // "model name" of /proc/cpuinfo
  int cores = 0;           // online logical CPUs
  std::string hwy_target;  // the Highway target the quant kernels dispatch to (AVX3_SPR, ...)
  std::string date;        // local time, ISO 8601
};
MachineInfo machine_info();

}  // namespace dsmoe
