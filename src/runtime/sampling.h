// sampling.h: choosing the next token from logits: greedy, temperature, top-k, top-p (nucleus).
#pragma once
#include <cstdint>
#include <vector>

#include "tensor/random.h"

namespace dsmoe {

struct SamplingParams {
  float temperature = 0.0f;  // 0: greedy (argmax)
  int64_t top_k = 0;         // 0: no limit
  float top_p = 1.0f;        // 1: no limit
  uint64_t seed = 0;
};

// Picks a token from logits [vocab_size]; rng is advanced only when sampling.
int64_t sample_token(const float* logits, int64_t vocab_size, const SamplingParams& params,
                     Rng& rng);

// The distribution sample_token draws from: probs [vocab_size] (greedy: 1 at the argmax).
void sampling_distribution(const float* logits, int64_t vocab_size, const SamplingParams& params,
                           std::vector<double>& probs);

// A draw from probs (weights summing to a positive total; normalized here).
int64_t sample_from(const std::vector<double>& probs, Rng& rng);

}  // namespace dsmoe
