// mla.cpp: Multi-head Latent Attention (DeepSeek-V2 sec. 2.1), forward (naive and absorbed) and
// backward (naive, no cache).
#include <algorithm>
#include <vector>

#include "kernels/cpu/ops.h"
#include "kernels/cpu/quant_ops.h"
#include "model/attention_impl.h"
#include "util/profile.h"

namespace dsmoe {
namespace {

// The two products of x that open the layer: a.q (q_lora_rank 0) or a.q_latent, and a.rows_raw
// (kv_a_proj_with_mqa). With quantized weights (inference) as one group, so that a decoded token
// rounds x once and wakes the threads once for both; the same bits as two products.
void mla_input_products(const ModelConfig& c, const AttentionWeights& w, const float* x, int64_t N,
                        AttentionActs& a) {
  const int64_t H = c.hidden_size, n_heads = c.num_attention_heads, qk = c.qk_head_dim();
  const bool low_rank_q = c.q_lora_rank != 0;
  const Tensor& q_weight = low_rank_q ? w.q_a_proj : w.q_proj;
  const int64_t q_width = low_rank_q ? c.q_lora_rank : n_heads * qk;
  std::vector<float>& q_out = low_rank_q ? a.q_latent : a.q;
  q_out.resize(N * q_width);
  a.q.resize(N * n_heads * qk);
  a.rows_raw.resize(N * c.kv_cache_row());
  if (q_weight.quant != nullptr && w.kv_a_proj_with_mqa.quant != nullptr) {
    const cpu::QuantJob jobs[2] = {{q_out.data(), x, q_weight.quant.get(), N},
                                   {a.rows_raw.data(), x, w.kv_a_proj_with_mqa.quant.get(), N}};
    cpu::quant_linear_forward_group(jobs, 2);
    return;
  }
  cpu::linear(q_out.data(), x, q_weight, N, H, q_width);
  cpu::linear(a.rows_raw.data(), x, w.kv_a_proj_with_mqa, N, H, c.kv_cache_row());
}

// q [N, heads, qk] from mla_input_products, with RoPE on the rope part of each head.
void mla_queries(const ModelConfig& c, const AttentionWeights& w, const AttentionContext& ctx,
                 const std::vector<AttentionSegment>& segments, AttentionActs& a) {
  const int64_t N = ctx.n_seqs * ctx.n_tokens;
  const int64_t n_heads = c.num_attention_heads, qk = c.qk_head_dim();
  if (c.q_lora_rank != 0) {
    a.q_latent_normed.resize(N * c.q_lora_rank);
    cpu::rmsnorm_forward(a.q_latent_normed.data(), a.q_latent.data(), w.q_a_layernorm.data, N,
                         c.q_lora_rank, c.rms_norm_eps);
    cpu::linear(a.q.data(), a.q_latent_normed.data(), w.q_b_proj, N, c.q_lora_rank, n_heads * qk);
  }
  int64_t first = 0;  // the segment's first row
  for (const AttentionSegment& seg : segments) {
    cpu::rope_forward(a.q.data() + first * n_heads * qk + c.qk_nope_head_dim, seg.n_tokens, n_heads,
                      n_heads * qk, qk, c.qk_rope_head_dim, seg.cos, seg.sin, true);
    first += seg.n_tokens;
  }
}

// rows [N, kv_lora_rank + rope] = [kv_a_layernorm(c_kv) | RoPE(k_rope)] from rows_raw.
void mla_latents(const ModelConfig& c, const AttentionWeights& w, const AttentionContext& ctx,
                 const std::vector<AttentionSegment>& segments, AttentionActs& a) {
  const int64_t N = ctx.n_seqs * ctx.n_tokens, row = c.kv_cache_row();
  a.rows.resize(N * row);
  for (int64_t t = 0; t < N; t++) {
    cpu::rmsnorm_forward(a.rows.data() + t * row, a.rows_raw.data() + t * row,
                         w.kv_a_layernorm.data, 1, c.kv_lora_rank, c.rms_norm_eps);
    std::copy(a.rows_raw.data() + t * row + c.kv_lora_rank, a.rows_raw.data() + (t + 1) * row,
              a.rows.data() + t * row + c.kv_lora_rank);
  }
  int64_t first = 0;
  for (const AttentionSegment& seg : segments) {
    cpu::rope_forward(a.rows.data() + first * row + c.kv_lora_rank, seg.n_tokens, 1, row, 0,
                      c.qk_rope_head_dim, seg.cos, seg.sin, true);
    first += seg.n_tokens;
  }
}

AttentionShape naive_shape(const ModelConfig& c, int64_t n_q, int64_t n_kv) {
  const int64_t n_heads = c.num_attention_heads, qk = c.qk_head_dim(), dv = c.v_head_dim;
  const int64_t kv_width = n_heads * (c.qk_nope_head_dim + dv);
  return attention_shape(
      n_q, n_kv, n_heads, n_heads, qk, dv, c.softmax_scale(),
      {n_heads * qk, qk, n_heads * qk, qk, kv_width, c.qk_nope_head_dim + dv, n_heads * dv, dv});
}

// Naive MLA for one sequence: expand the S latent rows into keys [S, heads, qk] and values.
void attend_naive(const ModelConfig& c, const AttentionWeights& w, const float* q,
                  const float* rows, int64_t n_q, int64_t n_kv, float* kv, float* keys,
                  float* heads) {
  const int64_t n_heads = c.num_attention_heads, nope = c.qk_nope_head_dim;
  const int64_t qk = c.qk_head_dim(), dv = c.v_head_dim, row = c.kv_cache_row();
  const int64_t kv_width = n_heads * (nope + dv);
  // The cached latents as one product, as a forward of this sequence alone expands them (also
  // inside a batched decode: see cpu::set_row_kernels).
  const cpu::RowKernelsScope whole_product(false);
  if (w.kv_b_compact != nullptr) {  // compact weights: the format's GEMM on the latents
    std::vector<float> latents(n_kv * c.kv_lora_rank);
    for (int64_t s = 0; s < n_kv; s++)
      std::copy(rows + s * row, rows + s * row + c.kv_lora_rank,
                latents.data() + s * c.kv_lora_rank);
    cpu::quant_linear_forward(kv, latents.data(), *w.kv_b_compact, n_kv);
  } else {
    cpu::gemm(false, true, n_kv, kv_width, c.kv_lora_rank, 1.0f, rows, row, w.kv_b_proj.data,
              c.kv_lora_rank, 0.0f, kv, kv_width);
  }
  for (int64_t s = 0; s < n_kv; s++)
    for (int64_t h = 0; h < n_heads; h++) {
      float* key = keys + (s * n_heads + h) * qk;
      const float* k_nope = kv + s * kv_width + h * (nope + dv);
      std::copy(k_nope, k_nope + nope, key);
      std::copy(rows + s * row + c.kv_lora_rank, rows + (s + 1) * row, key + nope);
    }
  cpu::attention_forward(heads, q, keys, kv + nope, naive_shape(c, n_q, n_kv));
}

// o_latent[t, h] = attention of q_latent[t, h] over the latent rows, which are keys (kv_lora_rank
// + rope) and values (their first kv_lora_rank columns) of every head: one shared KV head.
void attend_latent(const ModelConfig& c, const float* q_latent, const float* rows, int64_t n_q,
                   int64_t n_kv, float* o_latent) {
  const int64_t n_heads = c.num_attention_heads, rank = c.kv_lora_rank, row = c.kv_cache_row();
  const AttentionShape shape =
      attention_shape(n_q, n_kv, n_heads, 1, row, rank, c.softmax_scale(),
                      {n_heads * row, row, row, 0, row, 0, n_heads * rank, rank});
  cpu::attention_forward(o_latent, q_latent, rows, rows, shape);
}

// Decoded tokens (one row each, of its own sequence: q [heads, qk], its cache rows and key count,
// heads [heads, dv]) with the per-head halves of kv_b_proj in the weight format
// (AttentionWeights::absorbed_uk_t / absorbed_uv): the per-head products of all rows as one
// grouped product each (the threads wake twice per layer, not per row); each row's bits are those
// it gets alone.
struct AbsorbedRow {
  const float* q;
  const float* rows;
  int64_t n_kv;
  float* heads;
};
void attend_absorbed_rows(const ModelConfig& c, const AttentionWeights& w,
                          const std::vector<AbsorbedRow>& items) {
  const int64_t n_heads = c.num_attention_heads, nope = c.qk_nope_head_dim, dv = c.v_head_dim;
  const int64_t qk = c.qk_head_dim(), rank = c.kv_lora_rank, row = c.kv_cache_row();
  const auto R = static_cast<int64_t>(items.size());
  std::vector<float> q_latent(R * n_heads * row), o_latent(R * n_heads * rank);
  std::vector<cpu::QuantJob> jobs;
  for (int64_t r = 0; r < R; r++)
    for (int64_t h = 0; h < n_heads; h++) {
      float* dst = q_latent.data() + (r * n_heads + h) * row;
      const float* q = items[r].q + h * qk;
      jobs.push_back({dst, q, w.absorbed_uk_t[h].get(), 1});
      std::copy(q + nope, q + qk, dst + rank);
    }
  {
    ProfileScope timer(ProfileOp::kAbsorbedProducts);
    cpu::quant_linear_forward_group(jobs.data(), static_cast<int64_t>(jobs.size()));
  }
  {
    ProfileScope timer(ProfileOp::kLatentAttention);
    for (int64_t r = 0; r < R; r++)
      attend_latent(c, q_latent.data() + r * n_heads * row, items[r].rows, 1, items[r].n_kv,
                    o_latent.data() + r * n_heads * rank);
  }
  jobs.clear();
  for (int64_t r = 0; r < R; r++)
    for (int64_t h = 0; h < n_heads; h++)
      jobs.push_back({items[r].heads + h * dv, o_latent.data() + (r * n_heads + h) * rank,
                      w.absorbed_uv[h].get(), 1});
  ProfileScope timer(ProfileOp::kAbsorbedProducts);
  cpu::quant_linear_forward_group(jobs.data(), static_cast<int64_t>(jobs.size()));
}

// Absorbed MLA for one sequence: attention over the latent rows themselves (one shared "kv
// head" of width kv_lora_rank + rope, values = the latent), with q_nope . W_UK as the query.
void attend_absorbed(const ModelConfig& c, const AttentionWeights& w, const float* q,
                     const float* rows, int64_t n_q, int64_t n_kv, float* heads) {
  const int64_t n_heads = c.num_attention_heads, nope = c.qk_nope_head_dim, dv = c.v_head_dim;
  const int64_t qk = c.qk_head_dim(), rank = c.kv_lora_rank, row = c.kv_cache_row();
  const int64_t n_items = n_q * n_heads;  // (token, head) pairs, token-major
  const float* kv_b = w.kv_b_proj.data;   // [heads, nope + dv, rank]
  const bool parallel = n_items * nope * rank >= (int64_t{1} << 16);
  // q_latent[t, h] = [W_UK[h]^T q_nope[t, h] | q_rope[t, h]]; one parallel loop for all heads
  // (a threaded product per head would wake the threads 2 * heads times per decoded token);
  // BLAS called inside it runs on the calling thread.
  std::vector<float> q_latent(n_items * row);  // (T, heads, rank + rope)
#pragma omp parallel for schedule(static) if (parallel)
  for (int64_t item = 0; item < n_items; item++) {
    const int64_t h = item % n_heads;
    const float* q_item = q + item * qk;                // q is (T, heads, qk)
    const float* w_uk = kv_b + h * (nope + dv) * rank;  // [nope, rank]
    float* dst = q_latent.data() + item * row;
    cpu::gemm(false, false, 1, rank, nope, 1.0f, q_item, nope, w_uk, rank, 0.0f, dst, rank);
    std::copy(q_item + nope, q_item + qk, dst + rank);
  }
  std::vector<float> o_latent(n_items * rank);  // (T, heads, rank)
  attend_latent(c, q_latent.data(), rows, n_q, n_kv, o_latent.data());
  // heads[t, h] = W_UV[h] o_latent[t, h]
#pragma omp parallel for schedule(static) if (parallel)
  for (int64_t item = 0; item < n_items; item++) {
    const int64_t h = item % n_heads;
    const float* w_uv = kv_b + (h * (nope + dv) + nope) * rank;  // [dv, rank]
    cpu::gemm(false, true, 1, dv, rank, 1.0f, o_latent.data() + item * rank, rank, w_uv, rank, 0.0f,
              heads + item * dv, dv);
  }
}

}  // namespace

void mla_forward(const ModelConfig& c, const AttentionWeights& w, const float* x, float* out,
                 const AttentionContext& ctx, AttentionActs& a) {
  const int64_t N = ctx.n_seqs * ctx.n_tokens, n_heads = c.num_attention_heads;
  const int64_t qk = c.qk_head_dim(), row = c.kv_cache_row(), dv = c.v_head_dim;
  const int64_t kv_width = n_heads * (c.qk_nope_head_dim + dv);
  const std::vector<AttentionSegment> segments = attention_segments(ctx);
  mla_input_products(c, w, x, N, a);
  mla_queries(c, w, ctx, segments, a);
  mla_latents(c, w, ctx, segments, a);
  auto absorbed = [&](const AttentionSegment& seg) {
    return ctx.mla_mode == MlaMode::kAbsorbed ||
           (ctx.mla_mode == MlaMode::kAuto && seg.cache != nullptr && seg.n_past > 0);
  };
  auto keys_of = [](const AttentionSegment& seg) {  // tokens attended to
    return seg.cache != nullptr ? seg.n_past + seg.n_tokens : seg.n_tokens;
  };
  // Naive segments keep their expanded keys and values one after the other (for backward).
  int64_t naive_keys = 0;
  for (const AttentionSegment& seg : segments)
    if (!absorbed(seg)) naive_keys += keys_of(seg);
  a.kv.resize(naive_keys * kv_width);
  a.keys.resize(naive_keys * n_heads * qk);
  a.heads.resize(N * n_heads * dv);
  // Every segment's rows into its cache first: a segment reads only its own positions and
  // those before (an all-logits step's later rows are not read by its earlier ones).
  int64_t first = 0;  // the segment's first row
  for (const AttentionSegment& seg : segments) {
    if (seg.cache != nullptr)
      std::copy(a.rows.data() + first * row, a.rows.data() + (first + seg.n_tokens) * row,
                seg.cache + seg.n_past * row);
    first += seg.n_tokens;
  }
  std::vector<AbsorbedRow> decoded;  // one-token segments with the compact absorbed weights
  first = 0;
  int64_t first_key = 0;  // the segment's first naive key
  for (const AttentionSegment& seg : segments) {
    const int64_t T = seg.n_tokens, n_kv = keys_of(seg);
    const float* seq_rows = seg.cache != nullptr ? seg.cache : a.rows.data() + first * row;
    const float* seq_q = a.q.data() + first * n_heads * qk;
    float* seq_heads = a.heads.data() + first * n_heads * dv;
    if (absorbed(seg) && T == 1 && !w.absorbed_uk_t.empty()) {
      decoded.push_back({seq_q, seq_rows, n_kv, seq_heads});
    } else if (absorbed(seg)) {
      attend_absorbed(c, w, seq_q, seq_rows, T, n_kv, seq_heads);
    } else {
      attend_naive(c, w, seq_q, seq_rows, T, n_kv, a.kv.data() + first_key * kv_width,
                   a.keys.data() + first_key * n_heads * qk, seq_heads);
      first_key += n_kv;
    }
    first += T;
  }
  if (!decoded.empty()) attend_absorbed_rows(c, w, decoded);
  cpu::linear(out, a.heads.data(), w.o_proj, N, n_heads * dv, c.hidden_size);
}

void mla_backward(const ModelConfig& c, const AttentionWeights& w, AttentionWeights& g,
                  const float* x, const float* dout, float* dx, const AttentionContext& ctx,
                  const AttentionActs& a) {
  const int64_t T = ctx.n_tokens, N = ctx.n_seqs * T, H = c.hidden_size;
  const int64_t n_heads = c.num_attention_heads, nope = c.qk_nope_head_dim;
  const int64_t rope = c.qk_rope_head_dim, qk = c.qk_head_dim(), dv = c.v_head_dim;
  const int64_t rank = c.kv_lora_rank, row = c.kv_cache_row(), kv_width = n_heads * (nope + dv);
  // o_proj
  std::vector<float> dheads(N * n_heads * dv, 0.0f);  // (N, heads, dv)
  cpu::linear_backward(dheads.data(), g.o_proj.data, dout, a.heads.data(), w.o_proj.data, N,
                       n_heads * dv, H);
  // attention, per sequence
  std::vector<float> dq(N * n_heads * qk, 0.0f), dkeys(N * n_heads * qk, 0.0f);
  std::vector<float> dkv(N * kv_width, 0.0f);  // (N, heads, nope + dv); the v part from attention
  for (int64_t b = 0; b < ctx.n_seqs; b++) {
    const int64_t qo = b * T * n_heads * qk, ko = b * T * kv_width;
    cpu::attention_backward(dq.data() + qo, dkeys.data() + qo, dkv.data() + ko + nope,
                            dheads.data() + b * T * n_heads * dv, a.q.data() + qo,
                            a.keys.data() + qo, a.kv.data() + ko + nope,
                            a.heads.data() + b * T * n_heads * dv, naive_shape(c, T, T));
  }
  // keys = [k_nope (from kv) | k_rope (shared by the heads)]
  std::vector<float> drows(N * row, 0.0f);  // (N, rank + rope): d of the rows
  for (int64_t t = 0; t < N; t++)
    for (int64_t h = 0; h < n_heads; h++) {
      const float* dkey = dkeys.data() + (t * n_heads + h) * qk;
      float* dk_nope = dkv.data() + t * kv_width + h * (nope + dv);
      for (int64_t d = 0; d < nope; d++) dk_nope[d] += dkey[d];
      for (int64_t d = 0; d < rope; d++) drows[t * row + rank + d] += dkey[nope + d];
    }
  // kv = rows[:, :rank] . kv_b^T
  cpu::gemm(true, false, kv_width, rank, N, 1.0f, dkv.data(), kv_width, a.rows.data(), row, 1.0f,
            g.kv_b_proj.data, rank);
  cpu::gemm(false, false, N, rank, kv_width, 1.0f, dkv.data(), kv_width, w.kv_b_proj.data, rank,
            1.0f, drows.data(), row);
  // rows = [rmsnorm(raw latent) | rope(raw k_rope)]
  std::vector<float> drows_raw(N * row, 0.0f);
  for (int64_t t = 0; t < N; t++) {
    cpu::rmsnorm_backward(drows_raw.data() + t * row, g.kv_a_layernorm.data, drows.data() + t * row,
                          a.rows_raw.data() + t * row, w.kv_a_layernorm.data, 1, rank,
                          c.rms_norm_eps);
    std::copy(drows.data() + t * row + rank, drows.data() + (t + 1) * row,
              drows_raw.data() + t * row + rank);
  }
  for (int64_t b = 0; b < ctx.n_seqs; b++)
    cpu::rope_backward(drows_raw.data() + b * T * row + rank, T, 1, row, 0, rope, ctx.cos, ctx.sin,
                       true);
  cpu::linear_backward(dx, g.kv_a_proj_with_mqa.data, drows_raw.data(), x,
                       w.kv_a_proj_with_mqa.data, N, H, row);
  // queries
  for (int64_t b = 0; b < ctx.n_seqs; b++)
    cpu::rope_backward(dq.data() + b * T * n_heads * qk + nope, T, n_heads, n_heads * qk, qk, rope,
                       ctx.cos, ctx.sin, true);
  if (c.q_lora_rank == 0) {
    cpu::linear_backward(dx, g.q_proj.data, dq.data(), x, w.q_proj.data, N, H, n_heads * qk);
    return;
  }
  const int64_t q_rank = c.q_lora_rank;
  std::vector<float> dq_normed(N * q_rank, 0.0f), dq_latent(N * q_rank, 0.0f);
  cpu::linear_backward(dq_normed.data(), g.q_b_proj.data, dq.data(), a.q_latent_normed.data(),
                       w.q_b_proj.data, N, q_rank, n_heads * qk);
  cpu::rmsnorm_backward(dq_latent.data(), g.q_a_layernorm.data, dq_normed.data(), a.q_latent.data(),
                        w.q_a_layernorm.data, N, q_rank, c.rms_norm_eps);
  cpu::linear_backward(dx, g.q_a_proj.data, dq_latent.data(), x, w.q_a_proj.data, N, H, q_rank);
}

}  // namespace dsmoe
