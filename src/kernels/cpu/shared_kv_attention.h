// shared_kv_attention.h (cpu): attention of a few query tokens over one KV head that every head
// shares: MLA's absorbed decode, where the latent cache rows (c_kv | rope key) are the keys and
// their first kv_lora_rank columns the values.
#pragma once

#include <cstdint>

#include "kernels/attention_shape.h"

namespace dsmoe::cpu {

// out[token, head] = softmax(scale * q[token, head] . k^T, causal) . v for s.n_kv_heads == 1 and
// queries / outputs laid out [token, head, dim] without gaps (q_token_stride == n_heads *
// q_head_stride, the same for out). The keys are split over the threads: each thread streams its
// range of the cache once, keeps its own running softmax (maximum and sum per query row) and a
// partial output, and the parts are merged at the end (as flash-decoding splits the keys). Per
// 16 query rows, one vector holds a key's scores for all of them, so the softmax needs no
// horizontal sums. float32 products and sums throughout.
void shared_kv_attention(float* out, const float* q, const float* k, const float* v,
                         const AttentionShape& s);

// Tests: run the scalar loops even where the AVX-512 ones could.
void shared_kv_attention_force_portable(bool on);

}  // namespace dsmoe::cpu
