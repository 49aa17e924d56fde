// attention_impl.h: the two attention families behind attention.h (internal to src/model).
#pragma once
#include "kernels/attention_shape.h"
#include "model/attention.h"

namespace dsmoe {

void mla_forward(const ModelConfig& c, const AttentionWeights& w, const float* x, float* out,
                 const AttentionContext& ctx, AttentionActs& a);
void mla_backward(const ModelConfig& c, const AttentionWeights& w, AttentionWeights& g,
                  const float* x, const float* dout, float* dx, const AttentionContext& ctx,
                  const AttentionActs& a);
void mha_forward(const ModelConfig& c, const AttentionWeights& w, const float* x, float* out,
                 const AttentionContext& ctx, AttentionActs& a);
void mha_backward(const ModelConfig& c, const AttentionWeights& w, AttentionWeights& g,
                  const float* x, const float* dout, float* dx, const AttentionContext& ctx,
                  const AttentionActs& a);

// Shape of a causal attention over [token, head, dim] buffers (see AttentionShape).
struct AttentionStrides {
  int64_t q_token, q_head, k_token, k_head, v_token, v_head, out_token, out_head;
};
inline AttentionShape attention_shape(int64_t n_q, int64_t n_kv, int64_t n_heads,
                                      int64_t n_kv_heads, int64_t qk_dim, int64_t v_dim,
                                      float scale, const AttentionStrides& st) {
  AttentionShape s;
  s.n_q_tokens = n_q, s.n_kv_tokens = n_kv, s.q_pos0 = n_kv - n_q;
  s.n_heads = n_heads, s.n_kv_heads = n_kv_heads, s.qk_dim = qk_dim, s.v_dim = v_dim;
  s.scale = scale;
  s.q_token_stride = st.q_token, s.q_head_stride = st.q_head;
  s.k_token_stride = st.k_token, s.k_head_stride = st.k_head;
  s.v_token_stride = st.v_token, s.v_head_stride = st.v_head;
  s.out_token_stride = st.out_token, s.out_head_stride = st.out_head;
  return s;
}

}  // namespace dsmoe
