#include "model/attention.h"

#include <algorithm>
#include <vector>

#include "kernels/cpu/ops.h"

namespace dsmoe {
namespace {

void add_bias(float* x, const Tensor& bias, int64_t n_rows, int64_t n_cols) {
  if (bias.empty()) return;
  for (int64_t r = 0; r < n_rows; r++)
    for (int64_t c = 0; c < n_cols; c++) x[r * n_cols + c] += bias.data[c];
}

// q [N, n_heads, qk_head_dim] from x, with RoPE on the rope part of each head.
void mla_queries(const ModelConfig& c, const AttentionWeights& w, const float* x, float* q,
                 const AttentionContext& ctx) {
  const int64_t N = ctx.n_seqs * ctx.n_tokens, H = c.hidden_size;
  const int64_t n_heads = c.num_attention_heads, qk = c.qk_head_dim();
  if (c.q_lora_rank == 0) {
    cpu::linear_forward(q, x, w.q_proj.data, N, H, n_heads * qk);
  } else {
    std::vector<float> q_latent(N * c.q_lora_rank);  // (N, q_lora_rank)
    cpu::linear_forward(q_latent.data(), x, w.q_a_proj.data, N, H, c.q_lora_rank);
    cpu::rmsnorm_forward(q_latent.data(), q_latent.data(), w.q_a_layernorm.data, N, c.q_lora_rank,
                         c.rms_norm_eps);
    cpu::linear_forward(q, q_latent.data(), w.q_b_proj.data, N, c.q_lora_rank, n_heads * qk);
  }
  for (int64_t b = 0; b < ctx.n_seqs; b++)
    cpu::rope_forward(q + b * ctx.n_tokens * n_heads * qk + c.qk_nope_head_dim, ctx.n_tokens,
                      n_heads, n_heads * qk, qk, c.qk_rope_head_dim, ctx.cos, ctx.sin, true);
}

// kv rows [N, kv_lora_rank + qk_rope_head_dim] = [kv_a_layernorm(c_kv) | RoPE(k_rope)].
void mla_latents(const ModelConfig& c, const AttentionWeights& w, const float* x, float* rows,
                 const AttentionContext& ctx) {
  const int64_t N = ctx.n_seqs * ctx.n_tokens, row = c.kv_cache_row();
  cpu::linear_forward(rows, x, w.kv_a_proj_with_mqa.data, N, c.hidden_size, row);
  for (int64_t t = 0; t < N; t++)
    cpu::rmsnorm_forward(rows + t * row, rows + t * row, w.kv_a_layernorm.data, 1, c.kv_lora_rank,
                         c.rms_norm_eps);
  for (int64_t b = 0; b < ctx.n_seqs; b++)
    cpu::rope_forward(rows + b * ctx.n_tokens * row + c.kv_lora_rank, ctx.n_tokens, 1, row, 0,
                      c.qk_rope_head_dim, ctx.cos, ctx.sin, true);
}

// Naive MLA for one sequence: expand the S latents into keys [S, heads, qk] and values.
void mla_attend_naive(const ModelConfig& c, const AttentionWeights& w, const float* q,
                      const float* rows, int64_t n_q, int64_t n_kv, int64_t q_pos0, float* heads) {
  const int64_t n_heads = c.num_attention_heads, nope = c.qk_nope_head_dim;
  const int64_t rope = c.qk_rope_head_dim, qk = c.qk_head_dim(), dv = c.v_head_dim;
  const int64_t row = c.kv_cache_row(), kv_width = n_heads * (nope + dv);
  std::vector<float> kv(n_kv * kv_width);  // (S, heads, nope + dv)
  cpu::gemm(false, true, n_kv, kv_width, c.kv_lora_rank, 1.0f, rows, row, w.kv_b_proj.data,
            c.kv_lora_rank, 0.0f, kv.data(), kv_width);
  std::vector<float> keys(n_kv * n_heads * qk);  // (S, heads, qk)
  for (int64_t s = 0; s < n_kv; s++)
    for (int64_t h = 0; h < n_heads; h++) {
      float* key = keys.data() + (s * n_heads + h) * qk;
      const float* k_nope = kv.data() + s * kv_width + h * (nope + dv);
      std::copy(k_nope, k_nope + nope, key);
      std::copy(rows + s * row + c.kv_lora_rank, rows + s * row + row, key + nope);
    }
  AttentionShape shape;
  shape.n_q_tokens = n_q, shape.n_kv_tokens = n_kv, shape.q_pos0 = q_pos0;
  shape.n_heads = n_heads, shape.n_kv_heads = n_heads, shape.qk_dim = qk, shape.v_dim = dv;
  shape.scale = c.softmax_scale();
  shape.q_token_stride = n_heads * qk, shape.q_head_stride = qk;
  shape.k_token_stride = n_heads * qk, shape.k_head_stride = qk;
  shape.v_token_stride = kv_width, shape.v_head_stride = nope + dv;
  shape.out_token_stride = n_heads * dv, shape.out_head_stride = dv;
  (void)rope;
  cpu::attention_forward(heads, q, keys.data(), kv.data() + nope, shape);
}

// Absorbed MLA for one sequence: attention over the latent rows themselves (one shared "kv
// head" of width kv_lora_rank + rope), with q_nope . W_UK as the latent query.
void mla_attend_absorbed(const ModelConfig& c, const AttentionWeights& w, const float* q,
                         const float* rows, int64_t n_q, int64_t n_kv, int64_t q_pos0,
                         float* heads) {
  const int64_t n_heads = c.num_attention_heads, nope = c.qk_nope_head_dim, dv = c.v_head_dim;
  const int64_t qk = c.qk_head_dim(), rank = c.kv_lora_rank, row = c.kv_cache_row();
  const float* kv_b = w.kv_b_proj.data;  // [heads, nope + dv, rank]
  std::vector<float> q_latent(n_q * n_heads * row);  // (T, heads, rank + rope)
  for (int64_t h = 0; h < n_heads; h++) {
    const float* w_uk = kv_b + h * (nope + dv) * rank;  // [nope, rank]
    cpu::gemm(false, false, n_q, rank, nope, 1.0f, q + h * qk, n_heads * qk, w_uk, rank, 0.0f,
              q_latent.data() + h * row, n_heads * row);
    for (int64_t t = 0; t < n_q; t++)
      std::copy(q + t * n_heads * qk + h * qk + nope, q + t * n_heads * qk + (h + 1) * qk,
                q_latent.data() + (t * n_heads + h) * row + rank);
  }
  AttentionShape shape;
  shape.n_q_tokens = n_q, shape.n_kv_tokens = n_kv, shape.q_pos0 = q_pos0;
  shape.n_heads = n_heads, shape.n_kv_heads = 1, shape.qk_dim = row, shape.v_dim = rank;
  shape.scale = c.softmax_scale();
  shape.q_token_stride = n_heads * row, shape.q_head_stride = row;
  shape.k_token_stride = row, shape.k_head_stride = 0;
  shape.v_token_stride = row, shape.v_head_stride = 0;
  shape.out_token_stride = n_heads * rank, shape.out_head_stride = rank;
  std::vector<float> o_latent(n_q * n_heads * rank);  // (T, heads, rank)
  cpu::attention_forward(o_latent.data(), q_latent.data(), rows, rows, shape);
  for (int64_t h = 0; h < n_heads; h++) {
    const float* w_uv = kv_b + (h * (nope + dv) + nope) * rank;  // [dv, rank]
    cpu::gemm(false, true, n_q, dv, rank, 1.0f, o_latent.data() + h * rank, n_heads * rank, w_uv,
              rank, 0.0f, heads + h * dv, n_heads * dv);
  }
}

void mla_forward(const ModelConfig& c, const AttentionWeights& w, const float* x, float* out,
                 const AttentionContext& ctx) {
  const int64_t T = ctx.n_tokens, N = ctx.n_seqs * T, n_heads = c.num_attention_heads;
  const int64_t qk = c.qk_head_dim(), row = c.kv_cache_row(), dv = c.v_head_dim;
  std::vector<float> q(N * n_heads * qk);  // (N, heads, qk)
  mla_queries(c, w, x, q.data(), ctx);
  std::vector<float> rows(N * row);  // (N, rank + rope)
  mla_latents(c, w, x, rows.data(), ctx);
  bool absorbed = ctx.mla_mode == MlaMode::kAbsorbed ||
                  (ctx.mla_mode == MlaMode::kAuto && ctx.cache != nullptr && ctx.n_past > 0);
  std::vector<float> heads(N * n_heads * dv);  // (N, heads, dv)
  for (int64_t b = 0; b < ctx.n_seqs; b++) {
    const float* seq_rows = rows.data() + b * T * row;
    int64_t n_kv = T;
    if (ctx.cache != nullptr) {
      std::copy(seq_rows, seq_rows + T * row, ctx.cache + ctx.n_past * row);
      seq_rows = ctx.cache;
      n_kv = ctx.n_past + T;
    }
    const float* seq_q = q.data() + b * T * n_heads * qk;
    float* seq_heads = heads.data() + b * T * n_heads * dv;
    if (absorbed)
      mla_attend_absorbed(c, w, seq_q, seq_rows, T, n_kv, n_kv - T, seq_heads);
    else
      mla_attend_naive(c, w, seq_q, seq_rows, T, n_kv, n_kv - T, seq_heads);
  }
  cpu::linear_forward(out, heads.data(), w.o_proj.data, N, n_heads * dv, c.hidden_size);
}

// DeepSeekMoE V1: Llama-style multi-head attention, rotate-half RoPE over the whole head.
void mha_forward(const ModelConfig& c, const AttentionWeights& w, const float* x, float* out,
                 const AttentionContext& ctx) {
  const int64_t T = ctx.n_tokens, N = ctx.n_seqs * T, H = c.hidden_size, hd = c.head_dim;
  const int64_t n_heads = c.num_attention_heads, n_kv = c.num_key_value_heads;
  const int64_t q_dim = n_heads * hd, kv_dim = n_kv * hd, row = 2 * kv_dim;
  std::vector<float> q(N * q_dim), kv(N * row);  // (N, heads, hd), (N, [k | v])
  cpu::linear_forward(q.data(), x, w.q_proj.data, N, H, q_dim);
  add_bias(q.data(), w.q_bias, N, q_dim);
  std::vector<float> k(N * kv_dim), v(N * kv_dim);
  cpu::linear_forward(k.data(), x, w.k_proj.data, N, H, kv_dim);
  add_bias(k.data(), w.k_bias, N, kv_dim);
  cpu::linear_forward(v.data(), x, w.v_proj.data, N, H, kv_dim);
  add_bias(v.data(), w.v_bias, N, kv_dim);
  for (int64_t b = 0; b < ctx.n_seqs; b++) {
    cpu::rope_forward(q.data() + b * T * q_dim, T, n_heads, q_dim, hd, hd, ctx.cos, ctx.sin,
                      false);
    cpu::rope_forward(k.data() + b * T * kv_dim, T, n_kv, kv_dim, hd, hd, ctx.cos, ctx.sin, false);
  }
  for (int64_t t = 0; t < N; t++) {
    std::copy(k.data() + t * kv_dim, k.data() + (t + 1) * kv_dim, kv.data() + t * row);
    std::copy(v.data() + t * kv_dim, v.data() + (t + 1) * kv_dim, kv.data() + t * row + kv_dim);
  }
  std::vector<float> heads(N * q_dim);  // (N, heads, hd)
  for (int64_t b = 0; b < ctx.n_seqs; b++) {
    const float* seq_rows = kv.data() + b * T * row;
    int64_t n_keys = T;
    if (ctx.cache != nullptr) {
      std::copy(seq_rows, seq_rows + T * row, ctx.cache + ctx.n_past * row);
      seq_rows = ctx.cache;
      n_keys = ctx.n_past + T;
    }
    AttentionShape shape;
    shape.n_q_tokens = T, shape.n_kv_tokens = n_keys, shape.q_pos0 = n_keys - T;
    shape.n_heads = n_heads, shape.n_kv_heads = n_kv, shape.qk_dim = hd, shape.v_dim = hd;
    shape.scale = c.softmax_scale();
    shape.q_token_stride = q_dim, shape.q_head_stride = hd;
    shape.k_token_stride = row, shape.k_head_stride = hd;
    shape.v_token_stride = row, shape.v_head_stride = hd;
    shape.out_token_stride = q_dim, shape.out_head_stride = hd;
    cpu::attention_forward(heads.data() + b * T * q_dim, q.data() + b * T * q_dim, seq_rows,
                           seq_rows + kv_dim, shape);
  }
  cpu::linear_forward(out, heads.data(), w.o_proj.data, N, q_dim, H);
  add_bias(out, w.o_bias, N, H);
}

}  // namespace

void attention_forward(const ModelConfig& config, const AttentionWeights& weights, const float* x,
                       float* out, const AttentionContext& context) {
  if (config.use_mla())
    mla_forward(config, weights, x, out, context);
  else
    mha_forward(config, weights, x, out, context);
}

}  // namespace dsmoe
