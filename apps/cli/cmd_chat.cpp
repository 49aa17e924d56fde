// cmd_chat.cpp: dsmoe chat --model DIR: an interactive chat on stdin/stdout. Each turn renders the
// whole conversation with the checkpoint's chat template, keeps the KV cache of the tokens it
// shares with what the cache already holds (so earlier turns are not computed again), and
// streams the reply as its tokens come, until EOS or the template's end of turn.
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <iostream>
#include <memory>
#include <string>

#include "apps/cli/commands.h"
#include "apps/cli/common.h"
#include "runtime/kv_cache.h"
#include "runtime/sampling.h"
#include "runtime/tokenizer_codec.h"
#include "util/check.h"
#include "util/log.h"
#include "util/threads.h"

namespace dsmoe::cli {
namespace {

struct ChatArgs {
  std::string model_dir, system_prompt, weights = kWeightsAuto;
  int64_t max_new_tokens = 512;
  int64_t ctx_size = 4096;
  SamplingParams sampling;
  int threads = 0;
};

// One conversation: its messages, and the tokens whose keys and values the cache holds.
class ChatSession {
 public:
  ChatSession(const Model& model, const TextCodec& codec, const ChatArgs& args)
      : model_(model),
        codec_(codec),
        args_(args),
        cache_(model.config(), std::min(args.ctx_size, model.config().max_position_embeddings)),
        rng_(args.sampling.seed) {
    reset();
  }

  void reset() {
    messages_ = nlohmann::json::array();
    if (!args_.system_prompt.empty())
      messages_.push_back({{"role", "system"}, {"content", args_.system_prompt}});
  }

  // Adds the user's message, streams the reply to stdout and adds it to the conversation.
  void turn(const std::string& user_text) {
    messages_.push_back({{"role", "user"}, {"content", user_text}});
    const std::vector<int64_t> prompt = codec_.encode(codec_.render_chat(messages_, true));
    DSMOE_CHECK(static_cast<int64_t>(prompt.size()) < cache_.capacity(),
                "the conversation ({} tokens) fills the context of {} tokens: /reset starts over",
                prompt.size(), cache_.capacity());
    Tensor logits = prefill(prompt);
    std::unique_ptr<TokenDecoder> decoder = codec_.decoder();
    std::string reply;
    const std::vector<int64_t>& stop_ids = codec_.stop_ids();
    for (int64_t i = 0; i < args_.max_new_tokens && cache_.n_past() < cache_.capacity(); i++) {
      const int64_t token =
          sample_token(logits.data, model_.config().vocab_size, args_.sampling, rng_);
      if (std::find(stop_ids.begin(), stop_ids.end(), token) != stop_ids.end()) break;
      const std::string piece = decoder->push(token);
      reply += piece;
      std::fputs(piece.c_str(), stdout);
      std::fflush(stdout);
      logits = model_.forward_cached(&token, 1, cache_.view());
      cache_.advance(1);
      cached_.push_back(token);
    }
    const std::string rest = decoder->flush();
    reply += rest;
    std::printf("%s\n", rest.c_str());
    std::fflush(stdout);
    messages_.push_back({{"role", "assistant"}, {"content", reply}});
  }

 private:
  // Runs what the cache does not hold yet of `prompt` and returns the last position's logits.
  // The cache keeps the longest common prefix (at least one token is always run again, for its
  // logits).
  Tensor prefill(const std::vector<int64_t>& prompt) {
    size_t shared = 0;
    while (shared < cached_.size() && shared + 1 < prompt.size() &&
           cached_[shared] == prompt[shared])
      shared++;
    cached_.resize(shared);
    cache_.view().n_past = static_cast<int64_t>(shared);
    const int64_t n_new = static_cast<int64_t>(prompt.size() - shared);
    Tensor logits = model_.forward_cached(prompt.data() + shared, n_new, cache_.view());
    cache_.advance(n_new);
    cached_.assign(prompt.begin(), prompt.end());
    log_info("turn {}: {} prompt tokens, {} of them from the cache", ++turns_, prompt.size(),
             shared);
    return logits;
  }

  const Model& model_;
  const TextCodec& codec_;
  const ChatArgs& args_;
  KvCache cache_;
  Rng rng_;
  nlohmann::json messages_;
  std::vector<int64_t> cached_;  // the tokens the cache holds, in order
  int64_t turns_ = 0;
};

int run_chat(const ChatArgs& args) {
  set_num_threads(args.threads);
  Model model = load_inference_model(args.model_dir, args.weights);
  const std::unique_ptr<TextCodec> codec = load_text_codec(args.model_dir, model.config());
  ChatSession session(model, *codec, args);
  const bool interactive = isatty(STDIN_FILENO) != 0;
  if (interactive)
    std::fprintf(stderr, "dsmoe chat: type a message; /reset starts over, /exit or Ctrl-D ends\n");
  std::string line;
  while (true) {
    if (interactive) std::fprintf(stderr, "> ");
    if (!std::getline(std::cin, line) || line == "/exit") break;
    if (line == "/reset") {
      session.reset();
      continue;
    }
    if (line.empty()) continue;
    session.turn(line);
  }
  return 0;
}

}  // namespace

Command add_chat(CLI::App& app) {
  auto args = std::make_shared<ChatArgs>();
  app.add_option("--model", args->model_dir, "checkpoint directory (with tokenizer.json)")
      ->required();
  app.add_option("--system", args->system_prompt, "a system message to begin with");
  app.add_option("--max-new-tokens", args->max_new_tokens, "most tokens per reply (512)")
      ->check(CLI::PositiveNumber);
  app.add_option("--ctx-size", args->ctx_size, "context (KV cache) tokens, default 4096")
      ->check(CLI::PositiveNumber);
  add_sampling_options(app, args->sampling);
  app.add_option("--threads", args->threads, "threads (default: all cores)");
  app.add_option(
      "--weights", args->weights,
      "weight format for inference: auto (default: fp8 for an FP8 checkpoint, else f32), f32, "
      "bf16, q8_0, q4_0, fp8");
  return [args] { return run_chat(*args); };
}

}  // namespace dsmoe::cli
