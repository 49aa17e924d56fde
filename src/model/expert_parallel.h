// expert_parallel.h: expert parallelism over a Comm: with R ranks, rank r holds the routed
// experts [r E / R, (r + 1) E / R) of every MoE layer; a MoE layer sends each token's hidden state
// once to every rank that holds one of its experts (dispatch) and gets back each rank's
// gate-weighted partial sum (combine); the backward moves the gradients the same two ways.
// Routing never knows where experts live: only this file does (docs/scale-out.md).
#pragma once
#include <cstdint>
#include <functional>
#include <memory>

#include "comm/comm.h"
#include "model/config.h"
#include "model/moe.h"
#include "model/weights.h"

namespace dsmoe {

class ExpertParallel {
 public:
  // Checks that the ranks divide n_routed_experts.
  ExpertParallel(Comm& comm, const ModelConfig& config);

  Comm& comm() const { return comm_; }
  int rank() const { return comm_.rank(); }
  int size() const { return comm_.size(); }
  int owner(int64_t expert) const { return static_cast<int>(expert / per_rank_); }
  ExpertShard shard() const { return {rank() * per_rank_, (rank() + 1) * per_rank_}; }

  // What this rank's MoE layers moved since the last take_traffic().
  struct Traffic {
    int64_t tokens_received = 0;  // rows this rank's experts computed (forward), from all ranks
    int64_t rows_sent = 0;        // token rows dispatched to all ranks, this one included
    int64_t tokens_sent = 0;      // local tokens dispatched (rows_sent / tokens_sent: ranks
                                  // reached per token)
  };
  Traffic& traffic() { return traffic_; }

  // The most ranks (with node_limit: nodes) a token's experts can live on under this placement
  // and the config's routing: topk_group when the groups map onto them (n_group a multiple of
  // the ranks, or of the nodes when node_limit), else min(K, ranks). node_limit checks that the
  // groups do map onto nodes (whole groups per node: DeepSeek-V3's node-limited routing).
  int64_t max_ranks_per_token(const ModelConfig& config, bool node_limit) const;

 private:
  Comm& comm_;
  int64_t per_rank_;
  Traffic traffic_;
};

// Makes every MoE layer of `weights` (and its MTP blocks) dispatch through `ep`; null: one
// process again. The experts outside ep's shard should be empty (load_weights with its shard).
void use_expert_parallel(const ModelConfig& config, ModelWeights& weights,
                         std::shared_ptr<ExpertParallel> ep);
// Drops (empties) the routed experts outside `shard` in every MoE layer of `weights`.
void drop_foreign_experts(const ModelConfig& config, ModelWeights& weights, ExpertShard shard);

// Whether a MoE layer's experts live on several ranks.
bool expert_parallel_active(const MoeWeights& moe);

// The routed experts of moe_forward across ranks: out[n, H] <- out + sum of the ranks' partial
// sums, in rank order (acts.routing set). `overlap` runs while the dispatch is in flight and
// must leave the shared experts' output in out (DeepSeek-V3's overlap of shared experts and
// all-to-all).
void moe_routed_forward_parallel(const ModelConfig& config, const MoeWeights& moe, const float* x,
                                 float* out, int64_t n_tokens, MoeActs& acts,
                                 const std::function<void()>& overlap);
// Its backward: dx += d x through the experts; dweight [n, K] = d gate weights; grads += the
// gradients of this rank's experts.
void moe_routed_backward_parallel(const ModelConfig& config, const MoeWeights& moe,
                                  MoeWeights& grads, const float* dout, float* dx, float* dweight,
                                  int64_t n_tokens, const MoeActs& acts);

// A rank with no tokens of its own (fewer sequences than ranks) lends its experts to the
// others' forward passes, layer after layer, until the ranks with tokens call
// release_expert_servers. Inference only.
void serve_experts(const ModelConfig& config, const ModelWeights& weights);
// Called by each rank with tokens after its last forward pass (no-op in one process).
void release_expert_servers(const ModelConfig& config, const ModelWeights& weights);

}  // namespace dsmoe
