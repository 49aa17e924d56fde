#include "runtime/kv_cache.h"

#include "util/check.h"

namespace dsmoe {

KvCache::KvCache(const ModelConfig& config, int64_t capacity) {
  DSMOE_CHECK(capacity > 0, "KV cache capacity must be positive, got {}", capacity);
  const int64_t row = config.kv_cache_row(), layers = config.num_hidden_layers;
  storage_.assign(static_cast<size_t>(layers * capacity * row), 0.0f);
  view_.capacity = capacity;
  view_.layers.resize(layers);
  for (int64_t L = 0; L < layers; L++) view_.layers[L] = storage_.data() + L * capacity * row;
  bytes_per_token_ = layers * row * static_cast<int64_t>(sizeof(float));
}

}  // namespace dsmoe
