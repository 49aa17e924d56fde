// attention_shape.h: the geometry of one causal attention call, shared by the reference and the
// fast kernels. Strides are in elements; every buffer is addressed [token, head, dim].
#pragma once
#include <cstdint>

namespace dsmoe {

struct AttentionShape {
  int64_t n_q_tokens = 0;   // queries, positions q_pos0 .. q_pos0 + n_q_tokens - 1
  int64_t n_kv_tokens = 0;  // keys/values, positions 0 .. n_kv_tokens - 1
  int64_t q_pos0 = 0;       // query t sees keys 0 .. q_pos0 + t (causal)
  int64_t n_heads = 0;
  int64_t n_kv_heads = 0;  // divides n_heads; head h reads kv head h / (n_heads / n_kv_heads)
  int64_t qk_dim = 0;
  int64_t v_dim = 0;
  float scale = 1.0f;  // applied to q.k before the softmax
  int64_t q_token_stride = 0, q_head_stride = 0;
  int64_t k_token_stride = 0, k_head_stride = 0;
  int64_t v_token_stride = 0, v_head_stride = 0;
  int64_t out_token_stride = 0, out_head_stride = 0;
};

}  // namespace dsmoe
