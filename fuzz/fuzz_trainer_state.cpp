// fuzz_trainer_state: what `dsmoe train --resume` reads of a training checkpoint of its own
// (load_checkpoint, src/train/checkpoint.cpp): `latest`, step-N/trainer_state.json,
// step-N/optimizer.safetensors and step-N/model.safetensors, for the small model of
// fuzz/trainer_state_config.json. The input is the files, in that order, separated by
// kFileSeparator; the files it leaves out are valid ones (`latest` naming step 2, an optimizer of
// step 2, random weights), so that short inputs fuzz `latest` and trainer_state.json alone. A
// checkpoint loads, or one dsmoe::Error; nothing else.
#include <iterator>
#include <string>
#include <string_view>
#include <vector>

#include "fuzz/fuzz_util.h"
#include "model/config.h"
#include "model/weights.h"
#include "train/checkpoint.h"
#include "train/optimizer.h"
#include "util/check.h"

namespace {

namespace fs = std::filesystem;

constexpr std::string_view kFileSeparator = "\n--dsmoe-next-file--\n";
// The step directory the files go to; `latest` names it in the seeds (a fuzzed one may not).
constexpr std::string_view kStepDir = "step-00000002";

struct Fixture {
  dsmoe::ModelConfig config;
  dsmoe::ModelWeights weights;
  dsmoe::AdamWState adam;
  std::vector<std::string> valid_files;  // latest, trainer_state.json, optimizer, model
  fs::path out_dir;
};

// The moments shaped like the weights, as make_adamw_state makes them (optimizer.cpp and its
// kernels stay out of the fuzz build).
dsmoe::AdamWState zero_moments(const dsmoe::ModelConfig& config) {
  dsmoe::AdamWState adam;
  for (dsmoe::ModelWeights* moments : {&adam.m, &adam.v})
    dsmoe::for_each_tensor(config, *moments,
                           [](const std::string&, const dsmoe::Shape& shape, dsmoe::TensorRole,
                              dsmoe::Tensor& tensor) { tensor = dsmoe::Tensor::zeros(shape); });
  return adam;
}

Fixture& fixture() {
  static Fixture f = [] {
    Fixture made;
    made.config = dsmoe::load_model_config(DSMOE_FUZZ_DIR "/trainer_state_config.json");
    made.weights = dsmoe::random_weights(made.config, 1);
    made.adam = zero_moments(made.config);
    made.out_dir = dsmoe::fuzz::scratch_dir() / "run";
    fs::create_directories(made.out_dir / kStepDir);
    dsmoe::TrainerState state;
    state.step = made.adam.step = 2;
    const std::string valid_dir = (dsmoe::fuzz::scratch_dir() / "valid").string();
    dsmoe::save_checkpoint(valid_dir, nlohmann::ordered_json::object(), made.config, made.weights,
                           made.adam, state);
    for (const fs::path& file :
         {fs::path("latest"), kStepDir / fs::path("trainer_state.json"),
          kStepDir / fs::path("optimizer.safetensors"), kStepDir / fs::path("model.safetensors")}) {
      std::ifstream in(valid_dir / file, std::ios::binary);
      made.valid_files.emplace_back(std::istreambuf_iterator<char>(in),
                                    std::istreambuf_iterator<char>());
    }
    return made;
  }();
  return f;
}

std::vector<std::string_view> split_files(std::string_view input) {
  std::vector<std::string_view> files;
  while (files.size() < 3) {  // the model, last, may hold the separator
    const size_t at = input.find(kFileSeparator);
    if (at == std::string_view::npos) break;
    files.push_back(input.substr(0, at));
    input.remove_prefix(at + kFileSeparator.size());
  }
  files.push_back(input);
  return files;
}

void write_file(const fs::path& path, std::string_view bytes) {
  std::ofstream(path, std::ios::binary | std::ios::trunc)
      .write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  Fixture& f = fixture();
  const std::vector<std::string_view> files = split_files(dsmoe::fuzz::as_view(data, size));
  const fs::path step_dir = f.out_dir / kStepDir;
  const fs::path paths[] = {f.out_dir / "latest", step_dir / "trainer_state.json",
                            step_dir / "optimizer.safetensors", step_dir / "model.safetensors"};
  for (size_t i = 0; i < std::size(paths); i++)
    write_file(paths[i], i < files.size() ? files[i] : std::string_view(f.valid_files[i]));
  dsmoe::TrainerState state;
  try {
    dsmoe::load_checkpoint(f.out_dir.string(), f.config, f.weights, f.adam, state);
  } catch (const dsmoe::Error&) {
  }
  return 0;
}
