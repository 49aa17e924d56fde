// weights.h: the parameters of a DeepSeekMoE V1 / V2 / V3 model as named views, and the one
// visitor that walks them with their checkpoint names and shapes (load, init, save all use it).
#pragma once
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "kernels/quant.h"
#include "model/config.h"
#include "tensor/random.h"
#include "tensor/tensor.h"

namespace dsmoe {

class Checkpoint;
struct TensorInfo;

struct MlpWeights {  // SwiGLU: down(silu(gate x) * up x)
  Tensor gate_proj;  // [I, H]
  Tensor up_proj;    // [I, H]
  Tensor down_proj;  // [H, I]
};

struct AttentionWeights {
  // MLA (V2/V3)
  Tensor q_proj;              // [n_heads * qk_head_dim, H]   when q_lora_rank == 0
  Tensor q_a_proj;            // [q_lora_rank, H]
  Tensor q_a_layernorm;       // [q_lora_rank]
  Tensor q_b_proj;            // [n_heads * qk_head_dim, q_lora_rank]
  Tensor kv_a_proj_with_mqa;  // [kv_lora_rank + qk_rope_head_dim, H]
  Tensor kv_a_layernorm;      // [kv_lora_rank]
  Tensor kv_b_proj;           // [n_heads * (qk_nope_head_dim + v_head_dim), kv_lora_rank]
  // Multi-head attention (V1); q_proj above is shared: [n_heads * head_dim, H]
  Tensor k_proj, v_proj;                  // [n_kv_heads * head_dim, H]
  Tensor q_bias, k_bias, v_bias, o_bias;  // only with attention_bias
  Tensor o_proj;                          // [H, n_heads * v_head_dim] (V1: n_heads * head_dim)
  // Inference with compact weights only (derive_absorbed_weights, model/quantize.h): kv_b_proj's
  // two halves per head for the absorbed decode, in the weight format: W_UK[h]^T
  // [kv_lora_rank, qk_nope_head_dim] and W_UV[h] [v_head_dim, kv_lora_rank]. Not checkpoint
  // tensors (for_each_tensor does not visit them); kv_b_proj stays float32 (multi-token absorbed
  // attention, training).
  std::vector<std::shared_ptr<const QuantMatrix>> absorbed_uk_t, absorbed_uv;
  // kv_b_proj in the same format, for the naive prefill's expansion of the latent rows into keys
  // and values (one quantized GEMM instead of a float32 one); null where there are no halves.
  std::shared_ptr<const QuantMatrix> kv_b_compact;
};

class ExpertParallel;  // model/expert_parallel.h

// The routed experts a process holds: [first, end) of every MoE layer (all by default).
struct ExpertShard {
  int64_t first = 0;
  int64_t end = INT64_MAX;
  bool holds(int64_t expert) const { return expert >= first && expert < end; }
};

struct MoeWeights {
  Tensor gate;                      // [n_routed_experts, H] router
  Tensor e_score_correction_bias;   // [n_routed_experts] V3 noaux_tc only: selection bias
  Tensor noise_weight;              // [n_routed_experts, H] noisy gating only
  std::vector<MlpWeights> experts;  // n_routed_experts, width moe_intermediate_size
  MlpWeights shared;                // width moe_intermediate_size * n_shared_experts (empty when 0)
  // Set by use_expert_parallel: the experts live on several ranks (those outside this rank's
  // shard are empty). Not a tensor; null in one process.
  std::shared_ptr<ExpertParallel> expert_parallel;
};

struct LayerWeights {
  Tensor input_layernorm;           // [H]
  Tensor post_attention_layernorm;  // [H]
  AttentionWeights attn;
  MlpWeights mlp;  // dense layers
  MoeWeights moe;  // MoE layers
};

// Multi-token prediction module k of DeepSeek-V3 (sec. 2.2), stored as the release does under
// model.layers.{num_hidden_layers + k}. Its embedding and output head are the main model's
// (the release also stores copies, as embed_tokens and shared_head.head).
struct MtpWeights {
  Tensor enorm;             // [H] RMSNorm of the embedding of the token k+1 ahead
  Tensor hnorm;             // [H] RMSNorm of the previous depth's hidden state
  Tensor eh_proj;           // [H, 2H] projection of [enorm(embedding) | hnorm(hidden)]
  LayerWeights block;       // its transformer block
  Tensor shared_head_norm;  // [H] norm before the shared output head
};

struct ModelWeights {
  Tensor embed_tokens;  // [V, H]
  std::vector<LayerWeights> layers;
  Tensor norm;                  // [H]
  Tensor lm_head;               // [V, H] (a view of embed_tokens when tie_word_embeddings)
  std::vector<MtpWeights> mtp;  // MTP modules; empty: none (size it before for_each_tensor)

  // Decoder block by checkpoint layer index: the main layers, then the MTP modules' blocks.
  LayerWeights& block(int64_t index) {
    const int64_t n_main = static_cast<int64_t>(layers.size());
    return index < n_main ? layers[index] : mtp[index - n_main].block;
  }
};

// How a tensor is initialised and trained: kRouterBias is a buffer (no gradient; updated by the
// aux-loss-free rule), kNoise the learned noise projection of noisy gating (zeros at init).
enum class TensorRole { kMatrix, kNorm, kEmbedding, kBias, kRouterBias, kNoise };

// Calls visit(name, shape, role, tensor) for every checkpoint tensor of `config`, with the names
// transformers writes (model.layers.L.self_attn.kv_b_proj.weight, ...
// model.layers.L.mlp.experts.E.down_proj.weight). Sizes `weights.layers` first. lm_head is not
// visited when tie_word_embeddings (it is set to embed_tokens after). Then the weights.mtp.size()
// MTP modules.
using TensorVisitor = std::function<void(const std::string& name, const Shape& shape,
                                         TensorRole role, Tensor& tensor)>;
void for_each_tensor(const ModelConfig& config, ModelWeights& weights, const TensorVisitor& visit);

// MTP modules a checkpoint carries: num_nextn_predict_layers when its first module's eh_proj is
// present, else 0.
int64_t mtp_modules_in(const ModelConfig& config, const Checkpoint& checkpoint);

// Whether the checkpoint's linear weights are FP8 as DeepSeek-V3 ships them (F8_E4M3 with a
// `weight_scale_inv`): then `--weights` defaults to fp8, which keeps them so.
bool holds_fp8_weights(const ModelConfig& config, const Checkpoint& checkpoint);

// An F8_E4M3 checkpoint weight as it is stored (kFP8): its e4m3 bytes and block scales, copied
// out of the mapping; an e4m3 NaN is an error naming the file, tensor and element.
QuantMatrix load_fp8_as_stored(const Checkpoint& checkpoint, const TensorInfo& info);

// The routed expert a checkpoint tensor belongs to (model.layers.L.mlp.experts.E.*), else -1.
int64_t routed_expert_of(const std::string& name);

// Loads every tensor as float32 (converting BF16/F16/F8 with its scale); a missing or mis-shaped
// tensor is an error naming the file and tensor. Extra tensors (MTP layers
// model.layers.{num_hidden_layers}.*, FP8 scales) are left alone.
// With a `format` other than kF32, each linear weight is quantized as soon as it is read
// (model/quantize.h); the file's pages of every tensor that was copied are released, so peak
// memory stays near the size of the model as it is kept. kFP8 keeps F8_E4M3 weights as stored
// (e4m3 bytes and block scales, never expanded; an e4m3 NaN is an error) and the other linear
// weights of such a checkpoint too (bf16 as bf16, float32 as float32: V3's lm_head); on a
// checkpoint without FP8 weights it quantizes the linear weights to fp8.
// With a `shard`, only the routed experts it holds are read (the others stay empty tensors).
ModelWeights load_weights(const ModelConfig& config, const Checkpoint& checkpoint,
                          WeightFormat format = WeightFormat::kF32, ExpertShard shard = {});

// Fills one tensor as random_weights does (the order of calls fixes the numbers).
void init_random_tensor(const Shape& shape, TensorRole role, Rng& rng, float* data);

// Random weights: matrices ~N(0, 1/fan_in), embeddings ~N(0, 1), norms 1, biases 0.
ModelWeights random_weights(const ModelConfig& config, uint64_t seed);

// Number of parameters, and of those a token activates (for the benchmark's byte counts).
int64_t count_parameters(const ModelConfig& config);

}  // namespace dsmoe
