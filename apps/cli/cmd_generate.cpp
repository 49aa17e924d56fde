// cmd_generate.cpp: dsmoe generate --model DIR --prompt-ids 5,17,3 --max-new-tokens N ...
#include <fmt/format.h>
#include <fmt/ranges.h>

#include <algorithm>
#include <cstdio>
#include <memory>
#include <sstream>

#include "apps/cli/commands.h"
#include "apps/cli/common.h"
#include "apps/cli/parallel.h"
#include "model/transformer.h"
#include "runtime/generate.h"
#include "runtime/speculative.h"
#include "runtime/tokenizer_codec.h"
#include "util/check.h"
#include "util/log.h"
#include "util/threads.h"

namespace dsmoe::cli {
namespace {

struct GenerateArgs {
  std::string model_dir, prompt_ids, prompt_text;
  int64_t max_new_tokens = 16;
  SamplingParams sampling;
  bool print_ids = false;
  bool no_cache = false;
  bool stop_at_eos = false;
  int threads = 0;
  std::string weights = kWeightsAuto;
  std::string speculative;   // "" or "mtp"
  int64_t draft_tokens = 1;  // drafts per main forward with --speculative mtp
};

std::vector<int64_t> parse_ids(const std::string& text) {
  std::vector<int64_t> ids;
  std::stringstream stream(text);
  std::string item;
  while (std::getline(stream, item, ',')) {
    size_t used = 0;
    int64_t value = 0;
    try {
      value = std::stoll(item, &used);
    } catch (const std::exception&) {
      used = 0;
    }
    DSMOE_CHECK(used > 0 && item.find_first_not_of(" ", used) == std::string::npos,
                "--prompt-ids: '{}' is not an integer (expected e.g. 5,17,3)", item);
    ids.push_back(value);
  }
  DSMOE_CHECK(!ids.empty(), "--prompt-ids is empty");
  return ids;
}

int run_generate(const GenerateArgs& args) {
  set_num_threads(args.threads);
  DSMOE_CHECK(args.prompt_ids.empty() != args.prompt_text.empty(),
              "give exactly one of --prompt-ids and --prompt");
  const bool text_mode = !args.prompt_text.empty();
  // Under mpirun rank 0 generates and prints; the other ranks hold their share of the experts
  // and serve rank 0's tokens until it is done.
  Comm& comm = world_comm();
  Model model = load_parallel_model(comm, args.model_dir, args.weights);
  const ModelConfig& c = model.config();
  if (comm.rank() != 0) {
    serve_experts(c, model.weights());
    return 0;
  }
  // The checkpoint's tokenizer.json, or the byte-level text of `dsmoe train` models.
  const std::unique_ptr<TextCodec> codec = text_mode ? load_text_codec(args.model_dir, c) : nullptr;
  const std::vector<int64_t> prompt =
      text_mode ? codec->encode(args.prompt_text) : parse_ids(args.prompt_ids);
  DSMOE_CHECK(!prompt.empty(), "--prompt is empty");
  for (size_t i = 0; i < prompt.size(); i++)
    DSMOE_CHECK(prompt[i] >= 0 && prompt[i] < c.vocab_size,
                "prompt: id {} at position {} is outside the model's vocabulary [0, {})", prompt[i],
                i, c.vocab_size);
  GenerateOptions options;
  options.max_new_tokens = args.max_new_tokens;
  options.sampling = args.sampling;
  options.use_cache = !args.no_cache;
  options.stop_at_eos = args.stop_at_eos;
  std::unique_ptr<TokenDecoder> decoder;
  if (text_mode) {
    options.stop_ids = codec->stop_ids();  // EOS and end of turn end a text
    decoder = codec->decoder();
    if (!args.print_ids) std::printf("%s", args.prompt_text.c_str());
  }
  const std::vector<int64_t>& stop_ids = options.stop_ids;
  if (!args.print_ids)
    options.on_token = [&](int64_t token) {
      if (!text_mode)
        std::printf("%lld ", static_cast<long long>(token));
      else if (std::find(stop_ids.begin(), stop_ids.end(), token) == stop_ids.end())
        std::printf("%s", decoder->push(token).c_str());
      std::fflush(stdout);
    };
  GenerateStats stats;
  std::vector<int64_t> tokens;
  if (args.speculative == "mtp") {
    DSMOE_CHECK(!args.no_cache, "--speculative mtp needs the KV cache (drop --no-cache)");
    SpeculativeStats spec;
    tokens = generate_speculative(model, prompt, options, args.draft_tokens, &spec);
    stats = spec.generate;
    log_info(
        "speculative (MTP, {} drafts): {} of {} drafts accepted ({:.1f}%), {:.2f} tokens per "
        "main-model forward",
        args.draft_tokens, spec.accepted, spec.drafted, 100 * spec.acceptance_rate(),
        spec.tokens_per_forward());
  } else {
    tokens = generate(model, prompt, options, &stats);
  }
  release_expert_servers(c, model.weights());
  if (!args.print_ids) std::printf("%s\n", decoder ? decoder->flush().c_str() : "");
  if (options.use_cache)
    log_info("KV cache: {} bytes per token ({}: {} floats per layer x {} layers)",
             stats.cache_bytes_per_token, c.use_mla() ? "latent c_kv + rope key" : "k + v",
             c.kv_cache_row(), c.num_hidden_layers);
  log_info("prefill {} tokens in {:.3f} s; decoded {} tokens in {:.3f} s ({:.1f} tokens/s)",
           stats.prompt_tokens, stats.prefill_seconds, stats.new_tokens, stats.decode_seconds,
           stats.new_tokens > 1 ? (stats.new_tokens - 1) / stats.decode_seconds : 0.0);
  if (args.print_ids) fmt::print("{}\n", fmt::join(tokens, ","));
  return 0;
}

}  // namespace

Command add_generate(CLI::App& app) {
  auto args = std::make_shared<GenerateArgs>();
  app.add_option("--model", args->model_dir, "checkpoint directory")->required();
  app.add_option("--prompt-ids", args->prompt_ids, "comma-separated prompt token ids");
  app.add_option("--prompt", args->prompt_text,
                 "prompt text, encoded with the checkpoint's tokenizer.json (byte-level for "
                 "models trained by dsmoe train); prints text and stops at EOS / end of turn");
  app.add_option("--max-new-tokens", args->max_new_tokens, "tokens to generate")
      ->check(CLI::NonNegativeNumber);
  add_sampling_options(app, args->sampling);
  app.add_flag("--print-ids", args->print_ids,
               "print prompt + new ids as one comma-separated line, last on stdout");
  app.add_flag("--no-cache", args->no_cache, "recompute the whole sequence for every token");
  app.add_flag("--stop-at-eos", args->stop_at_eos, "stop after the config's eos_token_id");
  app.add_option("--threads", args->threads, "threads (default: all cores)");
  app.add_option(
      "--weights", args->weights,
      "weight format for inference: auto (default: fp8 for an FP8 checkpoint, else f32), f32, "
      "bf16, q8_0, q4_0, fp8");
  app.add_option("--speculative", args->speculative,
                 "mtp: draft with the model's own MTP modules (draft k by module k) and verify "
                 "with one forward")
      ->check(CLI::IsMember({"mtp"}));
  app.add_option("--draft-tokens", args->draft_tokens,
                 "tokens drafted per main-model forward with --speculative (default 1)")
      ->check(CLI::PositiveNumber);
  return [args] { return run_on_ranks([args] { return run_generate(*args); }); };
}

}  // namespace dsmoe::cli
