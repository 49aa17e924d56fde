// common.h: what several dsmoe subcommands share.
#pragma once
#include <CLI/CLI.hpp>
#include <string>

#include "model/transformer.h"
#include "runtime/sampling.h"

namespace dsmoe::cli {

// Loads a checkpoint directory and re-stores its linear weights as `weights` (f32, bf16, q8_0,
// q4_0: the --weights flag), logging what it did and how long it took.
// With a `shard`, only those routed experts are read (expert parallelism under mpirun).
Model load_inference_model(const std::string& dir, const std::string& weights,
                           ExpertShard shard = {});

// --temperature, --top-k, --top-p and --seed into `sampling` (generate, chat).
void add_sampling_options(CLI::App& app, SamplingParams& sampling);

}  // namespace dsmoe::cli
