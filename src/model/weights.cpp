#include "model/weights.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <memory>
#include <vector>

#include "io/safetensors.h"
#include "model/quantize.h"
#include "tensor/random.h"
#include "util/check.h"

namespace dsmoe {
namespace {

void visit_mlp(const std::string& prefix, int64_t hidden, int64_t width, MlpWeights& mlp,
               const TensorVisitor& visit) {
  visit(prefix + ".gate_proj.weight", {width, hidden}, TensorRole::kMatrix, mlp.gate_proj);
  visit(prefix + ".up_proj.weight", {width, hidden}, TensorRole::kMatrix, mlp.up_proj);
  visit(prefix + ".down_proj.weight", {hidden, width}, TensorRole::kMatrix, mlp.down_proj);
}

void visit_mla(const ModelConfig& c, const std::string& p, AttentionWeights& a,
               const TensorVisitor& visit) {
  const int64_t H = c.hidden_size, n_heads = c.num_attention_heads;
  if (c.q_lora_rank == 0) {
    visit(p + ".q_proj.weight", {n_heads * c.qk_head_dim(), H}, TensorRole::kMatrix, a.q_proj);
  } else {
    visit(p + ".q_a_proj.weight", {c.q_lora_rank, H}, TensorRole::kMatrix, a.q_a_proj);
    visit(p + ".q_a_layernorm.weight", {c.q_lora_rank}, TensorRole::kNorm, a.q_a_layernorm);
    visit(p + ".q_b_proj.weight", {n_heads * c.qk_head_dim(), c.q_lora_rank}, TensorRole::kMatrix,
          a.q_b_proj);
  }
  visit(p + ".kv_a_proj_with_mqa.weight", {c.kv_lora_rank + c.qk_rope_head_dim, H},
        TensorRole::kMatrix, a.kv_a_proj_with_mqa);
  visit(p + ".kv_a_layernorm.weight", {c.kv_lora_rank}, TensorRole::kNorm, a.kv_a_layernorm);
  visit(p + ".kv_b_proj.weight", {n_heads * (c.qk_nope_head_dim + c.v_head_dim), c.kv_lora_rank},
        TensorRole::kMatrix, a.kv_b_proj);
  visit(p + ".o_proj.weight", {H, n_heads * c.v_head_dim}, TensorRole::kMatrix, a.o_proj);
}

void visit_mha(const ModelConfig& c, const std::string& p, AttentionWeights& a,
               const TensorVisitor& visit) {
  const int64_t H = c.hidden_size, q_dim = c.num_attention_heads * c.head_dim;
  const int64_t kv_dim = c.num_key_value_heads * c.head_dim;
  visit(p + ".q_proj.weight", {q_dim, H}, TensorRole::kMatrix, a.q_proj);
  visit(p + ".k_proj.weight", {kv_dim, H}, TensorRole::kMatrix, a.k_proj);
  visit(p + ".v_proj.weight", {kv_dim, H}, TensorRole::kMatrix, a.v_proj);
  visit(p + ".o_proj.weight", {H, q_dim}, TensorRole::kMatrix, a.o_proj);
  if (!c.attention_bias) return;
  visit(p + ".q_proj.bias", {q_dim}, TensorRole::kBias, a.q_bias);
  visit(p + ".k_proj.bias", {kv_dim}, TensorRole::kBias, a.k_bias);
  visit(p + ".v_proj.bias", {kv_dim}, TensorRole::kBias, a.v_bias);
  visit(p + ".o_proj.bias", {H}, TensorRole::kBias, a.o_bias);
}

void visit_moe(const ModelConfig& c, const std::string& p, MoeWeights& moe,
               const TensorVisitor& visit) {
  const int64_t H = c.hidden_size, E = c.n_routed_experts;
  visit(p + ".gate.weight", {E, H}, TensorRole::kMatrix, moe.gate);
  if (c.has_router_bias())
    visit(p + ".gate.e_score_correction_bias", {E}, TensorRole::kRouterBias,
          moe.e_score_correction_bias);
  if (c.noisy_gating) visit(p + ".gate.noise_weight", {E, H}, TensorRole::kNoise, moe.noise_weight);
  moe.experts.resize(E);
  for (int64_t e = 0; e < E; e++)
    visit_mlp(fmt::format("{}.experts.{}", p, e), H, c.moe_intermediate_size, moe.experts[e],
              visit);
  if (c.n_shared_experts > 0)
    visit_mlp(p + ".shared_experts", H, c.moe_intermediate_size * c.n_shared_experts, moe.shared,
              visit);
}

void visit_layer(const ModelConfig& c, int64_t L, LayerWeights& layer, const TensorVisitor& visit) {
  const int64_t H = c.hidden_size;
  const std::string p = fmt::format("model.layers.{}", L);
  visit(p + ".input_layernorm.weight", {H}, TensorRole::kNorm, layer.input_layernorm);
  if (c.use_mla())
    visit_mla(c, p + ".self_attn", layer.attn, visit);
  else
    visit_mha(c, p + ".self_attn", layer.attn, visit);
  visit(p + ".post_attention_layernorm.weight", {H}, TensorRole::kNorm,
        layer.post_attention_layernorm);
  if (c.is_moe_layer(L))
    visit_moe(c, p + ".mlp", layer.moe, visit);
  else
    visit_mlp(p + ".mlp", H, c.intermediate_size, layer.mlp, visit);
}

}  // namespace

void for_each_tensor(const ModelConfig& c, ModelWeights& w, const TensorVisitor& visit) {
  const int64_t H = c.hidden_size;
  visit("model.embed_tokens.weight", {c.vocab_size, H}, TensorRole::kEmbedding, w.embed_tokens);
  w.layers.resize(c.num_hidden_layers);
  for (int64_t L = 0; L < c.num_hidden_layers; L++) visit_layer(c, L, w.layers[L], visit);
  visit("model.norm.weight", {H}, TensorRole::kNorm, w.norm);
  if (!c.tie_word_embeddings)
    visit("lm_head.weight", {c.vocab_size, H}, TensorRole::kMatrix, w.lm_head);
  for (size_t k = 0; k < w.mtp.size(); k++) {
    const int64_t L = c.num_hidden_layers + static_cast<int64_t>(k);
    const std::string p = fmt::format("model.layers.{}", L);
    MtpWeights& m = w.mtp[k];
    visit(p + ".enorm.weight", {H}, TensorRole::kNorm, m.enorm);
    visit(p + ".hnorm.weight", {H}, TensorRole::kNorm, m.hnorm);
    visit(p + ".eh_proj.weight", {H, 2 * H}, TensorRole::kMatrix, m.eh_proj);
    visit_layer(c, L, m.block, visit);
    visit(p + ".shared_head.norm.weight", {H}, TensorRole::kNorm, m.shared_head_norm);
  }
}

int64_t mtp_modules_in(const ModelConfig& c, const Checkpoint& checkpoint) {
  if (c.num_nextn_predict_layers <= 0) return 0;
  return checkpoint.has(fmt::format("model.layers.{}.eh_proj.weight", c.num_hidden_layers))
             ? c.num_nextn_predict_layers
             : 0;
}

QuantMatrix load_fp8_as_stored(const Checkpoint& checkpoint, const TensorInfo& info) {
  const int64_t rows = info.shape[0], cols = info.shape[1];
  QuantMatrix matrix = make_quant_matrix(rows, cols, WeightFormat::kFP8);
  matrix.block_scales = checkpoint.f8_block_scales(info.name);
  const int64_t nan_at = fp8_first_nan(info.data, rows * cols);
  DSMOE_CHECK(nan_at < 0,
              "{}: tensor '{}': element [{}, {}] is an e4m3 NaN (0x{:02X}); FP8 weights must be "
              "finite",
              info.file, info.name, nan_at / std::max<int64_t>(cols, 1),
              nan_at % std::max<int64_t>(cols, 1), info.data[std::max<int64_t>(nan_at, 0)]);
  std::memcpy(matrix.data.data(), info.data, info.nbytes);
  return matrix;
}

namespace {

// Reads a 2-D weight straight into `format`, a slice of rows at a time, so that no float32 copy
// of the whole tensor exists at once (V2-Lite's lm_head is 800 MB in float32). F8 weights are
// kept as stored for kFP8 and expanded with their block scales (load_f32) for the other formats,
// as is anything load_f32 would reject. `panels`: the bf16 panel layout (QuantMatrix::panels).
Tensor load_quantized(const Checkpoint& checkpoint, const std::string& name, const Shape& shape,
                      WeightFormat format, bool panels) {
  const TensorInfo& info = checkpoint.get(name);
  const bool fp8_as_stored = format == WeightFormat::kFP8 && info.dtype == DType::kF8_E4M3;
  if (info.shape != shape || (info.dtype == DType::kF8_E4M3 && !fp8_as_stored) ||
      !dtype_is_float(info.dtype)) {
    Tensor tensor = checkpoint.load_f32(name, shape);  // (throws on a bad shape or dtype)
    quantize_tensor(tensor, format, panels);
    return tensor;
  }
  if (fp8_as_stored) {
    Tensor tensor;
    tensor.shape = shape;
    tensor.quant = std::make_shared<const QuantMatrix>(load_fp8_as_stored(checkpoint, info));
    return tensor;
  }
  const int64_t rows = shape[0], cols = shape[1];
  const size_t element = dtype_size(info.dtype);
  QuantMatrix matrix = make_quant_matrix(rows, cols, format, panels);
  // (fp8 scales whole 128-row blocks: slices of whole blocks)
  const int64_t row_unit = format == WeightFormat::kFP8 ? kFp8Block : 1;
  const int64_t slice =
      std::max<int64_t>(1, (int64_t{1} << 22) / std::max<int64_t>(cols, 1) / row_unit) * row_unit;
  std::vector<float> rows_f32(static_cast<size_t>(std::min(slice, rows) * cols));  // (slice, cols)
  for (int64_t begin = 0; begin < rows; begin += slice) {
    const int64_t n = std::min(slice, rows - begin);
    convert_to_f32(info.data + static_cast<size_t>(begin * cols) * element, info.dtype,
                   static_cast<size_t>(n * cols), rows_f32.data());
    try {
      quantize_rows(rows_f32.data(), begin, n, matrix);
    } catch (const Error& e) {
      fail(fmt::format("{}: tensor '{}': {}", info.file, name, e.what()));
    }
  }
  Tensor tensor;
  tensor.shape = shape;
  tensor.quant = std::make_shared<const QuantMatrix>(std::move(matrix));
  return tensor;
}

}  // namespace

bool holds_fp8_weights(const ModelConfig& config, const Checkpoint& checkpoint) {
  ModelWeights shapes;  // names only
  bool fp8 = false;
  for_each_tensor(config, shapes,
                  [&](const std::string& name, const Shape&, TensorRole role, Tensor&) {
                    const TensorInfo* info = checkpoint.find(name);
                    fp8 |= role == TensorRole::kMatrix && info != nullptr &&
                           info->dtype == DType::kF8_E4M3 && checkpoint.has(name + "_scale_inv");
                  });
  return fp8;
}

int64_t routed_expert_of(const std::string& name) {
  static const std::string kExperts = ".mlp.experts.";
  const size_t at = name.find(kExperts);
  if (at == std::string::npos) return -1;
  return std::stoll(name.substr(at + kExperts.size()));
}

ModelWeights load_weights(const ModelConfig& config, const Checkpoint& checkpoint,
                          WeightFormat format, ExpertShard shard) {
  ModelWeights weights;
  weights.mtp.resize(mtp_modules_in(config, checkpoint));
  const bool fp8_checkpoint = format == WeightFormat::kFP8 && holds_fp8_weights(config, checkpoint);
  for_each_tensor(
      config, weights,
      [&](const std::string& name, const Shape& shape, TensorRole role, Tensor& tensor) {
        const int64_t expert = routed_expert_of(name);
        if (expert >= 0 && !shard.holds(expert)) return;  // another rank's expert
        // Rows of the embedding are looked up, not multiplied: held as bf16 where that is exact
        // (a bf16 checkpoint, as DeepSeek releases them) and the lm_head does not share them.
        const bool bf16_embedding =
            format != WeightFormat::kF32 && role == TensorRole::kEmbedding &&
            checkpoint.get(name).dtype == DType::kBF16 && !config.tie_word_embeddings;
        // An FP8 checkpoint's other linear weights (V3's lm_head) stay as they are stored:
        // bf16 held as bf16 (exact), float32 as float32.
        const DType dtype = checkpoint.get(name).dtype;
        const bool kept_as_stored = fp8_checkpoint && dtype != DType::kF8_E4M3;
        if (kept_as_stored && dtype == DType::kBF16 && is_quantizable(config, name, shape, role))
          tensor = load_quantized(checkpoint, name, shape, WeightFormat::kBF16,
                                  product_panels(WeightFormat::kBF16));
        else if (kept_as_stored)
          tensor = checkpoint.load_f32(name, shape);
        else if (format != WeightFormat::kF32 && is_quantizable(config, name, shape, role))
          tensor = load_quantized(checkpoint, name, shape, format, product_panels(format));
        else if (bf16_embedding)
          tensor = load_quantized(checkpoint, name, shape, WeightFormat::kBF16, false);
        else
          tensor = checkpoint.load_f32(name, shape);
        const bool views_file = static_cast<const void*>(tensor.data) ==
                                static_cast<const void*>(checkpoint.get(name).data);
        if (!views_file) checkpoint.release(name);
      });
  if (config.tie_word_embeddings) weights.lm_head = weights.embed_tokens;
  return weights;
}

void init_random_tensor(const Shape& shape, TensorRole role, Rng& rng, float* data) {
  const int64_t n = shape_numel(shape);
  switch (role) {
    case TensorRole::kMatrix: {
      const float std = 1.0f / std::sqrt(static_cast<float>(shape[1]));
      for (int64_t i = 0; i < n; i++) data[i] = std * rng.normal();
      break;
    }
    case TensorRole::kEmbedding:  // a lookup table, not a product: unit variance
      for (int64_t i = 0; i < n; i++) data[i] = rng.normal();
      break;
    case TensorRole::kNorm:
      std::fill(data, data + n, 1.0f);
      break;
    case TensorRole::kBias:
    case TensorRole::kRouterBias:
    case TensorRole::kNoise:
      std::fill(data, data + n, 0.0f);
      break;
  }
}

ModelWeights random_weights(const ModelConfig& config, uint64_t seed) {
  ModelWeights weights;
  weights.mtp.resize(std::max<int64_t>(config.num_nextn_predict_layers, 0));
  Rng rng(seed);
  for_each_tensor(config, weights,
                  [&](const std::string&, const Shape& shape, TensorRole role, Tensor& tensor) {
                    tensor = Tensor::zeros(shape);
                    init_random_tensor(shape, role, rng, tensor.data);
                  });
  if (config.tie_word_embeddings) weights.lm_head = weights.embed_tokens;
  return weights;
}

int64_t count_parameters(const ModelConfig& config) {
  ModelWeights shapes_only;
  int64_t total = 0;
  for_each_tensor(config, shapes_only,
                  [&](const std::string&, const Shape& shape, TensorRole, Tensor&) {
                    total += shape_numel(shape);
                  });
  return total;
}

}  // namespace dsmoe
