#include "model/quantize.h"

#include <fmt/format.h>

#include <algorithm>
#include <cstdlib>
#include <string>
#include <vector>

#include "io/safetensors.h"
#include "kernels/cpu/gemm_bf16.h"
#include "kernels/cpu/gemm_quant.h"
#include "model/weights.h"

namespace dsmoe {
namespace {

bool ends_with(const std::string& text, const std::string& suffix) {
  return text.size() >= suffix.size() &&
         text.compare(text.size() - suffix.size(), suffix.size(), suffix) == 0;
}

int64_t tensor_bytes(const Tensor& t) {
  return t.quant != nullptr ? static_cast<int64_t>(t.quant->size_bytes())
                            : t.numel() * static_cast<int64_t>(sizeof(float));
}

// DSMOE_BLOCK_PANELS=0 keeps Q8_0 / Q4_0 weights in rows (an A/B switch for benchmarks).
bool block_panels_off() {
  const char* value = std::getenv("DSMOE_BLOCK_PANELS");
  return value != nullptr && std::string(value) == "0";
}

}  // namespace

bool is_quantizable(const ModelConfig& config, const std::string& name, const Shape& shape,
                    TensorRole role) {
  return role == TensorRole::kMatrix && shape.size() == 2 && shape[1] % kQuantBlock == 0 &&
         !ends_with(name, "mlp.gate.weight") && !ends_with(name, "kv_b_proj.weight") &&
         !(config.tie_word_embeddings && name == "lm_head.weight");
}

bool product_panels(WeightFormat format) {
  if (format == WeightFormat::kQ8_0 || format == WeightFormat::kQ4_0)
    return cpu::gemm_quant_native() && !block_panels_off();
  return format == WeightFormat::kBF16 && cpu::gemm_bf16_native();
}

void quantize_tensor(Tensor& tensor, WeightFormat format, bool panels) {
  if (format == WeightFormat::kF32 || tensor.quant != nullptr) return;
  tensor.quant = std::make_shared<const QuantMatrix>(
      quantize_matrix(tensor.data, tensor.shape[0], tensor.shape[1], format, panels));
  tensor.data = nullptr;
  tensor.owner.reset();  // frees the float32 copy (or drops this tensor's hold on the mmap)
}

void quantize_weights(const ModelConfig& config, ModelWeights& weights, WeightFormat format) {
  if (format == WeightFormat::kF32) return;
  for_each_tensor(
      config, weights,
      [&](const std::string& name, const Shape& shape, TensorRole role, Tensor& tensor) {
        if (is_quantizable(config, name, shape, role))
          quantize_tensor(tensor, format, product_panels(format));
      });
}

void derive_absorbed_weights(const ModelConfig& c, ModelWeights& weights,
                             WeightFormat model_format) {
  // Q4_0 models keep these at Q8_0: a few percent of the bytes, where 4 bits would put ~5x the
  // rounding of Q8_0 on every attention score of a decoded token (tests/test_absorbed_compact).
  const WeightFormat format =
      model_format == WeightFormat::kQ4_0 ? WeightFormat::kQ8_0 : model_format;
  const int64_t nope = c.qk_nope_head_dim, dv = c.v_head_dim, rank = c.kv_lora_rank;
  const bool blocked = format == WeightFormat::kQ8_0 || format == WeightFormat::kQ4_0;
  if (format == WeightFormat::kF32 || !c.use_mla() ||
      (blocked && (nope % kQuantBlock != 0 || rank % kQuantBlock != 0)))
    return;
  const bool panels = product_panels(format);
  std::vector<float> uk_t(rank * nope);  // (rank, nope)
  for (LayerWeights& layer : weights.layers) {
    AttentionWeights& a = layer.attn;
    if (a.kv_b_proj.data == nullptr) continue;
    a.absorbed_uk_t.clear();
    a.absorbed_uv.clear();
    a.kv_b_compact.reset();
    // All heads' W_UK^T, then all their W_UV, each list allocated in head order: a decoded
    // token reads each list as one grouped product.
    for (int64_t h = 0; h < c.num_attention_heads; h++) {
      const float* w_uk = a.kv_b_proj.data + h * (nope + dv) * rank;  // [nope, rank]
      for (int64_t i = 0; i < nope; i++)
        for (int64_t r = 0; r < rank; r++) uk_t[r * nope + i] = w_uk[i * rank + r];
      a.absorbed_uk_t.push_back(std::make_shared<const QuantMatrix>(
          quantize_matrix(uk_t.data(), rank, nope, format, panels)));
    }
    for (int64_t h = 0; h < c.num_attention_heads; h++) {
      const float* w_uv = a.kv_b_proj.data + (h * (nope + dv) + nope) * rank;  // [dv, rank]
      a.absorbed_uv.push_back(
          std::make_shared<const QuantMatrix>(quantize_matrix(w_uv, dv, rank, format, panels)));
    }
    // Q8_0 only: the int8 GEMM runs ~10% of a Q8_0 / Q4_0 prefill faster on Zen 5 (OpenBLAS's
    // float32 GEMM there is its Haswell kernel); bf16's was slower than float32 (infer-lite8
    // pp512 290 -> 265 tokens/s), and fp8's expands the weights to float32 anyway.
    if (blocked)
      a.kv_b_compact = std::make_shared<const QuantMatrix>(quantize_matrix(
          a.kv_b_proj.data, c.num_attention_heads * (nope + dv), rank, format, panels));
  }
}

void derive_absorbed_weights_as_stored(const ModelConfig& c, const Checkpoint& checkpoint,
                                       ModelWeights& weights) {
  const int64_t nope = c.qk_nope_head_dim, dv = c.v_head_dim, rank = c.kv_lora_rank;
  if (!c.use_mla() || nope % kFp8Block != 0 || dv % kFp8Block != 0) return;
  const int64_t rank_blocks = fp8_blocks(rank), nope_blocks = nope / kFp8Block;
  for (size_t L = 0; L < weights.layers.size(); L++) {
    AttentionWeights& a = weights.layers[L].attn;
    const std::string name = fmt::format("model.layers.{}.self_attn.kv_b_proj.weight", L);
    const TensorInfo* info = checkpoint.find(name);
    if (info == nullptr || info->dtype != DType::kF8_E4M3 || a.kv_b_proj.data == nullptr) continue;
    const QuantMatrix kv_b = load_fp8_as_stored(checkpoint, *info);  // [heads (nope + dv), rank]
    checkpoint.release(name);
    a.absorbed_uk_t.clear();
    a.kv_b_compact.reset();
    a.absorbed_uv.clear();
    for (int64_t h = 0; h < c.num_attention_heads; h++) {
      const int64_t k_row = h * (nope + dv), v_row = k_row + nope;           // (multiples of 128)
      QuantMatrix uk_t = make_quant_matrix(rank, nope, WeightFormat::kFP8);  // [rank, nope]
      for (int64_t i = 0; i < nope; i++)
        for (int64_t r = 0; r < rank; r++)
          uk_t.data[r * nope + i] = kv_b.data[(k_row + i) * rank + r];
      for (int64_t rb = 0; rb < rank_blocks; rb++)
        for (int64_t ib = 0; ib < nope_blocks; ib++)
          uk_t.block_scales[rb * nope_blocks + ib] =
              kv_b.block_scales[(k_row / kFp8Block + ib) * rank_blocks + rb];
      QuantMatrix uv = make_quant_matrix(dv, rank, WeightFormat::kFP8);  // [dv, rank]
      std::copy_n(kv_b.data.begin() + v_row * rank, dv * rank, uv.data.begin());
      std::copy_n(kv_b.block_scales.begin() + v_row / kFp8Block * rank_blocks,
                  dv / kFp8Block * rank_blocks, uv.block_scales.begin());
      a.absorbed_uk_t.push_back(std::make_shared<const QuantMatrix>(std::move(uk_t)));
      a.absorbed_uv.push_back(std::make_shared<const QuantMatrix>(std::move(uv)));
    }
  }
}

namespace {

// Bytes of a layer's derived absorbed-decode matrices (0 when there are none).
int64_t absorbed_bytes(const AttentionWeights& a) {
  int64_t bytes = 0;
  for (const auto* list : {&a.absorbed_uk_t, &a.absorbed_uv})
    for (const auto& m : *list) bytes += static_cast<int64_t>(m->size_bytes());
  return bytes;
}

// Bytes of a layer's derived kv_b_proj for prefill (0 when there is none).
int64_t compact_kv_b_bytes(const AttentionWeights& a) {
  return a.kv_b_compact != nullptr ? static_cast<int64_t>(a.kv_b_compact->size_bytes()) : 0;
}

}  // namespace

int64_t active_weight_bytes_per_token(const ModelConfig& c, ModelWeights& weights) {
  // Visit the main model only: MTP modules do not run in inference.
  std::vector<MtpWeights> mtp;
  std::swap(mtp, weights.mtp);
  double bytes = 0.0;
  const double routed_share =
      c.n_routed_experts > 0 ? static_cast<double>(c.num_experts_per_tok) / c.n_routed_experts : 0;
  for_each_tensor(c, weights,
                  [&](const std::string& name, const Shape&, TensorRole role, Tensor& tensor) {
                    if (role == TensorRole::kEmbedding) {
                      bytes += c.hidden_size * sizeof(float);  // one row
                    } else if (name.ends_with("kv_b_proj.weight") && tensor.data != nullptr) {
                      // Decode reads the derived per-head halves where there are (absorbed_bytes
                      // below).
                      bool derived = false;
                      for (const LayerWeights& layer : weights.layers)
                        if (layer.attn.kv_b_proj.data == tensor.data)
                          derived = !layer.attn.absorbed_uk_t.empty();
                      if (!derived) bytes += tensor_bytes(tensor);
                    } else if (name.find(".mlp.experts.") != std::string::npos) {
                      bytes += routed_share * tensor_bytes(tensor);
                    } else {
                      bytes += tensor_bytes(tensor);
                    }
                  });
  if (c.tie_word_embeddings) bytes += tensor_bytes(weights.lm_head);
  for (const LayerWeights& layer : weights.layers) bytes += absorbed_bytes(layer.attn);
  std::swap(mtp, weights.mtp);
  return static_cast<int64_t>(bytes);
}

int64_t active_parameters_per_token(const ModelConfig& c) {
  ModelWeights shapes;  // no data: count elements of the shapes
  double params = 0.0;
  const double routed_share =
      c.n_routed_experts > 0 ? static_cast<double>(c.num_experts_per_tok) / c.n_routed_experts : 0;
  for_each_tensor(c, shapes,
                  [&](const std::string& name, const Shape& shape, TensorRole role, Tensor&) {
                    const double n = static_cast<double>(shape_numel(shape));
                    if (role == TensorRole::kEmbedding)
                      params += c.hidden_size;  // one row
                    else if (name.find(".mlp.experts.") != std::string::npos)
                      params += routed_share * n;
                    else
                      params += n;
                  });
  if (c.tie_word_embeddings) params += static_cast<double>(c.vocab_size) * c.hidden_size;
  return static_cast<int64_t>(params);
}

int64_t weight_bytes(const ModelConfig& config, ModelWeights& weights) {
  int64_t bytes = 0;
  for_each_tensor(config, weights,
                  [&](const std::string&, const Shape&, TensorRole, Tensor& tensor) {
                    bytes += tensor_bytes(tensor);
                  });
  for (const LayerWeights& layer : weights.layers)
    bytes += absorbed_bytes(layer.attn) + compact_kv_b_bytes(layer.attn);
  return bytes;
}

}  // namespace dsmoe
