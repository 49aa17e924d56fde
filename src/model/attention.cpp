#include "model/attention.h"

#include "model/attention_impl.h"
#include "util/check.h"

namespace dsmoe {

std::vector<AttentionSegment> attention_segments(const AttentionContext& ctx) {
  if (ctx.segments != nullptr) return *ctx.segments;
  DSMOE_ASSERT(ctx.cache == nullptr || ctx.n_seqs == 1);
  return std::vector<AttentionSegment>(
      ctx.n_seqs, AttentionSegment{ctx.n_tokens, ctx.n_past, ctx.cache, ctx.cos, ctx.sin});
}

void attention_forward(const ModelConfig& config, const AttentionWeights& weights, const float* x,
                       float* out, const AttentionContext& context, AttentionActs* acts) {
  AttentionActs local;
  AttentionActs& a = acts != nullptr ? *acts : local;
  if (config.use_mla())
    mla_forward(config, weights, x, out, context, a);
  else
    mha_forward(config, weights, x, out, context, a);
}

void attention_backward(const ModelConfig& config, const AttentionWeights& weights,
                        AttentionWeights& grads, const float* x, const float* dout, float* dx,
                        const AttentionContext& context, const AttentionActs& acts) {
  DSMOE_ASSERT(context.cache == nullptr);
  if (config.use_mla())
    mla_backward(config, weights, grads, x, dout, dx, context, acts);
  else
    mha_backward(config, weights, grads, x, dout, dx, context, acts);
}

}  // namespace dsmoe
