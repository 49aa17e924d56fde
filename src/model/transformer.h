// transformer.h: Model, a whole DeepSeekMoE V1 / DeepSeek-V2 / DeepSeek-V3 causal LM: embedding,
// decoder layers (attention + dense MLP or MoE), final norm and LM head.
#pragma once
#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "model/attention.h"
#include "model/config.h"
#include "model/router.h"
#include "model/weights.h"

namespace dsmoe {

// What a forward pass may keep besides the logits.
struct ForwardRecord {
  bool keep_hidden = false;
  bool keep_routes = false;
  // hidden[0] = embeddings, hidden[i] = output of layer i-1, hidden[L] = after the final norm
  // (the reference's convention); each [n_seqs * n_tokens, H].
  std::vector<Tensor> hidden;
  std::map<int64_t, Routing> routes;  // per MoE layer
};

// The per-layer KV storage a cached forward reads and appends to (owned by runtime/KvCache).
struct KvCacheView {
  std::vector<float*> layers;  // per layer: rows [capacity, config.kv_cache_row()]
  int64_t capacity = 0;        // tokens
  int64_t n_past = 0;          // tokens already stored
};

class Model {
 public:
  Model(ModelConfig config, ModelWeights weights);
  // Reads config.json and the safetensors of a checkpoint directory.
  static Model load(const std::string& dir);

  const ModelConfig& config() const { return config_; }
  const ModelWeights& weights() const { return weights_; }
  void set_mla_mode(MlaMode mode) { mla_mode_ = mode; }

  // ids [n_seqs, n_tokens] at positions 0 .. n_tokens-1, no cache -> logits [n_seqs * n_tokens, V].
  Tensor forward(const int64_t* ids, int64_t n_seqs, int64_t n_tokens,
                 ForwardRecord* record = nullptr) const;

  // One sequence: ids [n_tokens] at positions cache.n_past .., appended to the cache (the caller
  // advances n_past). Returns the logits of the last token [V].
  Tensor forward_cached(const int64_t* ids, int64_t n_tokens, KvCacheView& cache) const;

 private:
  // Runs the decoder stack on embedded tokens x [n_seqs * n_tokens, H] in place.
  void run_layers(float* x, int64_t n_seqs, int64_t n_tokens, KvCacheView* cache,
                  ForwardRecord* record) const;
  void check_ids(const int64_t* ids, int64_t n) const;

  ModelConfig config_;
  ModelWeights weights_;
  MlaMode mla_mode_ = MlaMode::kAuto;
};

// Mean next-token cross-entropy of logits [n_seqs * n_tokens, V] against ids[:, 1:]
// (positions 0 .. n_tokens-2 predict 1 .. n_tokens-1), computed in double.
double next_token_loss(const float* logits, const int64_t* ids, int64_t n_seqs, int64_t n_tokens,
                       int64_t vocab_size);

}  // namespace dsmoe
