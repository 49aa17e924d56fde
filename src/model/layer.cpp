#include "model/layer.h"

#include <algorithm>

#include "kernels/cpu/ops.h"
#include "util/profile.h"

namespace dsmoe {

void layer_forward(const ModelConfig& c, const LayerWeights& w, bool is_moe, float* x,
                   const AttentionContext& ctx, LayerActs& a, bool keep,
                   const MoeTraining* moe_training) {
  const int64_t N = ctx.n_seqs * ctx.n_tokens, H = c.hidden_size;
  std::vector<float> branch(N * H);  // (N, H)
  if (keep) a.x_in.assign(x, x + N * H);
  a.normed1.resize(N * H);
  a.normed2.resize(N * H);
  {
    ProfileScope timer(ProfileOp::kNormResidual);
    cpu::rmsnorm_forward(a.normed1.data(), x, w.input_layernorm.data, N, H, c.rms_norm_eps);
  }
  {
    ProfileScope timer(ProfileOp::kAttention);
    attention_forward(c, w.attn, a.normed1.data(), branch.data(), ctx, &a.attn);
  }
  {
    ProfileScope timer(ProfileOp::kNormResidual);
    for (int64_t i = 0; i < N * H; i++) x[i] += branch[i];
    if (keep) a.x_mid.assign(x, x + N * H);
    cpu::rmsnorm_forward(a.normed2.data(), x, w.post_attention_layernorm.data, N, H,
                         c.rms_norm_eps);
  }
  if (is_moe) {  // (timed inside, per kind)
    moe_forward(c, w.moe, a.normed2.data(), branch.data(), N, a.moe, moe_training);
  } else {
    ProfileScope timer(ProfileOp::kDenseMlp);
    mlp_forward(w.mlp, a.normed2.data(), branch.data(), N, H, c.intermediate_size, a.mlp);
  }
  ProfileScope timer(ProfileOp::kNormResidual);
  for (int64_t i = 0; i < N * H; i++) x[i] += branch[i];
}

void layer_backward(const ModelConfig& c, const LayerWeights& w, LayerWeights& g, bool is_moe,
                    float* dx, const AttentionContext& ctx, const LayerActs& a) {
  const int64_t N = ctx.n_seqs * ctx.n_tokens, H = c.hidden_size;
  std::vector<float> dnormed(N * H, 0.0f);  // (N, H)
  // x_out = x_mid + ffn(norm2(x_mid))
  if (is_moe)
    moe_backward(c, w.moe, g.moe, a.normed2.data(), dx, dnormed.data(), N, a.moe);
  else
    mlp_backward(w.mlp, g.mlp, a.normed2.data(), dx, dnormed.data(), N, H, c.intermediate_size,
                 a.mlp);
  cpu::rmsnorm_backward(dx, g.post_attention_layernorm.data, dnormed.data(), a.x_mid.data(),
                        w.post_attention_layernorm.data, N, H, c.rms_norm_eps);
  // x_mid = x_in + attention(norm1(x_in))
  std::fill(dnormed.begin(), dnormed.end(), 0.0f);
  attention_backward(c, w.attn, g.attn, a.normed1.data(), dx, dnormed.data(), ctx, a.attn);
  cpu::rmsnorm_backward(dx, g.input_layernorm.data, dnormed.data(), a.x_in.data(),
                        w.input_layernorm.data, N, H, c.rms_norm_eps);
}

}  // namespace dsmoe
