// transformer.h: Model, a whole DeepSeekMoE V1 / DeepSeek-V2 / DeepSeek-V3 causal LM: embedding,
// decoder layers (attention + dense MLP or MoE), final norm and LM head.
#pragma once
#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "model/attention.h"
#include "model/config.h"
#include "model/layer.h"
#include "model/moe.h"
#include "model/mtp.h"
#include "model/quantize.h"
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
  // Cached forwards: the last layer's output before the final norm (what the MTP modules read),
  // [rows, H] for the rows of the pass (forward_cached: its tokens; forward_cached_batch: the
  // rows that went through it together, in step order).
  bool keep_last_hidden = false;
  Tensor last_hidden;
};

// The per-layer KV storage a cached forward reads and appends to (owned by runtime/KvCache).
struct KvCacheView {
  std::vector<float*> layers;  // per layer: rows [capacity, config.kv_cache_row()]
  int64_t capacity = 0;        // tokens
  int64_t n_past = 0;          // tokens already stored
};

// One sequence's share of a batched cached forward (Model::forward_cached_batch).
struct CachedStep {
  const int64_t* ids = nullptr;  // [n_tokens] new tokens, at positions cache->n_past ..
  int64_t n_tokens = 0;
  KvCacheView* cache = nullptr;  // this sequence's own cache (the caller advances n_past)
  bool all_logits = false;       // logits of every new token; else of the last one only
};

// Everything a training forward keeps (reused across steps to avoid reallocation).
struct TrainActs {
  std::vector<LayerActs> layers;
  std::vector<float> x_final;  // (N, H) output of the last layer, before the final norm
  std::vector<float> normed;   // (N, H) after the final norm
  std::vector<float> logits;   // (N, V)
  std::vector<float> dlogits;  // (N, V) backward scratch, kept so that steps reuse its pages
  std::vector<MtpActs> mtp;    // per MTP module (empty when MTP is off)
};

// Options of a training forward.
struct TrainOptions {
  bool balance_losses = true;  // add the configured balance losses to the objective
  bool cross_entropy = true;   // false: differentiate the balance losses alone (the loss is
                               // still measured)
  Rng* noise_rng = nullptr;    // noisy gating draws (needed when config.noisy_gating)
  bool mtp = true;  // DeepSeek-V3 multi-token prediction when the model has MTP modules (the
                    // grads then need them too: zeros_like_weights(config, weights.mtp.size()))
};

// What one training forward/backward measured.
struct StepStats {
  double loss = 0.0;             // mean next-token cross-entropy
  double aux_loss = 0.0;         // sum over MoE layers of their balance losses (in the objective)
  std::vector<double> mtp_loss;  // L_k per MTP depth k = 1..D (empty: MTP off)
  double mtp_scale = 0.0;        // lambda / D: the objective adds mtp_scale * sum_k L_k
  // What is differentiated: loss + aux_loss + mtp_scale * sum_k mtp_loss[k] (without the two
  // cross-entropy terms when TrainOptions.cross_entropy is false).
  double objective = 0.0;
  // Per MoE layer; MTP module k's block is layer num_hidden_layers + k - 1 (its checkpoint name).
  std::map<int64_t, BalanceLosses> aux;
  std::map<int64_t, std::vector<int64_t>> expert_load;  // per MoE layer: tokens per expert
  int64_t n_dropped = 0;                                // assignments over capacity
};

// Gradients (or optimizer moments): zero tensors shaped like the model's weights.
// n_mtp: MTP modules to include (model.weights().mtp.size() for a model's gradients).
ModelWeights zeros_like_weights(const ModelConfig& config, int64_t n_mtp = 0);

class Model {
 public:
  Model(ModelConfig config, ModelWeights weights);
  // Reads config.json and the safetensors of a checkpoint directory; with a `format` other than
  // kF32 the linear weights are quantized while loading (see quantize()).
  // With a `shard`, only those routed experts are read (expert parallelism).
  static Model load(const std::string& dir, WeightFormat format = WeightFormat::kF32,
                    ExpertShard shard = {});

  const ModelConfig& config() const { return config_; }
  const ModelWeights& weights() const { return weights_; }
  ModelWeights& mutable_weights() { return weights_; }
  void set_mla_mode(MlaMode mode) { mla_mode_ = mode; }
  // forward_cached_batch's products over the rows that go through it together: exact (default),
  // per-row kernels, each row's bits those of the row alone; or not, the GEMMs at the batch's row
  // count (quantized weights on the int8 / bf16 matrix units), faster from a few rows on, where a
  // sequence's logits then differ from its logits alone by the order of float32 sums.
  void set_exact_batches(bool exact) { exact_batches_ = exact; }
  bool exact_batches() const { return exact_batches_; }
  // Inference: re-store the linear weights in `format` (see quantize_weights). The model can no
  // longer be trained.
  void quantize(WeightFormat format);
  WeightFormat weight_format() const { return weight_format_; }

  // ids [n_seqs, n_tokens] at positions 0 .. n_tokens-1, no cache -> logits [n_seqs * n_tokens, V].
  Tensor forward(const int64_t* ids, int64_t n_seqs, int64_t n_tokens,
                 ForwardRecord* record = nullptr) const;

  // Training step core: forward with activations kept, mean next-token cross-entropy (+ balance
  // losses, + the MTP losses when the model has MTP modules and options.mtp), and backward:
  // grads += d objective / d weights (grads from zeros_like_weights).
  StepStats forward_backward(const int64_t* ids, int64_t n_seqs, int64_t n_tokens,
                             ModelWeights& grads, TrainActs& acts,
                             const TrainOptions& options = {}) const;

  // One sequence: ids [n_tokens] at positions cache.n_past .., appended to the cache (the caller
  // advances n_past). Returns the logits of the last token [V].
  // `record` (optional): keep_last_hidden only.
  Tensor forward_cached(const int64_t* ids, int64_t n_tokens, KvCacheView& cache,
                        ForwardRecord* record = nullptr) const;

  // Inference with MTP module `module` (0-based; DeepSeek-V3 sec. 2.2, eq. 21-23): rows i =
  // cache.n_past .. + n_tokens - 1 at RoPE positions i (as in training), row i from h_prev[i]
  // (the main stack's last hidden state at position i, before the final norm, or the module's
  // own output when drafting further ahead) and ids[i] (the token one ahead of it). Appends the
  // rows to the module's cache (one layer; the caller advances n_past), writes the block's
  // outputs h_out [n_tokens, H] and returns the logits of the last row [V] (they predict the
  // token two ahead of its position).
  Tensor mtp_forward_cached(int64_t module, const float* h_prev, const int64_t* ids,
                            int64_t n_tokens, KvCacheView& cache, float* h_out) const;

  // Several sequences of different lengths, each with its own cache, in one step. Returns logits
  // [sum over steps of (all_logits ? n_tokens : 1), V], the steps' rows in order. A sequence's
  // logits do not depend on which other sequences share the step: they are bit for bit those of
  // forward_cached on that step alone (an all_logits step: on its tokens one at a time, as
  // decoding them would give; unless set_exact_batches(false)). The rows of decode steps and
  // all_logits steps go through every product together (each weight read once for all of them,
  // with per-row kernels), each
  // attending to its own cache; a prefill chunk (n_tokens > 1, last logits) runs as a pass of its
  // own. Steps must not share a cache.
  // `record` (optional, keep_routes only): the routing of the rows that went through the pass
  // together, per MoE layer, in step order.
  Tensor forward_cached_batch(const std::vector<CachedStep>& steps,
                              ForwardRecord* record = nullptr) const;

 private:
  // Runs the decoder stack on embedded tokens x [n_seqs * n_tokens, H] in place.
  // `train` (optional) keeps each layer's activations.
  void run_layers(float* x, int64_t n_seqs, int64_t n_tokens, KvCacheView* cache,
                  ForwardRecord* record, std::vector<LayerActs>* train = nullptr,
                  const MoeTraining* moe_training = nullptr) const;
  // forward_cached_batch's pass over the rows of steps[which] together; a step's logits rows go
  // to logits [.., V] from row first_out[step] on.
  void decode_rows(const std::vector<CachedStep>& steps, const std::vector<size_t>& which,
                   const std::vector<int64_t>& first_out, float* logits,
                   ForwardRecord* record) const;
  void embed(const int64_t* ids, int64_t n, float* x) const;
  void check_ids(const int64_t* ids, int64_t n) const;

  ModelConfig config_;
  ModelWeights weights_;
  MlaMode mla_mode_ = MlaMode::kAuto;
  bool exact_batches_ = true;
  WeightFormat weight_format_ = WeightFormat::kF32;
};

// d loss / d logits of next_token_loss into dlogits [n_seqs * n_tokens, V] (the last position
// of each sequence gets zeros); returns the loss.
double next_token_loss_backward(const float* logits, const int64_t* ids, int64_t n_seqs,
                                int64_t n_tokens, int64_t vocab_size, float* dlogits);

// Mean next-token cross-entropy of logits [n_seqs * n_tokens, V] against ids[:, 1:]
// (positions 0 .. n_tokens-2 predict 1 .. n_tokens-1), computed in double.
double next_token_loss(const float* logits, const int64_t* ids, int64_t n_seqs, int64_t n_tokens,
                       int64_t vocab_size);

}  // namespace dsmoe
