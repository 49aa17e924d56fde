#include "train/checkpoint.h"

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <limits>
#include <sstream>

#include "io/safetensors.h"
#include "train/failpoint.h"
#include "util/check.h"

namespace dsmoe {
namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;

std::string read_text(const std::string& path) {
  std::ifstream in(path);
  DSMOE_CHECK(in.good(), "{}: cannot open", path);
  std::stringstream buffer;
  buffer << in.rdbuf();
  return buffer.str();
}

json rng_to_json(const Rng::Snapshot& s) {
  return {{"state", s.state}, {"has_spare", s.has_spare}, {"spare", s.spare}};
}

// trainer_state.json is read as outside input: every field is checked for its type and range
// before it is converted (nlohmann's get<> throws its own exceptions, or converts out-of-range
// numbers with undefined behaviour).

// `key` of `object`: a count, an integer >= 0 (optional fields are 0 when absent).
int64_t count_field(const json& object, const char* key, bool required, const std::string& where) {
  const auto it = object.find(key);
  if (it == object.end()) {
    DSMOE_CHECK(!required, "{}: missing '{}'", where, key);
    return 0;
  }
  const bool in_range = it->is_number_unsigned()
                            ? it->get<uint64_t>() <= std::numeric_limits<int64_t>::max()
                            : it->is_number_integer() && it->get<int64_t>() >= 0;
  DSMOE_CHECK(in_range, "{}: '{}' must be an integer >= 0 (a count), got {}", where, key,
              it->type_name());
  return it->get<int64_t>();
}

Rng::Snapshot rng_from_json(const json& trainer, const char* key, const std::string& where) {
  const auto it = trainer.find(key);
  DSMOE_CHECK(it != trainer.end() && it->is_object(),
              "{}: '{}' must be a random generator state (an object)", where, key);
  const json& j = *it;
  const auto state = j.find("state"), has_spare = j.find("has_spare"), spare = j.find("spare");
  DSMOE_CHECK(state != j.end() && state->is_number_unsigned(),
              "{}: '{}.state' must be an unsigned 64-bit integer", where, key);
  DSMOE_CHECK(has_spare != j.end() && has_spare->is_boolean(), "{}: '{}.has_spare' must be a bool",
              where, key);
  DSMOE_CHECK(spare != j.end() && spare->is_number(), "{}: '{}.spare' must be a number", where,
              key);
  const double spare_value = spare->get<double>();
  DSMOE_CHECK(
      std::isfinite(spare_value) && std::fabs(spare_value) <= std::numeric_limits<float>::max(),
      "{}: '{}.spare' = {} is not a finite float", where, key, spare_value);
  return {state->get<uint64_t>(), has_spare->get<bool>(), static_cast<float>(spare_value)};
}

// Loads `name` of `file` into `tensor` (already allocated with the right shape).
void load_into(const SafetensorsFile& file, const std::string& name, Tensor& tensor) {
  const TensorInfo* info = file.find(name);
  DSMOE_CHECK(info != nullptr, "{}: missing tensor '{}'", file.path(), name);
  DSMOE_CHECK(info->shape == tensor.shape, "{}: tensor '{}': expected shape {}, found {}",
              file.path(), name, shape_str(tensor.shape), shape_str(info->shape));
  DSMOE_CHECK(dtype_is_float(info->dtype), "{}: tensor '{}' has dtype {}, expected a float",
              file.path(), name, dtype_name(info->dtype));
  convert_to_f32(info->data, info->dtype, static_cast<size_t>(tensor.numel()), tensor.data);
}

}  // namespace

void save_model_safetensors(const ModelConfig& config, ModelWeights& weights,
                            const std::string& path) {
  SafetensorsWriter writer;
  writer.set_metadata("format", "pt");
  for_each_tensor(config, weights,
                  [&](const std::string& name, const Shape&, TensorRole, Tensor& tensor) {
                    writer.add_f32(name, tensor);
                  });
  for (size_t k = 0; k < weights.mtp.size(); k++) {
    const std::string prefix = fmt::format("model.layers.{}.", config.num_hidden_layers + k);
    writer.add_f32(prefix + "embed_tokens.weight", weights.embed_tokens);
    writer.add_f32(prefix + "shared_head.head.weight", weights.lm_head);
  }
  writer.write(path);
}

void save_checkpoint(const std::string& out_dir, const nlohmann::ordered_json& config_json,
                     const ModelConfig& config, ModelWeights& weights, AdamWState& adam,
                     const TrainerState& state, int keep_last) {
  const Failpoints failpoints = read_failpoints();
  auto hook = [&](const fs::path& path) { failpoint_before_write(failpoints, path.string()); };
  const std::string step_name = fmt::format("step-{:08d}", state.step);
  const fs::path step_dir = fs::path(out_dir) / step_name;
  const std::string config_text = config_json.dump(2) + "\n";
  try {
    fs::create_directories(step_dir);
    hook(step_dir / "config.json");
    write_file_atomic((step_dir / "config.json").string(), config_text);
    hook(step_dir / "model.safetensors");
    save_model_safetensors(config, weights, (step_dir / "model.safetensors").string());
    SafetensorsWriter optimizer;
    for_each_tensor(config, adam.m,
                    [&](const std::string& name, const Shape&, TensorRole, Tensor& tensor) {
                      optimizer.add_f32("m." + name, tensor);
                    });
    for_each_tensor(config, adam.v,
                    [&](const std::string& name, const Shape&, TensorRole, Tensor& tensor) {
                      optimizer.add_f32("v." + name, tensor);
                    });
    optimizer.add_i64("step", {}, &adam.step);
    hook(step_dir / "optimizer.safetensors");
    optimizer.write((step_dir / "optimizer.safetensors").string());
    const json trainer = {{"step", state.step},
                          {"data_rng", rng_to_json(state.data_rng)},
                          {"noise_rng", rng_to_json(state.noise_rng)},
                          {"skipped_steps", state.skipped_steps},
                          {"nonfinite_in_a_row", state.nonfinite_in_a_row}};
    hook(step_dir / "trainer_state.json");
    write_file_atomic((step_dir / "trainer_state.json").string(), trainer.dump(2) + "\n");
    hook(fs::path(out_dir) / "latest");
  } catch (const std::exception&) {
    // Unpublished, so nothing refers to it: free its space (a full disk is the likely cause).
    std::error_code ignored;
    if (fs::path(latest_checkpoint_dir(out_dir)) != step_dir) fs::remove_all(step_dir, ignored);
    throw;
  }
  // The step directory is complete: publish it, then the top-level copy for `generate`.
  write_file_atomic((fs::path(out_dir) / "latest").string(), step_name + "\n");
  hook(fs::path(out_dir) / "config.json");
  write_file_atomic((fs::path(out_dir) / "config.json").string(), config_text);
  hook(fs::path(out_dir) / "model.safetensors");
  save_model_safetensors(config, weights, (fs::path(out_dir) / "model.safetensors").string());
  // Keep the newest keep_last step directories up to this one. A newer one was left by a run
  // killed while writing it (this run resumed from an older checkpoint): it is rewritten when
  // this run gets there, and never counts toward keep_last (which could remove `latest`).
  std::vector<std::string> steps;
  for (const auto& entry : fs::directory_iterator(out_dir))
    if (entry.is_directory() && entry.path().filename().string().rfind("step-", 0) == 0)
      steps.push_back(entry.path().filename().string());
  std::sort(steps.begin(), steps.end());
  const size_t n_kept = std::upper_bound(steps.begin(), steps.end(), step_name) - steps.begin();
  for (size_t i = 0; i + keep_last < n_kept; i++) fs::remove_all(fs::path(out_dir) / steps[i]);
}

std::string latest_checkpoint_dir(const std::string& out_dir) {
  const fs::path latest = fs::path(out_dir) / "latest";
  if (!fs::exists(latest)) return "";
  std::string name = read_text(latest.string());
  name.erase(name.find_last_not_of(" \n\r\t") + 1);
  // A step directory of out_dir, as save_checkpoint names them (not "..", nor a path).
  DSMOE_CHECK(name.rfind("step-", 0) == 0 && name.find('/') == std::string::npos,
              "{}: does not name a checkpoint directory (step-N)", latest.string());
  return (fs::path(out_dir) / name).string();
}

void load_checkpoint(const std::string& out_dir, const ModelConfig& config, ModelWeights& weights,
                     AdamWState& adam, TrainerState& state) {
  const std::string dir = latest_checkpoint_dir(out_dir);
  DSMOE_CHECK(!dir.empty(), "{}: no checkpoint to resume (no 'latest' file)", out_dir);
  const SafetensorsFile model(dir + "/model.safetensors");
  for_each_tensor(config, weights,
                  [&](const std::string& name, const Shape&, TensorRole, Tensor& tensor) {
                    load_into(model, name, tensor);
                  });
  const std::string optimizer_path = dir + "/optimizer.safetensors";
  const SafetensorsFile optimizer(optimizer_path);
  for_each_tensor(config, adam.m,
                  [&](const std::string& name, const Shape&, TensorRole, Tensor& tensor) {
                    load_into(optimizer, "m." + name, tensor);
                  });
  for_each_tensor(config, adam.v,
                  [&](const std::string& name, const Shape&, TensorRole, Tensor& tensor) {
                    load_into(optimizer, "v." + name, tensor);
                  });
  const TensorInfo* step = optimizer.find("step");
  DSMOE_CHECK(step != nullptr, "{}: missing tensor 'step'", optimizer_path);
  const std::vector<int64_t> step_values = read_i64(*step);
  DSMOE_CHECK(step_values.size() == 1 && step_values[0] >= 0,
              "{}: tensor 'step' must hold one count >= 0", optimizer_path);
  adam.step = step_values[0];
  const std::string state_path = dir + "/trainer_state.json";
  const json trainer = json::parse(read_text(state_path), nullptr, false);
  DSMOE_CHECK(!trainer.is_discarded() && trainer.is_object(), "{}: not a trainer state",
              state_path);
  state.step = count_field(trainer, "step", true, state_path);
  state.data_rng = rng_from_json(trainer, "data_rng", state_path);
  state.noise_rng = rng_from_json(trainer, "noise_rng", state_path);
  state.skipped_steps = count_field(trainer, "skipped_steps", false, state_path);
  state.nonfinite_in_a_row = count_field(trainer, "nonfinite_in_a_row", false, state_path);
  // Both counts are >= 0, so the difference cannot overflow (a sum could).
  DSMOE_CHECK(state.step - state.skipped_steps == adam.step,
              "{}: step {} does not match the optimizer's {} (+{} skipped)", state_path, state.step,
              adam.step, state.skipped_steps);
}

}  // namespace dsmoe
