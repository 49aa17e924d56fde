// data_parallel.h: training on several ranks (mpirun): every rank draws the same global batch
// and trains on its share of the sequences; the routed experts are spread over the ranks
// (model/expert_parallel.h); gradients of the replicated weights are summed over the ranks in
// rank order; each rank's AdamW updates the replicated weights (identically) and its own
// experts; rank 0 gathers the experts and writes the one Hugging Face layout checkpoint.
#pragma once
#include <cstdint>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <vector>

#include "comm/comm.h"
#include "model/expert_parallel.h"
#include "model/transformer.h"
#include "train/optimizer.h"

namespace dsmoe {

class TrainParallel {
 public:
  explicit TrainParallel(Comm& comm) : comm_(comm) {}
  Comm& comm() const { return comm_; }
  int rank() const { return comm_.rank(); }
  int size() const { return comm_.size(); }
  bool active() const { return comm_.size() > 1; }

  // The real placement in the config: ep_size = the ranks (DeepSeek-V2's D) unless the config
  // sets its own. Call before the model is built.
  ModelConfig placed(ModelConfig config) const;
  // Spreads the experts: the model dispatches over the ranks; this rank's gradients (and, on
  // ranks other than 0, weights and moments) of other ranks' experts are dropped (rank 0 keeps
  // its copies of the weights and moments to gather the checkpoint into). Call after resuming.
  // node_limit (--ep-node-limit): check that the routing groups map onto nodes and report the
  // bound per node (ExpertParallel::max_ranks_per_token).
  void shard(const ModelConfig& config, ModelWeights& weights, ModelWeights& grads,
             AdamWState& adam, bool node_limit = false);
  // This rank's sequences of a global batch of n_seqs: [first, first + count).
  int64_t first_seq(int64_t n_seqs) const { return n_seqs * rank() / size(); }
  int64_t count_seqs(int64_t n_seqs) const {
    return first_seq_of(n_seqs, rank() + 1) - first_seq(n_seqs);
  }

  // After the backward: sums the replicated weights' gradients over the ranks (rank order) and
  // divides every gradient by the ranks (each rank's loss is the mean over its share).
  void reduce_gradients(const ModelConfig& config, ModelWeights& grads) const;
  // The global gradient norm: replicated gradients (the same on every rank) plus the sum over
  // ranks of each rank's experts.
  double grad_norm(const ModelConfig& config, ModelWeights& grads) const;
  // Means over the ranks of the step's losses; sums of the expert loads.
  void reduce_stats(double& loss, double& aux_loss, std::vector<double>& mtp_loss,
                    int64_t& n_dropped, std::map<int64_t, std::vector<int64_t>>& loads) const;
  // Copies every rank's experts into rank 0's weights and moments (before it saves).
  void gather_experts(const ModelConfig& config, ModelWeights& weights, AdamWState& adam) const;

  // This step's communication per rank and its max / mean over ranks (metrics.jsonl).
  nlohmann::json step_traffic();
  // The progress line's part: "a2a X MB/step, comm Y% (max/mean Z)".
  std::string traffic_summary(const nlohmann::json& traffic, double step_seconds) const;

 private:
  int64_t first_seq_of(int64_t n_seqs, int rank) const { return n_seqs * rank / size(); }

  Comm& comm_;
  std::shared_ptr<ExpertParallel> ep_;
  CommStats last_stats_;
  ExpertParallel::Traffic last_traffic_;
  int64_t max_ranks_per_token_ = 1;  // (in nodes under node_limit_)
  bool node_limit_ = false;
};

}  // namespace dsmoe
