// quantize.h: inference weights in compact formats (bf16, Q8_0, Q4_0, fp8), converted at load, and
// the bytes a decoded token reads (for the roofline of `dsmoe bench`).
#pragma once
#include <cstdint>
#include <string>

#include "kernels/quant.h"
#include "model/config.h"
#include "model/weights.h"

namespace dsmoe {

// Re-stores the linear weights of an inference model in `format`, freeing their float32 copies:
// attention projections, dense and expert MLPs, and lm_head (unless tied). Left in float32: the
// router gate (routing decisions stay exact), kv_b_proj (MLA reads it in per-head slices), the
// embedding (a lookup), norms, and any matrix whose row width is not a multiple of 32.
// kF32 leaves everything as it is. Training needs float32 weights: never quantize a model that
// will be trained.
void quantize_weights(const ModelConfig& config, ModelWeights& weights, WeightFormat format);

// Absorbed MLA decode with compact weights: stores each MLA layer's kv_b_proj halves per head in
// `format` (Q8_0 for a Q4_0 model; AttentionWeights::absorbed_uk_t / absorbed_uv), so that a
// decoded token reads them compact instead of kv_b_proj in float32. Nothing for kF32, for V1, or
// for a block format whose row widths (qk_nope_head_dim, kv_lora_rank) are not multiples of 32.
// kFP8 rounds the halves to e4m3 with their own 128 x 128 blocks: for a model whose other
// weights were rounded to fp8 too; an FP8 checkpoint takes derive_absorbed_weights_as_stored.
void derive_absorbed_weights(const ModelConfig& config, ModelWeights& weights, WeightFormat format);

// The same for an FP8 checkpoint loaded as kFP8: the halves are the checkpoint's own e4m3 bytes
// and block scales (the uk half transposed), so they hold exactly the values of the expanded
// kv_b_proj. Only where every head's halves begin and end on the 128-row blocks of the scales
// (qk_nope_head_dim and v_head_dim multiples of 128, as in DeepSeek-V3); elsewhere nothing, and
// decode reads the float32 kv_b_proj (re-rounding the halves would change the weights).
void derive_absorbed_weights_as_stored(const ModelConfig& config, const Checkpoint& checkpoint,
                                       ModelWeights& weights);

// Whether quantize_weights re-stores this tensor (see above).
bool is_quantizable(const ModelConfig& config, const std::string& name, const Shape& shape,
                    TensorRole role);
// Re-stores one float32 tensor (a linear layer's weight) in `format` and frees its float32 data;
// `panels`: the bf16 panel layout (QuantMatrix::panels), as product_panels(format) says for
// linear weights.
void quantize_tensor(Tensor& tensor, WeightFormat format, bool panels);
// Whether linear weights in `format` are stored in a panel layout (QuantMatrix::panels): bf16
// where the CPU runs the fast bf16 GEMM, whose prefill then reads the weights as stored and whose
// decode streams them once; Q8_0 / Q4_0 in block panels where it has AVX-512 VNNI (decode takes 16
// rows per instruction, prefill packs without gathering), unless DSMOE_BLOCK_PANELS=0.
bool product_panels(WeightFormat format);

// Bytes of weights one decoded token reads: every layer's attention and norms, dense MLPs,
// shared experts, the router, num_experts_per_tok / n_routed_experts of the routed experts,
// the final norm and lm_head, and one embedding row. MTP modules are not counted.
int64_t active_weight_bytes_per_token(const ModelConfig& config, ModelWeights& weights);

// Parameters one decoded token uses, by the same accounting (from the shapes alone).
int64_t active_parameters_per_token(const ModelConfig& config);

// Bytes of all weights as stored now.
int64_t weight_bytes(const ModelConfig& config, ModelWeights& weights);

}  // namespace dsmoe
