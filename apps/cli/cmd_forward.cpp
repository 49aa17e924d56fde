// cmd_forward.cpp: dsmoe forward --model DIR --input IN.safetensors --output OUT.safetensors
#include <fmt/format.h>

#include <map>
#include <memory>
#include <utility>
#include <vector>

#include "apps/cli/commands.h"
#include "apps/cli/common.h"
#include "apps/cli/parallel.h"
#include "io/safetensors.h"
#include "model/transformer.h"
#include "util/check.h"
#include "util/log.h"
#include "util/threads.h"

namespace dsmoe::cli {
namespace {

struct ForwardArgs {
  std::string model_dir, input, output;
  int threads = 0;
  std::string weights = "f32";
  bool grad = false;
};

// Under mpirun: rank r runs its share of the sequences (data parallel; the experts are spread
// over the ranks) and rank 0 collects the rows of every tensor in sequence order. Ranks without
// sequences lend their experts to the others.
template <typename T>
std::vector<T> gather_rows(Comm& comm, const T* rows, int64_t n) {
  if (comm.size() == 1) return std::vector<T>(rows, rows + n);
  const std::vector<char> bytes = gatherv(comm, rows, n * sizeof(T), 0);
  std::vector<T> out(bytes.size() / sizeof(T));
  std::copy(bytes.begin(), bytes.end(), reinterpret_cast<char*>(out.data()));
  return out;
}

int run_forward(const ForwardArgs& args) {
  set_num_threads(args.threads);
  Comm& comm = world_comm();
  DSMOE_CHECK(!args.grad || comm.size() == 1, "--grad runs in one process (not under mpirun)");
  Model model = load_parallel_model(comm, args.model_dir, args.weights);
  const ModelConfig& c = model.config();
  Timer timer;

  SafetensorsFile input(args.input);
  const TensorInfo* ids_info = input.find("input_ids");
  DSMOE_CHECK(ids_info != nullptr, "{}: missing tensor 'input_ids'", args.input);
  DSMOE_CHECK(ids_info->shape.size() == 2 && ids_info->shape[0] > 0 && ids_info->shape[1] > 0,
              "{}: tensor 'input_ids' must have shape [B, T], found {}", args.input,
              shape_str(ids_info->shape));
  const std::vector<int64_t> ids = read_i64(*ids_info);
  const int64_t B = ids_info->shape[0], T = ids_info->shape[1], N = B * T;
  const int64_t H = c.hidden_size, V = c.vocab_size;
  for (int64_t i = 0; i < N; i++)
    DSMOE_CHECK(ids[i] >= 0 && ids[i] < V,
                "{}: input_ids[{}, {}] = {} is outside the vocabulary [0, {})", args.input, i / T,
                i % T, ids[i], V);

  ForwardRecord record;
  record.keep_hidden = record.keep_routes = true;
  timer.reset();
  const SeqRange mine = rank_sequences(B, comm.rank(), comm.size());
  const int64_t n_mine = mine.count() * T;
  Tensor logits;
  if (mine.count() > 0) {
    logits = model.forward(ids.data() + mine.first * T, mine.count(), T, &record);
    release_expert_servers(c, model.weights());
  } else {
    serve_experts(c, model.weights());
  }
  const double seconds = timer.seconds();
  const std::vector<float> all_logits = gather_rows(comm, logits.data, n_mine * V);
  std::vector<std::vector<float>> hidden;
  for (int64_t i = 0; i <= c.num_hidden_layers; i++)
    hidden.push_back(gather_rows(comm, n_mine > 0 ? record.hidden[i].data : nullptr, n_mine * H));
  std::map<int64_t, std::pair<std::vector<int64_t>, std::vector<float>>> routes;
  for (int64_t layer = 0; layer < c.num_hidden_layers; layer++) {
    if (!c.is_moe_layer(layer)) continue;
    const Routing* routing = n_mine > 0 ? &record.routes.at(layer) : nullptr;
    std::vector<int64_t> idx;
    if (routing != nullptr) idx.assign(routing->expert.begin(), routing->expert.end());
    routes[layer] = {gather_rows(comm, idx.data(), static_cast<int64_t>(idx.size())),
                     gather_rows(comm, routing ? routing->weight.data() : nullptr,
                                 routing ? static_cast<int64_t>(routing->weight.size()) : 0)};
  }
  if (comm.rank() != 0) return 0;
  const float loss = static_cast<float>(next_token_loss(all_logits.data(), ids.data(), B, T, V));
  log_info("forward of {} x {} tokens in {:.3f} s ({:.1f} tokens/s), loss {:.6f}", B, T, seconds,
           N / seconds, loss);

  SafetensorsWriter out;
  out.add_f32("logits", {B, T, V}, all_logits.data());
  out.add_f32("loss", {}, &loss);
  for (size_t i = 0; i < hidden.size(); i++)
    out.add_f32(fmt::format("hidden.{}", i), {B, T, H}, hidden[i].data());
  const int64_t K = c.num_experts_per_tok;
  for (const auto& [layer, route] : routes) {
    out.add_i64(fmt::format("route.{}.idx", layer), {N, K}, route.first.data());
    out.add_f32(fmt::format("route.{}.weight", layer), {N, K}, route.second.data());
  }
  if (args.grad) {  // d loss / d every checkpoint tensor (router bias buffers excepted)
    timer.reset();
    ModelWeights grads = zeros_like_weights(c);
    TrainActs acts;
    TrainOptions options;
    options.balance_losses = false;  // the gradient of `loss` alone
    options.mtp = false;             // nor of the MTP losses
    model.forward_backward(ids.data(), B, T, grads, acts, options);
    log_info("forward + backward in {:.3f} s", timer.seconds());
    for_each_tensor(
        c, grads, [&](const std::string& name, const Shape& shape, TensorRole role, Tensor& grad) {
          if (role != TensorRole::kRouterBias) out.add_f32("grad." + name, shape, grad.data);
        });
  }
  out.write(args.output);
  log_info("wrote {}", args.output);
  return 0;
}

}  // namespace

Command add_forward(CLI::App& app) {
  auto args = std::make_shared<ForwardArgs>();
  app.add_option("--model", args->model_dir, "checkpoint directory (config.json + safetensors)")
      ->required();
  app.add_option("--input", args->input, "safetensors file with int64 input_ids [B, T]")
      ->required();
  app.add_option("--output", args->output, "safetensors file to write")->required();
  app.add_option("--threads", args->threads, "threads (default: all cores)");
  app.add_option(
      "--weights", args->weights,
      "weight format for inference: f32 (default; --grad needs it), bf16, q8_0, q4_0, fp8, "
      "auto (fp8 for an FP8 checkpoint, else f32)");
  app.add_flag("--grad", args->grad,
               "also write grad.<tensor> = d loss / d tensor for every checkpoint tensor");
  return [args] { return run_on_ranks([args] { return run_forward(*args); }); };
}

}  // namespace dsmoe::cli
