// moe.h: the feed-forward blocks: the dense SwiGLU MLP and the DeepSeekMoE layer (shared
// experts every token passes through + routed experts, tokens gathered per expert); forward and
// backward.
#pragma once
#include <cstdint>
#include <vector>

#include "model/balance.h"
#include "model/config.h"
#include "model/router.h"
#include "model/weights.h"

namespace dsmoe {

struct MlpActs {
  std::vector<float> gate;    // (n, I) gate_proj output, before silu
  std::vector<float> up;      // (n, I)
  std::vector<float> hidden;  // (n, I) silu(gate) * up
};

// out[n, H] = down(silu(gate x) * up x) for x [n, H]; width = the MLP's intermediate size.
void mlp_forward(const MlpWeights& mlp, const float* x, float* out, int64_t n_tokens,
                 int64_t hidden, int64_t width, MlpActs& acts);
// dx[n, H] += d x; grads += d weights.
void mlp_backward(const MlpWeights& mlp, MlpWeights& grads, const float* x, const float* dout,
                  float* dx, int64_t n_tokens, int64_t hidden, int64_t width, const MlpActs& acts);

// Expert parallelism: which local tokens went to which rank, and the rows that came back
// (model/expert_parallel.cpp); empty in one process.
struct ExpertExchange {
  std::vector<int64_t> send_rows;   // [R] token rows sent to each rank
  std::vector<int64_t> recv_rows;   // [R] rows received from each rank
  std::vector<int64_t> sent_token;  // [sum send_rows] local token of each sent row, by rank
  std::vector<float> x_rows;        // (sum recv_rows, H) received hidden states
  std::vector<int32_t> row_expert;  // [sum recv_rows, K] this rank's expert per slot, -1: none
  std::vector<float> row_weight;    // [sum recv_rows, K] its gate weight (0 for none)
  std::vector<float> send, recv;    // the dispatch's packed rows (in flight during the overlap)
};

struct MoeActs {
  Routing routing;
  BalanceLosses aux;               // training: this layer's balance losses
  std::vector<float> aux_dscores;  // training: d aux / d scores [n, E]
  ExpertExchange exchange;         // under expert parallelism
  // The routed experts' work, over rows: the layer's tokens in one process, the rows received
  // from every rank under expert parallelism. Slot j of row r is the flat index r * K + j.
  std::vector<int32_t> slot_expert;  // [rows, K] expert of each slot, -1: none (dropped)
  std::vector<int64_t> offsets;      // [E + 1] first assignment of each expert
  std::vector<int64_t> assignment;   // [rows * K] flat slot index, grouped by expert
  std::vector<int64_t> active;       // experts that received tokens, in order
  std::vector<float> x_sorted;       // (rows * K, H) inputs in assignment order
  std::vector<float> y_sorted;       // (rows * K, H) expert outputs before the gate weight
  std::vector<MlpActs> experts;      // per routed expert, over its gathered tokens
  MlpActs shared;
};

// A training forward's extras: noise, capacity and balance losses over n_seqs sequences.
struct MoeTraining {
  RouterTraining router;
  int64_t n_seqs = 1;
  bool balance_losses = true;  // compute the configured balance losses (and their gradients)
};

// out[n, H] = shared(x) + sum_k weight_k * expert_k(x); acts.routing holds the decisions.
// With `training`: noisy gating and capacity as configured, and acts.aux / aux_dscores.
void moe_forward(const ModelConfig& config, const MoeWeights& moe, const float* x, float* out,
                 int64_t n_tokens, MoeActs& acts, const MoeTraining* training = nullptr);
// dx += d x (through experts, shared experts and the router); grads += d weights.
void moe_backward(const ModelConfig& config, const MoeWeights& moe, MoeWeights& grads,
                  const float* x, const float* dout, float* dx, int64_t n_tokens,
                  const MoeActs& acts);

// The routed experts over rows x [n_rows, H] whose slots [n_rows, K] name an expert (or -1)
// with gate weight `slot_weight`: partial[n_rows, H] = sum over a row's slots, in expert order,
// of weight * expert(x), added in double (exact products; see docs/scale-out.md). Uses and keeps
// acts.slot_expert (filled by the caller), offsets, assignment, x_sorted, y_sorted, experts.
void routed_experts_forward(const ModelConfig& config, const MoeWeights& moe, const float* x,
                            int64_t n_rows, const float* slot_weight, double* partial,
                            MoeActs& acts);
// Its backward from d out rows [n_rows, H]: dx_rows [n_rows, H] += the experts' d x (in expert
// order), dweight [n_rows, K] = <d out, expert(x)> per kept slot (0 elsewhere); grads +=.
void routed_experts_backward(const ModelConfig& config, const MoeWeights& moe, MoeWeights& grads,
                             const float* dout_rows, const float* slot_weight, int64_t n_rows,
                             float* dx_rows, float* dweight, const MoeActs& acts);

}  // namespace dsmoe
