// common.h: what several dsmoe subcommands share.
#pragma once
#include <CLI/CLI.hpp>
#include <string>

#include "model/transformer.h"
#include "runtime/sampling.h"

namespace dsmoe::cli {

// The --weights default: fp8 for a checkpoint whose linear weights are FP8 as DeepSeek-V3 ships
// them (F8_E4M3 + weight_scale_inv, kept as stored), else f32.
inline constexpr const char* kWeightsAuto = "auto";
// The format --weights names (auto, f32, bf16, q8_0, q4_0, fp8) for the checkpoint in `dir`.
WeightFormat resolve_weight_format(const std::string& dir, const std::string& weights);

// Loads a checkpoint directory and re-stores its linear weights as `weights` (the --weights
// flag, resolve_weight_format), logging what it did and how long it took.
// With a `shard`, only those routed experts are read (expert parallelism under mpirun).
Model load_inference_model(const std::string& dir, const std::string& weights,
                           ExpertShard shard = {});

// --temperature, --top-k, --top-p and --seed into `sampling` (generate, chat).
void add_sampling_options(CLI::App& app, SamplingParams& sampling);

}  // namespace dsmoe::cli
