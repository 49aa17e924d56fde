// mha.cpp: DeepSeekMoE V1 attention: Llama-style multi-head attention with grouped KV heads and
// rotate-half RoPE over the whole head; forward and backward.
#include <algorithm>
#include <vector>

#include "kernels/cpu/ops.h"
#include "model/attention_impl.h"

namespace dsmoe {
namespace {

void add_bias(float* x, const Tensor& bias, int64_t n_rows, int64_t n_cols) {
  if (bias.empty()) return;
  for (int64_t r = 0; r < n_rows; r++)
    for (int64_t c = 0; c < n_cols; c++) x[r * n_cols + c] += bias.data[c];
}

// dbias[n_cols] += sum over rows of d (when the model has biases).
void bias_backward(Tensor& dbias, const float* d, int64_t n_rows, int64_t n_cols) {
  if (dbias.empty()) return;
  for (int64_t r = 0; r < n_rows; r++)
    for (int64_t c = 0; c < n_cols; c++) dbias.data[c] += d[r * n_cols + c];
}

// Attention over rows [k | v] of one sequence, rows addressed with token stride `row`.
AttentionShape mha_shape(const ModelConfig& c, int64_t n_q, int64_t n_kv) {
  const int64_t hd = c.head_dim, q_dim = c.num_attention_heads * hd;
  const int64_t row = c.kv_cache_row();
  return attention_shape(n_q, n_kv, c.num_attention_heads, c.num_key_value_heads, hd, hd,
                         c.softmax_scale(), {q_dim, hd, row, hd, row, hd, q_dim, hd});
}

}  // namespace

void mha_forward(const ModelConfig& c, const AttentionWeights& w, const float* x, float* out,
                 const AttentionContext& ctx, AttentionActs& a) {
  const int64_t T = ctx.n_tokens, N = ctx.n_seqs * T, H = c.hidden_size, hd = c.head_dim;
  const int64_t n_heads = c.num_attention_heads, n_kv = c.num_key_value_heads;
  const int64_t q_dim = n_heads * hd, kv_dim = n_kv * hd, row = c.kv_cache_row();
  a.q.resize(N * q_dim);
  cpu::linear(a.q.data(), x, w.q_proj, N, H, q_dim);
  add_bias(a.q.data(), w.q_bias, N, q_dim);
  std::vector<float> k(N * kv_dim), v(N * kv_dim);  // (N, kv heads, hd)
  cpu::linear(k.data(), x, w.k_proj, N, H, kv_dim);
  add_bias(k.data(), w.k_bias, N, kv_dim);
  cpu::linear(v.data(), x, w.v_proj, N, H, kv_dim);
  add_bias(v.data(), w.v_bias, N, kv_dim);
  const std::vector<AttentionSegment> segments = attention_segments(ctx);
  int64_t first = 0;  // the segment's first row
  for (const AttentionSegment& seg : segments) {
    cpu::rope_forward(a.q.data() + first * q_dim, seg.n_tokens, n_heads, q_dim, hd, hd, seg.cos,
                      seg.sin, false);
    cpu::rope_forward(k.data() + first * kv_dim, seg.n_tokens, n_kv, kv_dim, hd, hd, seg.cos,
                      seg.sin, false);
    first += seg.n_tokens;
  }
  a.rows.resize(N * row);  // (N, [k | v])
  for (int64_t t = 0; t < N; t++) {
    std::copy(k.data() + t * kv_dim, k.data() + (t + 1) * kv_dim, a.rows.data() + t * row);
    std::copy(v.data() + t * kv_dim, v.data() + (t + 1) * kv_dim, a.rows.data() + t * row + kv_dim);
  }
  a.heads.resize(N * q_dim);  // (N, heads, hd)
  first = 0;
  for (const AttentionSegment& seg : segments) {
    const int64_t T_seg = seg.n_tokens;
    const float* seq_rows = a.rows.data() + first * row;
    int64_t n_keys = T_seg;
    if (seg.cache != nullptr) {
      std::copy(seq_rows, seq_rows + T_seg * row, seg.cache + seg.n_past * row);
      seq_rows = seg.cache;
      n_keys = seg.n_past + T_seg;
    }
    cpu::attention_forward(a.heads.data() + first * q_dim, a.q.data() + first * q_dim, seq_rows,
                           seq_rows + kv_dim, mha_shape(c, T_seg, n_keys));
    first += T_seg;
  }
  cpu::linear(out, a.heads.data(), w.o_proj, N, q_dim, H);
  add_bias(out, w.o_bias, N, H);
}

void mha_backward(const ModelConfig& c, const AttentionWeights& w, AttentionWeights& g,
                  const float* x, const float* dout, float* dx, const AttentionContext& ctx,
                  const AttentionActs& a) {
  const int64_t T = ctx.n_tokens, N = ctx.n_seqs * T, H = c.hidden_size, hd = c.head_dim;
  const int64_t n_heads = c.num_attention_heads, n_kv = c.num_key_value_heads;
  const int64_t q_dim = n_heads * hd, kv_dim = n_kv * hd, row = c.kv_cache_row();
  std::vector<float> dheads(N * q_dim, 0.0f);
  cpu::linear_backward(dheads.data(), g.o_proj.data, dout, a.heads.data(), w.o_proj.data, N, q_dim,
                       H);
  bias_backward(g.o_bias, dout, N, H);
  std::vector<float> dq(N * q_dim, 0.0f), drows(N * row, 0.0f);
  for (int64_t b = 0; b < ctx.n_seqs; b++) {
    const float* rows = a.rows.data() + b * T * row;
    float* seq_drows = drows.data() + b * T * row;
    cpu::attention_backward(dq.data() + b * T * q_dim, seq_drows, seq_drows + kv_dim,
                            dheads.data() + b * T * q_dim, a.q.data() + b * T * q_dim, rows,
                            rows + kv_dim, a.heads.data() + b * T * q_dim, mha_shape(c, T, T));
  }
  std::vector<float> dk(N * kv_dim), dv(N * kv_dim);
  for (int64_t t = 0; t < N; t++) {
    std::copy(drows.data() + t * row, drows.data() + t * row + kv_dim, dk.data() + t * kv_dim);
    std::copy(drows.data() + t * row + kv_dim, drows.data() + (t + 1) * row,
              dv.data() + t * kv_dim);
  }
  for (int64_t b = 0; b < ctx.n_seqs; b++) {
    cpu::rope_backward(dq.data() + b * T * q_dim, T, n_heads, q_dim, hd, hd, ctx.cos, ctx.sin,
                       false);
    cpu::rope_backward(dk.data() + b * T * kv_dim, T, n_kv, kv_dim, hd, hd, ctx.cos, ctx.sin,
                       false);
  }
  bias_backward(g.q_bias, dq.data(), N, q_dim);
  bias_backward(g.k_bias, dk.data(), N, kv_dim);
  bias_backward(g.v_bias, dv.data(), N, kv_dim);
  cpu::linear_backward(dx, g.q_proj.data, dq.data(), x, w.q_proj.data, N, H, q_dim);
  cpu::linear_backward(dx, g.k_proj.data, dk.data(), x, w.k_proj.data, N, H, kv_dim);
  cpu::linear_backward(dx, g.v_proj.data, dv.data(), x, w.v_proj.data, N, H, kv_dim);
}

}  // namespace dsmoe
