#include "model/transformer.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include "io/safetensors.h"
#include "kernels/cpu/ops.h"
#include "model/moe.h"
#include "model/quantize.h"
#include "model/rope.h"
#include "util/check.h"

namespace dsmoe {

Model::Model(ModelConfig config, ModelWeights weights)
    : config_(std::move(config)), weights_(std::move(weights)) {}

Model Model::load(const std::string& dir, WeightFormat format, ExpertShard shard) {
  ModelConfig config = load_model_config(dir);
  Checkpoint checkpoint(dir);
  ModelWeights weights = load_weights(config, checkpoint, format, shard);
  if (format == WeightFormat::kFP8 && holds_fp8_weights(config, checkpoint))
    derive_absorbed_weights_as_stored(config, checkpoint, weights);
  else
    derive_absorbed_weights(config, weights, format);
  Model model(std::move(config), std::move(weights));
  if (format != WeightFormat::kF32) model.weight_format_ = format;
  return model;
}

void Model::quantize(WeightFormat format) {
  quantize_weights(config_, weights_, format);
  derive_absorbed_weights(config_, weights_, format);
  if (format != WeightFormat::kF32) weight_format_ = format;
}

void Model::check_ids(const int64_t* ids, int64_t n) const {
  for (int64_t i = 0; i < n; i++)
    DSMOE_CHECK(ids[i] >= 0 && ids[i] < config_.vocab_size,
                "input id {} at position {} is outside the vocabulary [0, {})", ids[i], i,
                config_.vocab_size);
}

void Model::embed(const int64_t* ids, int64_t n, float* x) const {
  const int64_t H = config_.hidden_size;
  check_ids(ids, n);
  const Tensor& table = weights_.embed_tokens;
  for (int64_t i = 0; i < n; i++) {
    if (table.quant != nullptr)  // bf16 rows (quantized inference weights)
      dequantize_matrix_row(*table.quant, ids[i], x + i * H);
    else
      std::copy(table.data + ids[i] * H, table.data + (ids[i] + 1) * H, x + i * H);
  }
}

void Model::run_layers(float* x, int64_t n_seqs, int64_t n_tokens, KvCacheView* cache,
                       ForwardRecord* record, std::vector<LayerActs>* train,
                       const MoeTraining* moe_training) const {
  const ModelConfig& c = config_;
  const int64_t N = n_seqs * n_tokens, H = c.hidden_size, half = c.rope_dim() / 2;
  const int64_t n_past = cache != nullptr ? cache->n_past : 0;
  std::vector<float> cos(n_tokens * half), sin(n_tokens * half);  // (T, rope_dim/2)
  rope_angles(c, n_past, n_tokens, cos.data(), sin.data());
  AttentionContext ctx;
  ctx.n_seqs = n_seqs, ctx.n_tokens = n_tokens, ctx.n_past = n_past;
  ctx.cos = cos.data(), ctx.sin = sin.data(), ctx.mla_mode = mla_mode_;

  LayerActs scratch;  // inference: one set of buffers reused by every layer
  if (train != nullptr) train->resize(c.num_hidden_layers);
  for (int64_t L = 0; L < c.num_hidden_layers; L++) {
    LayerActs& a = train != nullptr ? (*train)[L] : scratch;
    ctx.cache = cache != nullptr ? cache->layers[L] : nullptr;
    layer_forward(c, weights_.layers[L], c.is_moe_layer(L), x, ctx, a, train != nullptr,
                  moe_training);
    if (record != nullptr && record->keep_routes && c.is_moe_layer(L))
      record->routes[L] = a.moe.routing;
    if (record != nullptr && record->keep_hidden) {
      Tensor h = Tensor::zeros({N, H});
      std::copy(x, x + N * H, h.data);
      record->hidden.push_back(std::move(h));
    }
  }
}

Tensor Model::forward(const int64_t* ids, int64_t n_seqs, int64_t n_tokens,
                      ForwardRecord* record) const {
  const ModelConfig& c = config_;
  const int64_t N = n_seqs * n_tokens, H = c.hidden_size;
  DSMOE_CHECK(n_seqs > 0 && n_tokens > 0, "empty input: {} sequences of {} tokens", n_seqs,
              n_tokens);
  std::vector<float> x(N * H);  // (N, H) the residual stream
  embed(ids, N, x.data());
  if (record != nullptr) {
    record->hidden.clear();
    record->routes.clear();
    if (record->keep_hidden) {
      Tensor h = Tensor::zeros({N, H});
      std::copy(x.begin(), x.end(), h.data);
      record->hidden.push_back(std::move(h));
    }
  }
  run_layers(x.data(), n_seqs, n_tokens, nullptr, record);
  cpu::rmsnorm_forward(x.data(), x.data(), weights_.norm.data, N, H, c.rms_norm_eps);
  if (record != nullptr && record->keep_hidden)
    std::copy(x.begin(), x.end(), record->hidden.back().data);  // the final norm replaces it
  Tensor logits = Tensor::zeros({N, c.vocab_size});
  cpu::linear(logits.data, x.data(), weights_.lm_head, N, H, c.vocab_size);
  return logits;
}

Tensor Model::forward_cached(const int64_t* ids, int64_t n_tokens, KvCacheView& cache,
                             ForwardRecord* record) const {
  const ModelConfig& c = config_;
  const int64_t H = c.hidden_size;
  DSMOE_CHECK(n_tokens > 0, "forward_cached: no tokens");
  DSMOE_CHECK(cache.n_past + n_tokens <= cache.capacity,
              "KV cache full: {} tokens stored + {} new exceed its capacity of {}", cache.n_past,
              n_tokens, cache.capacity);
  DSMOE_ASSERT(static_cast<int64_t>(cache.layers.size()) == c.num_hidden_layers);
  std::vector<float> x(n_tokens * H);  // (T, H)
  embed(ids, n_tokens, x.data());
  run_layers(x.data(), 1, n_tokens, &cache, nullptr);
  if (record != nullptr && record->keep_last_hidden) {
    record->last_hidden = Tensor::zeros({n_tokens, H});
    std::copy(x.begin(), x.end(), record->last_hidden.data);
  }
  float* last = x.data() + (n_tokens - 1) * H;
  cpu::rmsnorm_forward(last, last, weights_.norm.data, 1, H, c.rms_norm_eps);
  Tensor logits = Tensor::zeros({c.vocab_size});
  cpu::linear(logits.data, last, weights_.lm_head, 1, H, c.vocab_size);
  return logits;
}

Tensor Model::forward_cached_batch(const std::vector<CachedStep>& steps,
                                   ForwardRecord* record) const {
  const ModelConfig& c = config_;
  const int64_t V = c.vocab_size;
  std::vector<int64_t> first_out(steps.size());  // each step's first logits row
  int64_t n_out = 0;
  for (size_t i = 0; i < steps.size(); i++) {
    const CachedStep& step = steps[i];
    DSMOE_CHECK(step.cache != nullptr && step.ids != nullptr && step.n_tokens > 0,
                "forward_cached_batch: step {} has no tokens or no cache", i);
    const KvCacheView& cache = *step.cache;
    DSMOE_CHECK(cache.n_past + step.n_tokens <= cache.capacity,
                "KV cache of step {} full: {} tokens stored + {} new exceed its capacity of {}", i,
                cache.n_past, step.n_tokens, cache.capacity);
    DSMOE_ASSERT(static_cast<int64_t>(cache.layers.size()) == c.num_hidden_layers);
    for (size_t j = 0; j < i; j++)
      DSMOE_CHECK(steps[j].cache != step.cache,
                  "forward_cached_batch: steps {} and {} share a cache", j, i);
    check_ids(step.ids, step.n_tokens);
    first_out[i] = n_out;
    n_out += step.all_logits ? step.n_tokens : 1;
  }
  Tensor logits = Tensor::zeros({n_out, V});
  // A prefill chunk (several tokens, the last one's logits) goes through a pass of its own, as
  // forward_cached runs it: its products take their kernels by its own row count (GEMMs from a
  // few rows on), so that its bits do not depend on the batch; its rows already share each read
  // of the weights. Every other row (decode steps, and each token of an all_logits step, which
  // is decoded as if one at a time) goes through one pass together.
  std::vector<size_t> together;
  for (size_t i = 0; i < steps.size(); i++) {
    const CachedStep& step = steps[i];
    if (step.n_tokens > 1 && !step.all_logits) {
      Tensor row = forward_cached(step.ids, step.n_tokens, *step.cache);
      std::copy(row.data, row.data + V, logits.data + first_out[i] * V);
    } else {
      together.push_back(i);
    }
  }
  if (record != nullptr) record->routes.clear();
  if (!together.empty()) decode_rows(steps, together, first_out, logits.data, record);
  return logits;
}

void Model::decode_rows(const std::vector<CachedStep>& steps, const std::vector<size_t>& which,
                        const std::vector<int64_t>& first_out, float* logits,
                        ForwardRecord* record) const {
  const ModelConfig& c = config_;
  const int64_t H = c.hidden_size, V = c.vocab_size, half = c.rope_dim() / 2;
  // Exact: every product gives each row the bits of that row alone (cpu::set_row_kernels).
  const cpu::RowKernelsScope row_kernels(exact_batches_);
  int64_t n_rows = 0;
  for (size_t i : which) n_rows += steps[i].n_tokens;
  std::vector<float> x(n_rows * H);  // (rows, H) the residual stream
  std::vector<float> cos(n_rows * half), sin(n_rows * half);
  // Each row is a segment of one token at its position, attending to its sequence's cache
  // (a row of an all_logits step sees the rows before it, written by the segments before it).
  std::vector<AttentionSegment> segments(n_rows);
  std::vector<KvCacheView*> caches(n_rows);
  std::vector<int64_t> out_rows, logit_rows;  // rows that give logits, and where they go
  int64_t r = 0;
  for (size_t i : which) {
    const CachedStep& step = steps[i];
    embed(step.ids, step.n_tokens, x.data() + r * H);
    for (int64_t t = 0; t < step.n_tokens; t++, r++) {
      const int64_t position = step.cache->n_past + t;
      rope_angles(c, position, 1, cos.data() + r * half, sin.data() + r * half);
      segments[r] = {1, position, nullptr, cos.data() + r * half, sin.data() + r * half};
      caches[r] = step.cache;
      if (step.all_logits || t + 1 == step.n_tokens) {
        logit_rows.push_back(r);
        out_rows.push_back(first_out[i] + (step.all_logits ? t : 0));
      }
    }
  }
  AttentionContext ctx;
  ctx.n_seqs = n_rows, ctx.n_tokens = 1, ctx.segments = &segments, ctx.mla_mode = mla_mode_;
  LayerActs scratch;
  for (int64_t L = 0; L < c.num_hidden_layers; L++) {
    for (int64_t row = 0; row < n_rows; row++) segments[row].cache = caches[row]->layers[L];
    layer_forward(c, weights_.layers[L], c.is_moe_layer(L), x.data(), ctx, scratch, false, nullptr);
    if (record != nullptr && record->keep_routes && c.is_moe_layer(L))
      record->routes[L] = scratch.moe.routing;
  }
  if (record != nullptr && record->keep_last_hidden) {
    record->last_hidden = Tensor::zeros({n_rows, H});
    std::copy(x.begin(), x.end(), record->last_hidden.data);
  }
  const auto n_logits = static_cast<int64_t>(logit_rows.size());
  std::vector<float> last(n_logits * H), rows_logits(n_logits * V);
  for (int64_t j = 0; j < n_logits; j++)
    std::copy(x.data() + logit_rows[j] * H, x.data() + (logit_rows[j] + 1) * H,
              last.data() + j * H);
  cpu::rmsnorm_forward(last.data(), last.data(), weights_.norm.data, n_logits, H, c.rms_norm_eps);
  cpu::linear(rows_logits.data(), last.data(), weights_.lm_head, n_logits, H, V);
  for (int64_t j = 0; j < n_logits; j++)
    std::copy(rows_logits.data() + j * V, rows_logits.data() + (j + 1) * V,
              logits + out_rows[j] * V);
}

Tensor Model::mtp_forward_cached(int64_t module, const float* h_prev, const int64_t* ids,
                                 int64_t n_tokens, KvCacheView& cache, float* h_out) const {
  const ModelConfig& c = config_;
  const int64_t H = c.hidden_size, half = c.rope_dim() / 2;
  DSMOE_CHECK(module >= 0 && module < static_cast<int64_t>(weights_.mtp.size()),
              "MTP module {} requested, the model has {}", module, weights_.mtp.size());
  DSMOE_CHECK(n_tokens > 0 && cache.n_past + n_tokens <= cache.capacity && cache.layers.size() == 1,
              "MTP cache: {} tokens stored + {} new exceed its capacity of {}", cache.n_past,
              n_tokens, cache.capacity);
  const MtpWeights& m = weights_.mtp[module];
  // eq. 21: eh_proj . [enorm(Emb(t)) | hnorm(h_prev)]
  std::vector<float> emb(n_tokens * H), h_normed(n_tokens * H), cat(n_tokens * 2 * H);
  embed(ids, n_tokens, emb.data());
  cpu::rmsnorm_forward(emb.data(), emb.data(), m.enorm.data, n_tokens, H, c.rms_norm_eps);
  cpu::rmsnorm_forward(h_normed.data(), h_prev, m.hnorm.data, n_tokens, H, c.rms_norm_eps);
  for (int64_t i = 0; i < n_tokens; i++) {
    std::copy(emb.begin() + i * H, emb.begin() + (i + 1) * H, cat.begin() + i * 2 * H);
    std::copy(h_normed.begin() + i * H, h_normed.begin() + (i + 1) * H,
              cat.begin() + i * 2 * H + H);
  }
  cpu::linear(h_out, cat.data(), m.eh_proj, n_tokens, 2 * H, H);
  // eq. 22: its block, attending to the module's own cache.
  std::vector<float> cos(n_tokens * half), sin(n_tokens * half);
  rope_angles(c, cache.n_past, n_tokens, cos.data(), sin.data());
  AttentionContext ctx;
  ctx.n_seqs = 1, ctx.n_tokens = n_tokens, ctx.n_past = cache.n_past;
  ctx.cos = cos.data(), ctx.sin = sin.data(), ctx.mla_mode = mla_mode_;
  ctx.cache = cache.layers[0];
  LayerActs scratch;
  layer_forward(c, m.block, c.is_moe_layer(c.num_hidden_layers + module), h_out, ctx, scratch,
                false, nullptr);
  // eq. 23: the shared head on the last row.
  std::vector<float> last(h_out + (n_tokens - 1) * H, h_out + n_tokens * H);
  cpu::rmsnorm_forward(last.data(), last.data(), m.shared_head_norm.data, 1, H, c.rms_norm_eps);
  Tensor logits = Tensor::zeros({c.vocab_size});
  cpu::linear(logits.data, last.data(), weights_.lm_head, 1, H, c.vocab_size);
  return logits;
}

double next_token_loss_backward(const float* logits, const int64_t* ids, int64_t n_seqs,
                                int64_t n_tokens, int64_t vocab_size, float* dlogits) {
  if (dlogits != nullptr)  // the last position of each sequence predicts nothing
    for (int64_t b = 0; b < n_seqs; b++) {
      float* last = dlogits + (b * n_tokens + n_tokens - 1) * vocab_size;
      std::fill(last, last + vocab_size, 0.0f);
    }
  if (n_tokens < 2) return 0.0;
  const int64_t n_predictions = n_seqs * (n_tokens - 1);
  // d/d logit_v of the mean = (softmax_v - [v == target]) / n_predictions
  const float scale = 1.0f / static_cast<float>(n_predictions);
  // Positions in parallel, each loss kept apart and summed in order afterwards, so that the
  // loss does not depend on the thread count.
  std::vector<double> losses(n_predictions);
#pragma omp parallel for schedule(static) if (n_predictions * vocab_size > (1 << 16))
  for (int64_t i = 0; i < n_predictions; i++) {
    const int64_t b = i / (n_tokens - 1), t = i % (n_tokens - 1);
    const int64_t position = b * n_tokens + t;
    losses[i] =
        cpu::cross_entropy_row(logits + position * vocab_size, vocab_size, ids[position + 1], scale,
                               dlogits != nullptr ? dlogits + position * vocab_size : nullptr);
  }
  double total = 0.0;
  for (double loss : losses) total += loss;
  return total / static_cast<double>(n_predictions);
}

double next_token_loss(const float* logits, const int64_t* ids, int64_t n_seqs, int64_t n_tokens,
                       int64_t vocab_size) {
  return next_token_loss_backward(logits, ids, n_seqs, n_tokens, vocab_size, nullptr);
}

}  // namespace dsmoe
