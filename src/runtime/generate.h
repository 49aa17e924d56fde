// generate.h: text generation as prefill (the whole prompt through the cache) followed by
// decode steps of one token each.
#pragma once
#include <cstdint>
#include <functional>
#include <vector>

#include "model/transformer.h"
#include "runtime/sampling.h"

namespace dsmoe {

struct GenerateStats {
  int64_t prompt_tokens = 0;
  int64_t new_tokens = 0;
  double prefill_seconds = 0.0;
  double decode_seconds = 0.0;
  int64_t cache_bytes_per_token = 0;
};

struct GenerateOptions {
  int64_t max_new_tokens = 16;
  SamplingParams sampling;
  bool use_cache = true;     // false: recompute the whole sequence for every token
  bool stop_at_eos = false;  // stop after emitting config.eos_token_id
  std::vector<int64_t> stop_ids;  // also stop after emitting any of these (end of turn)
  // Called with each new token as soon as it is chosen.
  std::function<void(int64_t token)> on_token;
};

// Whether generation stops after emitting `token` (EOS with stop_at_eos, or one of stop_ids).
bool is_stop_token(const GenerateOptions& options, const ModelConfig& config, int64_t token);

// Returns prompt + generated tokens.
std::vector<int64_t> generate(const Model& model, const std::vector<int64_t>& prompt,
                              const GenerateOptions& options, GenerateStats* stats = nullptr);

}  // namespace dsmoe
