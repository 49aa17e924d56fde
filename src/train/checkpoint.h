// checkpoint.h: training checkpoints that a kill at any moment cannot corrupt.
//
// Layout of an output directory:
//   step-00000100/  config.json, model.safetensors (Hugging Face layout), optimizer.safetensors
//                   (AdamW moments m.<name>, v.<name>), trainer_state.json (step, RNG states)
//   latest          the name of the newest complete step directory (replaced atomically last)
//   config.json, model.safetensors   the newest weights, for `dsmoe generate --model DIR`
// Every file is written to a temporary name, fsync'd and renamed; `latest` moves only after the
// step directory is complete, so the last good checkpoint always loads. A save that fails before
// that removes its step directory and leaves `latest` on the previous checkpoint. Test hooks:
// DSMOE_FAILPOINT (train/failpoint.h).
#pragma once
#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>

#include "model/config.h"
#include "model/weights.h"
#include "tensor/random.h"
#include "train/optimizer.h"

namespace dsmoe {

struct TrainerState {
  int64_t step = 0;  // optimizer steps completed
  Rng::Snapshot data_rng{};
  Rng::Snapshot noise_rng{};
  int64_t skipped_steps = 0;       // non-finite loss or gradient
  int64_t nonfinite_in_a_row = 0;  // the latest of them in a row (train stops at a limit)
};

// Writes weights (with the MTP embedding/head copies the DeepSeek-V3 release stores) in the HF
// layout to `path`.
void save_model_safetensors(const ModelConfig& config, ModelWeights& weights,
                            const std::string& path);

void save_checkpoint(const std::string& out_dir, const nlohmann::ordered_json& config_json,
                     const ModelConfig& config, ModelWeights& weights, AdamWState& adam,
                     const TrainerState& state, int keep_last = 2);

// Restores the newest checkpoint of out_dir into weights (owned), adam and state. Errors name
// the file and what is wrong; nothing on disk is modified.
void load_checkpoint(const std::string& out_dir, const ModelConfig& config, ModelWeights& weights,
                     AdamWState& adam, TrainerState& state);

// The config.json stored with the newest checkpoint ("" when out_dir has none).
std::string latest_checkpoint_dir(const std::string& out_dir);

}  // namespace dsmoe
