// mtp.h: DeepSeek-V3 multi-token prediction (paper sec. 2.2) in training: the D sequential MTP
// modules on top of the main model's last hidden state, their losses, and their backward.
#pragma once
#include <cstdint>
#include <vector>

#include "model/config.h"
#include "model/layer.h"
#include "model/moe.h"
#include "model/weights.h"

namespace dsmoe {

// What MTP module k (depth k = 1..D) keeps from a training forward. Its batch is [n_seqs, T - k]:
// row (b, i) is position i of sequence b, i = 0 .. T-k-1.
struct MtpActs {
  int64_t n_tokens = 0;       // T - k; 0 when the sequences are too short for this depth
  std::vector<int64_t> ids;   // (n_seqs, T-k) t_{i+k}: the embedded token, and targets at i+1
  std::vector<float> cos;     // (T-k, rope_dim/2) RoPE at positions 0 .. T-k-1
  std::vector<float> sin;     // (T-k, rope_dim/2)
  std::vector<float> emb;     // (N_k, H) Emb(t_{i+k})
  std::vector<float> h_prev;  // (N_k, H) h^{k-1}_i: the previous depth's rows i < T-k
  std::vector<float> cat;     // (N_k, 2H) [enorm(emb) | hnorm(h_prev)]
  LayerActs block;            // its decoder block (block.x_in = eh_proj . cat, eq. 21)
  std::vector<float> h;       // (N_k, H) h^k, the block's output (eq. 22)
  std::vector<float> normed;  // (N_k, H) shared_head_norm(h^k)
  std::vector<float> logits;  // (N_k, V) normed . lm_head^T (eq. 23)
};

// Forward of the weights.mtp.size() modules over ids [n_seqs, n_tokens] from h0 (n_seqs *
// n_tokens, H), the main stack's output before its final norm. Fills acts (one per module) and
// returns L_k per depth: the mean cross-entropy of logits^k_i against t_{i+k+1} (eq. 24); 0 for a
// depth whose sequences are shorter than k + 2 tokens (and for every depth after it). Each
// block's MoE runs with `moe_training` (its balance losses land in acts[k-1].block.moe.aux).
std::vector<double> mtp_forward(const ModelConfig& config, const ModelWeights& weights,
                                const int64_t* ids, int64_t n_seqs, int64_t n_tokens,
                                const float* h0, std::vector<MtpActs>& acts,
                                const MoeTraining* moe_training);

// Backward of scale * sum_k L_k (scale = lambda / D for eq. 25; 0 keeps only the blocks' balance
// losses): grads += d weights (grads.mtp, and the shared grads.embed_tokens, grads.lm_head);
// dh0 (n_seqs * n_tokens, H) += d h0.
void mtp_backward(const ModelConfig& config, const ModelWeights& weights, ModelWeights& grads,
                  int64_t n_seqs, int64_t n_tokens, float scale, const std::vector<MtpActs>& acts,
                  float* dh0);

}  // namespace dsmoe
