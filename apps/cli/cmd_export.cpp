// cmd_export.cpp: dsmoe export --format gguf --model DIR --out FILE.gguf [--type
// f32|bf16|q8_0|q4_0] Writes a V2/V3 checkpoint as llama.cpp's `deepseek2` architecture (as its
// convert_hf_to_gguf.py does): MLA with kv_b_proj split per head into attn_k_b (transposed) and
// attn_v_b, routed experts stacked into ffn_{gate,up,down}_exps, the V3 selection bias as
// exp_probs_b, rope / YaRN keys, and a vocabulary (export_vocab.h). Tensors get the formats that
// `dsmoe --weights TYPE` holds them in (model/quantize.h), with the same bytes: Q8_0 / Q4_0 blocks
// are llama.cpp's block_q8_0 / block_q4_0, so both engines run the same weights.
#include <cstring>
#include <filesystem>
#include <functional>
#include <map>
#include <optional>

#include "apps/cli/commands.h"
#include "apps/cli/export_vocab.h"
#include "io/gguf.h"
#include "io/safetensors.h"
#include "kernels/quant.h"
#include "model/config.h"
#include "model/quantize.h"
#include "model/weights.h"
#include "util/check.h"
#include "util/log.h"

namespace dsmoe::cli {
namespace {

struct ExportArgs {
  std::string format = "gguf", model_dir, out, type = "f32", tokenizer_pre;
};

// llama.cpp's llama_ftype for general.file_type.
constexpr uint32_t kFtypeAllF32 = 0, kFtypeQ4_0 = 2, kFtypeQ8_0 = 7, kFtypeBF16 = 32;
// llama_expert_gating_func_type.
constexpr uint32_t kGatingSoftmax = 1, kGatingSigmoid = 2;
// The quantization version ggml's block formats carry (GGML_QNT_VERSION).
constexpr uint32_t kQuantizationVersion = 2;
// convert_hf_to_gguf.py writes 0.1 * mscale_all_dim, and llama.cpp divides it back out
// (llama.cpp's TAG_DEEPSEEK2_YARN_LOG_MUL_FIX).
constexpr double kYarnLogMulFactor = 0.1;

GgmlType ggml_type_of(WeightFormat format) {
  switch (format) {
    case WeightFormat::kF32:
      return GgmlType::kF32;
    case WeightFormat::kBF16:
      return GgmlType::kBF16;
    case WeightFormat::kQ8_0:
      return GgmlType::kQ8_0;
    case WeightFormat::kQ4_0:
      return GgmlType::kQ4_0;
    case WeightFormat::kFP8:  // refused by run_export (check_gguf_type)
      break;
  }
  return GgmlType::kF32;
}

uint32_t file_type_of(WeightFormat format) {
  switch (format) {
    case WeightFormat::kF32:
      return kFtypeAllF32;
    case WeightFormat::kBF16:
      return kFtypeBF16;
    case WeightFormat::kQ8_0:
      return kFtypeQ8_0;
    case WeightFormat::kQ4_0:
      return kFtypeQ4_0;
    case WeightFormat::kFP8:  // refused by run_export (check_gguf_type)
      break;
  }
  return kFtypeAllF32;
}

// GGUF (llama.cpp) has no e4m3 type with 128 x 128 block scales: an FP8 model is exported by
// converting, which reading an F8_E4M3 checkpoint does (its weights expanded with their scales).
void check_gguf_type(WeightFormat format) {
  DSMOE_CHECK(format != WeightFormat::kFP8,
              "--type fp8: GGUF has no type for e4m3 weights with 128x128 block scales (llama.cpp "
              "reads none); export with --type bf16 or q8_0, which convert an FP8 checkpoint's "
              "weights (expanded with their weight_scale_inv)");
}

uint32_t u32(int64_t v) { return static_cast<uint32_t>(v); }

// Refuses what llama.cpp's deepseek2 cannot express, and warns where it would compute another
// model than dsmoe does.
void check_exportable(const ModelConfig& c, const std::string& source) {
  DSMOE_CHECK(c.use_mla(),
              "{}: model_type '{}': export writes llama.cpp's deepseek2 (V2/V3, MLA); V1 is "
              "llama.cpp's 'deepseek' architecture, not written here",
              source, c.model_type);
  DSMOE_CHECK(c.n_routed_experts > 0, "{}: deepseek2 needs n_routed_experts > 0", source);
  DSMOE_CHECK(c.moe_layer_freq == 1,
              "{}: moe_layer_freq {}: llama.cpp's deepseek2 makes every layer after "
              "first_k_dense_replace a MoE layer (moe_layer_freq 1)",
              source, c.moe_layer_freq);
  DSMOE_CHECK(c.n_shared_experts > 0,
              "{}: n_shared_experts 0: llama.cpp's deepseek2 requires the shared-expert tensors",
              source);
  DSMOE_CHECK(c.rope_type != RopeType::kDynamic,
              "{}: rope type 'dynamic' has no GGUF equivalent in llama.cpp", source);
  if (c.topk_method == TopkMethod::kGroupLimitedGreedy && c.topk_group < c.n_group)
    log_info(
        "warning: {}: group_limited_greedy scores a group by its best expert; llama.cpp "
        "scores it by the sum of its best two (V3's rule), so routing may differ",
        source);
  if (c.rope_type == RopeType::kYarn && c.mscale != c.mscale_all_dim)
    log_info("warning: {}: YaRN mscale {} != mscale_all_dim {}: llama.cpp assumes they match",
             source, c.mscale, c.mscale_all_dim);
}

void add_rope_metadata(GgufWriter& w, const ModelConfig& c, const std::string& arch) {
  w.add_kv(arch + ".rope.dimension_count", GgufValue::u32(u32(c.qk_rope_head_dim)));
  w.add_kv(arch + ".rope.freq_base", GgufValue::f32(static_cast<float>(c.rope_theta)));
  if (c.rope_type == RopeType::kLinear) {
    w.add_kv(arch + ".rope.scaling.type", GgufValue::string("linear"));
    w.add_kv(arch + ".rope.scaling.factor", GgufValue::f32(static_cast<float>(c.rope_factor)));
  } else if (c.rope_type == RopeType::kYarn) {
    w.add_kv(arch + ".rope.scaling.type", GgufValue::string("yarn"));
    w.add_kv(arch + ".rope.scaling.factor", GgufValue::f32(static_cast<float>(c.rope_factor)));
    w.add_kv(arch + ".rope.scaling.original_context_length",
             GgufValue::u32(u32(c.original_max_position_embeddings)));
    w.add_kv(arch + ".rope.scaling.yarn_beta_fast",
             GgufValue::f32(static_cast<float>(c.beta_fast)));
    w.add_kv(arch + ".rope.scaling.yarn_beta_slow",
             GgufValue::f32(static_cast<float>(c.beta_slow)));
    if (c.attention_factor != 0.0)
      w.add_kv(arch + ".rope.scaling.yarn_attn_factor",
               GgufValue::f32(static_cast<float>(c.attention_factor)));
    if (c.mscale_all_dim != 0.0)
      w.add_kv(arch + ".rope.scaling.yarn_log_multiplier",
               GgufValue::f32(static_cast<float>(kYarnLogMulFactor * c.mscale_all_dim)));
  }
}

void add_model_metadata(GgufWriter& w, const ModelConfig& c, const std::string& name,
                        WeightFormat format) {
  const std::string arch = "deepseek2";
  w.add_kv("general.architecture", GgufValue::string(arch));
  w.add_kv("general.type", GgufValue::string("model"));
  w.add_kv("general.name", GgufValue::string(name));
  w.add_kv("general.file_type", GgufValue::u32(file_type_of(format)));
  if (format == WeightFormat::kQ8_0 || format == WeightFormat::kQ4_0)
    w.add_kv("general.quantization_version", GgufValue::u32(kQuantizationVersion));
  w.add_kv(arch + ".vocab_size", GgufValue::u32(u32(c.vocab_size)));
  w.add_kv(arch + ".block_count", GgufValue::u32(u32(c.num_hidden_layers)));
  w.add_kv(arch + ".context_length", GgufValue::u32(u32(c.max_position_embeddings)));
  w.add_kv(arch + ".embedding_length", GgufValue::u32(u32(c.hidden_size)));
  w.add_kv(arch + ".feed_forward_length", GgufValue::u32(u32(c.intermediate_size)));
  w.add_kv(arch + ".leading_dense_block_count", GgufValue::u32(u32(c.first_k_dense_replace)));
  // MLA as llama.cpp runs it: multi-query attention over [c_kv | k_rope] with one KV head.
  w.add_kv(arch + ".attention.head_count", GgufValue::u32(u32(c.num_attention_heads)));
  w.add_kv(arch + ".attention.head_count_kv", GgufValue::u32(1));
  w.add_kv(arch + ".attention.layer_norm_rms_epsilon", GgufValue::f32(c.rms_norm_eps));
  w.add_kv(arch + ".attention.q_lora_rank", GgufValue::u32(u32(c.q_lora_rank)));
  w.add_kv(arch + ".attention.kv_lora_rank", GgufValue::u32(u32(c.kv_lora_rank)));
  w.add_kv(arch + ".attention.key_length",
           GgufValue::u32(u32(c.kv_lora_rank + c.qk_rope_head_dim)));
  w.add_kv(arch + ".attention.value_length", GgufValue::u32(u32(c.kv_lora_rank)));
  w.add_kv(arch + ".attention.key_length_mla", GgufValue::u32(u32(c.qk_head_dim())));
  w.add_kv(arch + ".attention.value_length_mla", GgufValue::u32(u32(c.v_head_dim)));
  add_rope_metadata(w, c, arch);
  w.add_kv(arch + ".expert_count", GgufValue::u32(u32(c.n_routed_experts)));
  w.add_kv(arch + ".expert_used_count", GgufValue::u32(u32(c.num_experts_per_tok)));
  w.add_kv(arch + ".expert_shared_count", GgufValue::u32(u32(c.n_shared_experts)));
  w.add_kv(arch + ".expert_feed_forward_length", GgufValue::u32(u32(c.moe_intermediate_size)));
  w.add_kv(
      arch + ".expert_gating_func",
      GgufValue::u32(c.scoring_func == ScoringFunc::kSigmoid ? kGatingSigmoid : kGatingSoftmax));
  // Groups only where they select (llama.cpp asserts expert_group_used_count < expert_group_count).
  if (c.topk_method != TopkMethod::kGreedy && c.n_group > 1 && c.topk_group < c.n_group) {
    w.add_kv(arch + ".expert_group_count", GgufValue::u32(u32(c.n_group)));
    w.add_kv(arch + ".expert_group_used_count", GgufValue::u32(u32(c.topk_group)));
  }
  // Gate weights: normalised when norm_topk_prob; V3 then scales by routed_scaling_factor, V2
  // scales only when it does not normalise (DeepSeek-V2's modeling code).
  if (c.norm_topk_prob) w.add_kv(arch + ".expert_weights_norm", GgufValue::boolean(true));
  const bool scales = c.arch == Arch::kDeepseekV3 || !c.norm_topk_prob;
  w.add_kv(arch + ".expert_weights_scale", GgufValue::f32(scales ? c.routed_scaling_factor : 1.0f));
}

// One tensor of the GGUF file: its name, type, ggml dimensions and how to produce its values
// (float32, in ggml order: ne[0] fastest).
struct ExportTensor {
  std::string name;
  GgmlType type;
  std::vector<int64_t> ne;
  std::function<std::vector<float>()> values;
};

class TensorPlan {
 public:
  TensorPlan(const ModelConfig& config, const Checkpoint& checkpoint, WeightFormat format)
      : c_(config), checkpoint_(checkpoint), format_(format) {
    ModelWeights shapes_only;
    for_each_tensor(config, shapes_only,
                    [&](const std::string& name, const Shape& shape, TensorRole role, Tensor&) {
                      shapes_[name] = {shape, role};
                    });
  }

  std::vector<ExportTensor> build() {
    add_plain("token_embd.weight", "model.embed_tokens.weight", embedding_type());
    for (int64_t layer = 0; layer < c_.num_hidden_layers; layer++) add_layer(layer);
    add_plain("output_norm.weight", "model.norm.weight", GgmlType::kF32);
    if (!c_.tie_word_embeddings)
      add_plain("output.weight", "lm_head.weight", linear_type("lm_head.weight"));
    return std::move(tensors_);
  }

 private:
  struct ShapeRole {
    Shape shape;
    TensorRole role;
  };

  const ShapeRole& shape_of(const std::string& hf_name) const {
    auto it = shapes_.find(hf_name);
    DSMOE_ASSERT(it != shapes_.end());
    return it->second;
  }
  std::vector<float> load(const std::string& hf_name) const {
    const Tensor t = checkpoint_.load_f32(hf_name, shape_of(hf_name).shape);
    return std::vector<float>(t.data, t.data + t.numel());
  }
  // The type dsmoe --weights holds this tensor in: the weight format for linear weights it
  // re-stores, float32 for the rest.
  GgmlType linear_type(const std::string& hf_name) const {
    const ShapeRole& s = shape_of(hf_name);
    return format_ != WeightFormat::kF32 && is_quantizable(c_, hf_name, s.shape, s.role)
               ? ggml_type_of(format_)
               : GgmlType::kF32;
  }
  GgmlType embedding_type() const {
    const bool bf16 = format_ != WeightFormat::kF32 && !c_.tie_word_embeddings &&
                      checkpoint_.get("model.embed_tokens.weight").dtype == DType::kBF16;
    return bf16 ? GgmlType::kBF16 : GgmlType::kF32;
  }
  // ggml dimensions of a Hugging Face tensor: its shape reversed.
  std::vector<int64_t> ne_of(const std::string& hf_name) const {
    const Shape& shape = shape_of(hf_name).shape;
    return std::vector<int64_t>(shape.rbegin(), shape.rend());
  }
  void add_plain(const std::string& name, const std::string& hf_name, GgmlType type) {
    tensors_.push_back({name, type, ne_of(hf_name), [this, hf_name] { return load(hf_name); }});
  }

  void add_layer(int64_t layer) {
    const std::string hf = fmt::format("model.layers.{}.", layer);
    const std::string blk = fmt::format("blk.{}.", layer);
    auto linear = [&](const std::string& name, const std::string& hf_name) {
      add_plain(blk + name, hf + hf_name, linear_type(hf + hf_name));
    };
    add_plain(blk + "attn_norm.weight", hf + "input_layernorm.weight", GgmlType::kF32);
    if (c_.q_lora_rank > 0) {
      linear("attn_q_a.weight", "self_attn.q_a_proj.weight");
      add_plain(blk + "attn_q_a_norm.weight", hf + "self_attn.q_a_layernorm.weight",
                GgmlType::kF32);
      linear("attn_q_b.weight", "self_attn.q_b_proj.weight");
    } else {
      linear("attn_q.weight", "self_attn.q_proj.weight");
    }
    linear("attn_kv_a_mqa.weight", "self_attn.kv_a_proj_with_mqa.weight");
    add_plain(blk + "attn_kv_a_norm.weight", hf + "self_attn.kv_a_layernorm.weight",
              GgmlType::kF32);
    add_absorbed(blk, hf + "self_attn.kv_b_proj.weight");
    linear("attn_output.weight", "self_attn.o_proj.weight");
    add_plain(blk + "ffn_norm.weight", hf + "post_attention_layernorm.weight", GgmlType::kF32);
    if (!c_.is_moe_layer(layer)) {
      linear("ffn_gate.weight", "mlp.gate_proj.weight");
      linear("ffn_up.weight", "mlp.up_proj.weight");
      linear("ffn_down.weight", "mlp.down_proj.weight");
      return;
    }
    add_plain(blk + "ffn_gate_inp.weight", hf + "mlp.gate.weight", GgmlType::kF32);
    if (c_.has_router_bias())
      add_plain(blk + "exp_probs_b.bias", hf + "mlp.gate.e_score_correction_bias", GgmlType::kF32);
    for (const char* proj : {"gate", "up", "down"}) add_experts(blk, hf, proj);
    linear("ffn_gate_shexp.weight", "mlp.shared_experts.gate_proj.weight");
    linear("ffn_up_shexp.weight", "mlp.shared_experts.up_proj.weight");
    linear("ffn_down_shexp.weight", "mlp.shared_experts.down_proj.weight");
  }

  // ffn_<proj>_exps: the routed experts' <proj>_proj stacked, ne {cols, rows, n_routed_experts}.
  void add_experts(const std::string& blk, const std::string& hf, const std::string& proj) {
    std::vector<std::string> names;
    for (int64_t e = 0; e < c_.n_routed_experts; e++)
      names.push_back(fmt::format("{}mlp.experts.{}.{}_proj.weight", hf, e, proj));
    std::vector<int64_t> ne = ne_of(names[0]);
    ne.push_back(c_.n_routed_experts);
    tensors_.push_back(
        {blk + "ffn_" + proj + "_exps.weight", linear_type(names[0]), ne, [this, names] {
           std::vector<float> stacked;
           for (const std::string& name : names) {
             const std::vector<float> one = load(name);
             stacked.insert(stacked.end(), one.begin(), one.end());
           }
           return stacked;
         }});
  }

  // kv_b_proj [n_heads * (nope + v), rank] split per head as llama.cpp's absorbed MLA reads it:
  // attn_k_b ne {nope, rank, n_heads} (W_UK[h] transposed), attn_v_b ne {rank, v, n_heads}.
  // Types as derive_absorbed_weights keeps them (Q8_0 for a Q4_0 model; float32 where a block
  // format does not fit the rows).
  void add_absorbed(const std::string& blk, const std::string& kv_b_name) {
    const int64_t nope = c_.qk_nope_head_dim, dv = c_.v_head_dim, rank = c_.kv_lora_rank;
    const int64_t heads = c_.num_attention_heads;
    const WeightFormat format = format_ == WeightFormat::kQ4_0 ? WeightFormat::kQ8_0 : format_;
    const bool blocked = format == WeightFormat::kQ8_0;
    const bool fits = !blocked || (nope % kQuantBlock == 0 && rank % kQuantBlock == 0);
    const GgmlType type = fits ? ggml_type_of(format) : GgmlType::kF32;
    tensors_.push_back({blk + "attn_k_b.weight", type, {nope, rank, heads}, [=, this] {
                          const std::vector<float> kv_b = load(kv_b_name);
                          std::vector<float> k_b(heads * rank * nope);
                          for (int64_t h = 0; h < heads; h++)
                            for (int64_t i = 0; i < nope; i++)
                              for (int64_t r = 0; r < rank; r++)
                                k_b[(h * rank + r) * nope + i] =
                                    kv_b[(h * (nope + dv) + i) * rank + r];
                          return k_b;
                        }});
    tensors_.push_back({blk + "attn_v_b.weight", type, {rank, dv, heads}, [=, this] {
                          const std::vector<float> kv_b = load(kv_b_name);
                          std::vector<float> v_b(heads * dv * rank);
                          for (int64_t h = 0; h < heads; h++)
                            for (int64_t j = 0; j < dv; j++)
                              for (int64_t r = 0; r < rank; r++)
                                v_b[(h * dv + j) * rank + r] =
                                    kv_b[(h * (nope + dv) + nope + j) * rank + r];
                          return v_b;
                        }});
  }

  const ModelConfig& c_;
  const Checkpoint& checkpoint_;
  WeightFormat format_;
  std::map<std::string, ShapeRole> shapes_;
  std::vector<ExportTensor> tensors_;
};

// float32 values -> the bytes of `type` (llama.cpp's layouts; Q8_0/Q4_0 by dsmoe's quantizer,
// the bytes dsmoe's own kernels hold).
std::vector<uint8_t> encode(const std::vector<float>& values, GgmlType type) {
  const int64_t n = static_cast<int64_t>(values.size());
  std::vector<uint8_t> bytes;
  switch (type) {
    case GgmlType::kF32:
      bytes.resize(n * sizeof(float));
      std::memcpy(bytes.data(), values.data(), bytes.size());
      break;
    case GgmlType::kBF16:
      bytes.resize(n * sizeof(uint16_t));
      convert_row_f32_to_bf16(values.data(), reinterpret_cast<uint16_t*>(bytes.data()), n);
      break;
    case GgmlType::kQ8_0:
      bytes.resize(n / kQuantBlock * sizeof(BlockQ8_0));
      quantize_row_q8_0(values.data(), reinterpret_cast<BlockQ8_0*>(bytes.data()), n);
      break;
    case GgmlType::kQ4_0:
      bytes.resize(n / kQuantBlock * sizeof(BlockQ4_0));
      quantize_row_q4_0(values.data(), reinterpret_cast<BlockQ4_0*>(bytes.data()), n);
      break;
    case GgmlType::kF16:
      DSMOE_ASSERT(false);
  }
  return bytes;
}

int run_export(const ExportArgs& args) {
  DSMOE_CHECK(args.format == "gguf", "--format: only 'gguf' is written, got '{}'", args.format);
  const std::optional<WeightFormat> format = parse_weight_format(args.type);
  DSMOE_CHECK(format.has_value(), "--type must be f32, bf16, q8_0 or q4_0, got '{}'", args.type);
  check_gguf_type(*format);
  const ModelConfig config = load_model_config(args.model_dir);
  check_exportable(config, args.model_dir + "/config.json");
  const Checkpoint checkpoint(args.model_dir);
  Timer timer;

  GgufWriter writer(args.out);
  const std::string name = std::filesystem::path(args.model_dir).filename().string();
  add_model_metadata(writer, config, name.empty() ? "dsmoe" : name, *format);
  add_vocabulary(writer, config, args.model_dir, args.tokenizer_pre);
  TensorPlan plan(config, checkpoint, *format);
  const std::vector<ExportTensor> tensors = plan.build();
  for (const ExportTensor& t : tensors) writer.add_tensor(t.name, t.type, t.ne);
  size_t total_bytes = 0;
  for (const ExportTensor& t : tensors) {
    const std::vector<uint8_t> bytes = encode(t.values(), t.type);
    writer.write_tensor(t.name, bytes.data(), bytes.size());
    total_bytes += bytes.size();
  }
  writer.finish();
  log_info("exported {} tensors ({:.1f} MB of weights, {}) to {} in {:.1f} s", tensors.size(),
           total_bytes / 1e6, args.type, args.out, timer.seconds());
  return 0;
}

}  // namespace

Command add_export(CLI::App& app) {
  auto args = std::make_shared<ExportArgs>();
  app.add_option("--format", args->format, "Output format (gguf: llama.cpp's deepseek2)")
      ->capture_default_str();
  app.add_option("--model", args->model_dir, "Checkpoint directory")->required();
  app.add_option("--out", args->out, "Output file")->required();
  app.add_option("--type", args->type,
                 "Linear weights as f32, bf16, q8_0 or q4_0 (as dsmoe --weights holds them)")
      ->capture_default_str();
  app.add_option("--tokenizer-pre", args->tokenizer_pre,
                 "llama.cpp pre-tokenizer name for a tokenizer.json vocabulary "
                 "(default: deepseek-v3 for V3, deepseek-llm for V2)");
  return [args] { return run_export(*args); };
}

}  // namespace dsmoe::cli
