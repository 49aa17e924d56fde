// attention.h: the attention sub-layers: Multi-head Latent Attention (DeepSeek-V2/V3) with a
// naive and an absorbed path, and the multi-head attention of DeepSeekMoE V1.
#pragma once
#include <cstdint>
#include <vector>

#include "model/config.h"
#include "model/weights.h"

namespace dsmoe {

// How MLA attends. Naive: expand every cached latent into per-head keys and values through
// kv_b_proj. Absorbed (DeepSeek-V2 paper, sec. 2.1.2): fold W_UK into the query and apply W_UV
// after the attention-weighted sum of latents, so the cache is read as latents only. Auto: naive
// for a first chunk (prefill), absorbed once the cache holds past tokens (decode).
enum class MlaMode { kAuto, kNaive, kAbsorbed };

// One sequence's rows in a batched cached forward (AttentionContext::segments): n_tokens rows at
// positions n_past .., attending to their own cache.
struct AttentionSegment {
  int64_t n_tokens = 0;
  int64_t n_past = 0;
  float* cache = nullptr;      // this layer's rows of the sequence's cache
  const float* cos = nullptr;  // [n_tokens, rope_dim/2]
  const float* sin = nullptr;
};

struct AttentionContext {
  int64_t n_seqs = 1;          // sequences in the batch (1 when a cache is used)
  int64_t n_tokens = 0;        // new tokens per sequence
  int64_t n_past = 0;          // tokens already in the cache (positions start there)
  const float* cos = nullptr;  // [n_tokens, rope_dim/2]
  const float* sin = nullptr;
  // Cache rows [capacity, config.kv_cache_row()] of this layer, or null: MLA stores per token
  // [kv_a_layernorm(c_kv) | rope key]; V1 stores [k | v] after RoPE. Rows n_past .. are written.
  float* cache = nullptr;
  MlaMode mla_mode = MlaMode::kAuto;
  // Batched cached forward (inference): when set, the rows are the segments' rows in order
  // (n_seqs * n_tokens of them, n_tokens = 1), each segment with its own cache, positions and
  // angles; n_past, cos, sin and cache above are then unused.
  const std::vector<AttentionSegment>* segments = nullptr;
};

// The segments of a context: its own, or n_seqs of n_tokens rows each at n_past with its cache.
std::vector<AttentionSegment> attention_segments(const AttentionContext& context);

// The intermediate buffers of one attention call; a training forward keeps them for backward.
struct AttentionActs {
  std::vector<float> q_latent;         // (N, q_lora_rank) MLA q_a_proj output
  std::vector<float> q_latent_normed;  // (N, q_lora_rank) after q_a_layernorm
  std::vector<float> q;                // (N, heads, qk_head_dim | head_dim) after RoPE
  std::vector<float> rows_raw;         // (N, kv_lora_rank + rope) MLA kv_a_proj output
  std::vector<float> rows;             // (N, kv_cache_row) this call's cache rows
  std::vector<float> kv;               // (S, heads, nope + v) MLA naive: kv_b_proj output
  std::vector<float> keys;             // (S, heads, qk_head_dim) MLA naive: full keys
  std::vector<float> heads;            // (N, heads, v_head_dim) attention output
};

// out [n_seqs * n_tokens, H] = attention(x [n_seqs * n_tokens, H]) (x is already normalised).
// `acts` (optional) receives the intermediates.
void attention_forward(const ModelConfig& config, const AttentionWeights& weights, const float* x,
                       float* out, const AttentionContext& context, AttentionActs* acts = nullptr);

// Backward of a cache-free forward (naive MLA) that kept `acts`: dx += d x, grads += d weights.
void attention_backward(const ModelConfig& config, const AttentionWeights& weights,
                        AttentionWeights& grads, const float* x, const float* dout, float* dx,
                        const AttentionContext& context, const AttentionActs& acts);

}  // namespace dsmoe
