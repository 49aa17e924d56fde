// kv_cache.h: KvCache, the per-sequence attention cache. For MLA models it holds per token and
// layer only the compressed latent (kv_lora_rank floats, after kv_a_layernorm) and the shared
// rope key (qk_rope_head_dim floats); for V1 the k and v of every KV head.
#pragma once
#include <cstdint>
#include <vector>

#include "model/config.h"
#include "model/transformer.h"

namespace dsmoe {

class KvCache {
 public:
  KvCache(const ModelConfig& config, int64_t capacity);

  KvCacheView& view() { return view_; }
  int64_t n_past() const { return view_.n_past; }
  int64_t capacity() const { return view_.capacity; }
  void advance(int64_t n_tokens) { view_.n_past += n_tokens; }
  void clear() { view_.n_past = 0; }
  // Bytes one token occupies across all layers (float32).
  int64_t bytes_per_token() const { return bytes_per_token_; }

 private:
  std::vector<float> storage_;  // (layers, capacity, row)
  KvCacheView view_;
  int64_t bytes_per_token_ = 0;
};

}  // namespace dsmoe
