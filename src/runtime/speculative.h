// speculative.h: MTP self-speculative decoding (DeepSeek-V3 sec. 2.2 / 5.4.3): the model's own
// MTP modules draft K tokens, draft k by module k as in training (module k reads module k - 1's
// output and draft k - 1; drafts past the last module chain it on its own output), one forward of
// the main model over the last token and the drafts (Model::forward_cached_batch, every logit)
// verifies them, and the latent KV cache is rolled back past the first rejected draft. Greedy
// output is that of plain greedy decoding token for token; sampling keeps the target
// distribution by the acceptance rule of Leviathan et al. / Chen et al. (2023).
#pragma once
#include <cstdint>
#include <vector>

#include "model/transformer.h"
#include "runtime/generate.h"

namespace dsmoe {

struct SpeculativeStats {
  GenerateStats generate;     // prompt, new tokens, prefill and decode seconds
  int64_t drafted = 0;        // draft tokens proposed
  int64_t accepted = 0;       // of them accepted
  int64_t main_forwards = 0;  // verification forwards of the main model after the prefill
  int64_t decode_tokens = 0;  // tokens those forwards produced (new tokens after the first)
  // Where the decode time went (seconds): the MTP module (catching up on the accepted rows and
  // drafting), the main model's verification forwards, and the rest (acceptance, sampling,
  // rollback).
  double draft_seconds = 0.0;
  double verify_seconds = 0.0;
  std::vector<int64_t> first_step_drafts;  // the drafts of the first decoding step (inspection)
  double acceptance_rate() const {
    return drafted > 0 ? static_cast<double>(accepted) / static_cast<double>(drafted) : 0.0;
  }
  double tokens_per_forward() const {
    return main_forwards > 0
               ? static_cast<double>(decode_tokens) / static_cast<double>(main_forwards)
               : 0.0;
  }
};

// As generate() with the cache (options.use_cache is ignored), drafting draft_tokens >= 1 tokens
// per main forward with the model's MTP modules (an Error when the model has none).
// Returns prompt + generated tokens.
std::vector<int64_t> generate_speculative(const Model& model, const std::vector<int64_t>& prompt,
                                          const GenerateOptions& options, int64_t draft_tokens,
                                          SpeculativeStats* stats = nullptr);

}  // namespace dsmoe
