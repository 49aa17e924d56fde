// common.h: what several dsmoe subcommands share.
#pragma once
#include <string>

#include "model/transformer.h"

namespace dsmoe::cli {

// Loads a checkpoint directory and re-stores its linear weights as `weights` (f32, bf16, q8_0,
// q4_0: the --weights flag), logging what it did and how long it took.
// With a `shard`, only those routed experts are read (expert parallelism under mpirun).
Model load_inference_model(const std::string& dir, const std::string& weights,
                           ExpertShard shard = {});

}  // namespace dsmoe::cli
