// bench_parallel.h: `dsmoe bench` under mpirun: the routed experts spread over the ranks (as
// forward, generate and train do), the training batch split between the ranks, one decoded
// sequence per rank; what the all-to-all moved per rank and per token, the share of time in
// collectives and the tokens each rank's experts received (max / mean: the imbalance).
#pragma once
#include <cstdint>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>

#include "apps/cli/parallel.h"
#include "comm/comm.h"
#include "model/expert_parallel.h"
#include "model/transformer.h"
#include "runtime/bench.h"
#include "train/optimizer.h"

namespace dsmoe::cli {

// What one rank moved during a measured phase (training steps, prefills or decodes), summed
// over its repetitions.
struct PhaseTraffic {
  int64_t tokens = 0;           // this rank's own tokens (its sequences)
  int64_t tokens_received = 0;  // rows its experts computed, from every rank
  int64_t tokens_sent = 0;      // tokens it dispatched (one per token and MoE block)
  int64_t rows_sent = 0;        // rows it dispatched (one per token, MoE block and rank reached)
  int64_t bytes_sent = 0, bytes_received = 0;  // all-to-all, to and from other ranks
  double comm_seconds = 0.0;                   // in collectives (waiting included)
  double seconds = 0.0;                        // wall time of the phase
};

class BenchRanks {
 public:
  explicit BenchRanks(Comm& comm) : comm_(comm) {}
  Comm& comm() const { return comm_; }
  int rank() const { return comm_.rank(); }
  int size() const { return comm_.size(); }
  bool active() const { return comm_.size() > 1; }

  // The checkpoint with this rank's experts, its MoE layers dispatching over the ranks
  // (load_parallel_model); in one process, the whole model as load_inference_model gives it.
  Model load(const std::string& model_dir, const std::string& weights);

  // Training: the sequences of a global batch this rank trains on (the batch a multiple of the
  // ranks); drops the gradients and AdamW moments of other ranks' experts.
  SeqRange train_share(int64_t batch) const;
  void shard_training(const ModelConfig& config, ModelWeights& grads, AdamWState& adam) const;
  // After the backward: the replicated weights' gradients summed over the ranks, all / ranks
  // (TrainParallel::reduce_gradients).
  void reduce_gradients(const ModelConfig& config, ModelWeights& grads) const;

  // Brackets a measured stretch: start() notes this rank's counters, stop() adds what moved
  // since, the stretch's wall seconds and the rank's own tokens in it to `phase`.
  void start();
  void stop(PhaseTraffic& phase, int64_t tokens, double seconds) const;

  // Every rank's phase (collective: each rank calls it, in the same order), per token and per
  // rank with max and mean over ranks, against the bound of device-limited routing: every token
  // sent to min(M, R - 1) other ranks in each of n_moe_blocks MoE blocks, at bytes_per_remote
  // bytes each (moe_bytes_per_remote_rank).
  nlohmann::json summary(const PhaseTraffic& phase, const ModelConfig& config, int64_t n_moe_blocks,
                         int64_t bytes_per_remote) const;

 private:
  Comm& comm_;
  std::shared_ptr<ExpertParallel> ep_;  // null in one process
  CommStats stats_at_start_;
  ExpertParallel::Traffic traffic_at_start_;
};

// Under mpirun every rank prefills and decodes its own sequence (its own random prompt), in step
// with the others (each MoE layer exchanges with every rank); hooks bracket each repetition's
// prefill and decode (measure_inference's before_prefill and beside_decode).
struct InferenceTraffic {
  PhaseTraffic prefill, decode;
  int64_t beside_decode_calls = 0;  // even: before a decode, odd: after it
};
void add_traffic_hooks(BenchRanks& ranks, int64_t n_prompt, int64_t n_decode, InferenceHooks& hooks,
                       InferenceTraffic& traffic);

// The "parallel" object of the bench's JSON: ranks, nodes, and per phase (train when given,
// prefill, decode) BenchRanks::summary; decode adds the aggregate tokens/s of the R sequences.
// Collective: every rank calls it.
nlohmann::json parallel_json(const BenchRanks& ranks, const ModelConfig& config, int64_t n_mtp,
                             InferenceTraffic& inference, const InferenceTimes& times,
                             const PhaseTraffic* train, double decode_tps);

// The sum of the repetitions' seconds.
double total_seconds(const RepTimes& times);

// All-to-all bytes of one token, one MoE block and one remote rank it reaches
// (model/expert_parallel.cpp): forward dispatch [H floats | K weights | K ids] and combine
// (H doubles); the backward adds d out (H floats) and d x with the d gate weights (H + K floats).
int64_t moe_bytes_per_remote_rank(const ModelConfig& config, bool backward);

// The MoE blocks a token passes through: the MoE layers and its n_mtp MTP blocks.
int64_t moe_blocks(const ModelConfig& config, int64_t n_mtp);

// The table lines of the parallel part of a bench (the "parallel" object of its JSON).
void print_parallel_summary(const nlohmann::json& parallel);

}  // namespace dsmoe::cli
