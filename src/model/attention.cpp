#include "model/attention.h"

#include "model/attention_impl.h"
#include "util/check.h"

namespace dsmoe {

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
