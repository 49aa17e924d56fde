// cmd_init.cpp: dsmoe init --config CONFIG.json --out DIR [--seed S] [--dtype f32|bf16]
#include <filesystem>
#include <fstream>
#include <memory>
#include <nlohmann/json.hpp>

#include "apps/cli/commands.h"
#include "io/safetensors.h"
#include "io/safetensors_stream.h"
#include "model/weights.h"
#include "util/check.h"
#include "util/log.h"

namespace dsmoe::cli {
namespace {

struct InitArgs {
  std::string config_path, out_dir, dtype = "f32";
  uint64_t seed = 0;
};

int run_init(const InitArgs& args) {
  DSMOE_CHECK(args.dtype == "f32" || args.dtype == "bf16", "--dtype must be f32 or bf16, got '{}'",
              args.dtype);
  std::ifstream in(args.config_path);
  DSMOE_CHECK(in.good(), "{}: cannot open", args.config_path);
  nlohmann::ordered_json json = nlohmann::ordered_json::parse(in, nullptr, false);
  DSMOE_CHECK(!json.is_discarded(), "{}: not valid JSON", args.config_path);
  const ModelConfig config = parse_model_config(nlohmann::json::parse(json.dump()),
                                                args.config_path);
  const DType dtype = args.dtype == "bf16" ? DType::kBF16 : DType::kF32;

  std::filesystem::create_directories(args.out_dir);
  json["torch_dtype"] = args.dtype == "bf16" ? "bfloat16" : "float32";
  write_file_atomic(args.out_dir + "/config.json", json.dump(2) + "\n");

  // Shapes first (the header), then each tensor generated and written in turn: memory stays at
  // one tensor, whatever the model's size.
  struct Item {
    Shape shape;
    TensorRole role;
  };
  std::vector<TensorSpec> specs;
  std::vector<Item> items;
  ModelWeights shapes_only;  // MTP modules too (without the release's embedding/head copies)
  shapes_only.mtp.resize(std::max<int64_t>(config.num_nextn_predict_layers, 0));
  for_each_tensor(config, shapes_only,
                  [&](const std::string& name, const Shape& shape, TensorRole role, Tensor&) {
                    specs.push_back({name, dtype, shape});
                    items.push_back({shape, role});
                  });
  SafetensorsStreamWriter writer(args.out_dir + "/model.safetensors", specs);
  Rng rng(args.seed);
  std::vector<float> buffer;
  int64_t n_params = 0;
  for (const Item& item : items) {
    buffer.resize(shape_numel(item.shape));
    init_random_tensor(item.shape, item.role, rng, buffer.data());
    writer.write_f32(buffer.data());
    n_params += shape_numel(item.shape);
  }
  writer.finish();
  log_info("wrote {}/model.safetensors: {} tensors, {:.3f} M parameters, {}, seed {}",
           args.out_dir, specs.size(), n_params / 1e6, args.dtype, args.seed);
  return 0;
}

}  // namespace

Command add_init(CLI::App& app) {
  auto args = std::make_shared<InitArgs>();
  app.add_option("--config", args->config_path, "config.json to instantiate")->required();
  app.add_option("--out", args->out_dir, "output checkpoint directory")->required();
  app.add_option("--seed", args->seed, "random seed (default 0)");
  app.add_option("--dtype", args->dtype, "f32 (default) or bf16");
  return [args] { return run_init(*args); };
}

}  // namespace dsmoe::cli
