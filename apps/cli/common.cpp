#include "apps/cli/common.h"

#include <malloc.h>

#include <optional>

#include "io/safetensors.h"
#include "util/check.h"
#include "util/log.h"

namespace dsmoe::cli {

WeightFormat resolve_weight_format(const std::string& dir, const std::string& weights) {
  if (weights == kWeightsAuto)
    return holds_fp8_weights(load_model_config(dir), Checkpoint(dir)) ? WeightFormat::kFP8
                                                                      : WeightFormat::kF32;
  const std::optional<WeightFormat> format = parse_weight_format(weights);
  DSMOE_CHECK(format.has_value(), "--weights must be auto, f32, bf16, q8_0, q4_0 or fp8, got '{}'",
              weights);
  return *format;
}

Model load_inference_model(const std::string& dir, const std::string& weights, ExpertShard shard) {
  const WeightFormat format = resolve_weight_format(dir, weights);
  Timer timer;
  Model model = Model::load(dir, format, shard);
  // Loading converts each tensor to float32 before re-storing it; hand those freed buffers back
  // (main() keeps freed memory in the heap for training's sake).
  malloc_trim(0);
  const ModelConfig& c = model.config();
  log_info("loaded {} ({}, {} layers, vocab {}) as {} weights in {:.2f} s", dir, arch_name(c.arch),
           c.num_hidden_layers, c.vocab_size, weight_format_name(format), timer.seconds());
  return model;
}

void add_sampling_options(CLI::App& app, SamplingParams& sampling) {
  app.add_option("--temperature", sampling.temperature, "0 = greedy (default)")
      ->check(CLI::NonNegativeNumber);
  app.add_option("--top-k", sampling.top_k, "sample among the k most likely (0 = all)")
      ->check(CLI::NonNegativeNumber);
  app.add_option("--top-p", sampling.top_p, "nucleus sampling mass in (0, 1]")
      ->check(CLI::Range(0.0f, 1.0f));
  app.add_option("--seed", sampling.seed, "sampling seed");
}

}  // namespace dsmoe::cli
