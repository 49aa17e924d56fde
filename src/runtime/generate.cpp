#include "runtime/generate.h"

#include <algorithm>

#include "runtime/kv_cache.h"
#include "util/check.h"
#include "util/log.h"

namespace dsmoe {

bool is_stop_token(const GenerateOptions& options, const ModelConfig& config, int64_t token) {
  return (options.stop_at_eos && token == config.eos_token_id) ||
         std::find(options.stop_ids.begin(), options.stop_ids.end(), token) !=
             options.stop_ids.end();
}

std::vector<int64_t> generate(const Model& model, const std::vector<int64_t>& prompt,
                              const GenerateOptions& options, GenerateStats* stats) {
  const ModelConfig& c = model.config();
  DSMOE_CHECK(!prompt.empty(), "the prompt is empty");
  DSMOE_CHECK(options.max_new_tokens >= 0, "max new tokens must be >= 0");
  std::vector<int64_t> tokens = prompt;
  Rng rng(options.sampling.seed);
  KvCache cache(c,
                static_cast<int64_t>(prompt.size()) + std::max<int64_t>(options.max_new_tokens, 1));
  GenerateStats local;
  local.prompt_tokens = static_cast<int64_t>(prompt.size());
  local.cache_bytes_per_token = cache.bytes_per_token();

  Timer timer;
  Tensor logits;
  auto step = [&](const int64_t* ids, int64_t n) {
    if (options.use_cache) {
      logits = model.forward_cached(ids, n, cache.view());
      cache.advance(n);
    } else {  // reference path: the whole sequence, no cache, last row
      Tensor all = model.forward(tokens.data(), 1, static_cast<int64_t>(tokens.size()));
      logits = Tensor::zeros({c.vocab_size});
      std::copy(all.data + (all.dim(0) - 1) * c.vocab_size, all.data + all.numel(), logits.data);
    }
  };
  step(tokens.data(), static_cast<int64_t>(tokens.size()));
  local.prefill_seconds = timer.seconds();
  timer.reset();
  for (int64_t i = 0; i < options.max_new_tokens; i++) {
    const int64_t next = sample_token(logits.data, c.vocab_size, options.sampling, rng);
    tokens.push_back(next);
    local.new_tokens++;
    if (options.on_token) options.on_token(next);
    if (i + 1 == options.max_new_tokens) break;
    if (is_stop_token(options, c, next)) break;
    step(&tokens.back(), 1);
  }
  local.decode_seconds = timer.seconds();
  if (stats != nullptr) *stats = local;
  return tokens;
}

}  // namespace dsmoe
