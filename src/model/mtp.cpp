// mtp.cpp: DeepSeek-V3 multi-token prediction modules, forward and backward side by side (the
// backward is the forward's list of ops reversed, accumulating into the gradients).
#include "model/mtp.h"

#include <algorithm>

#include "kernels/cpu/ops.h"
#include "model/rope.h"
#include "model/transformer.h"
#include "util/check.h"

namespace dsmoe {
namespace {

// Causal attention over the T-k positions of each sequence, RoPE positions 0 .. T-k-1; naive MLA
// (what attention_backward differentiates).
AttentionContext mtp_context(const MtpActs& a, int64_t n_seqs) {
  AttentionContext ctx;
  ctx.n_seqs = n_seqs, ctx.n_tokens = a.n_tokens;
  ctx.cos = a.cos.data(), ctx.sin = a.sin.data();
  ctx.mla_mode = MlaMode::kNaive;
  return ctx;
}

// Module k's block is stored (and routed) as layer num_hidden_layers + k - 1.
bool mtp_is_moe(const ModelConfig& c, int64_t k) {
  return c.is_moe_layer(c.num_hidden_layers + k - 1);
}

}  // namespace

std::vector<double> mtp_forward(const ModelConfig& c, const ModelWeights& w, const int64_t* ids,
                                int64_t n_seqs, int64_t n_tokens, const float* h0,
                                std::vector<MtpActs>& acts, const MoeTraining* moe_training) {
  const int64_t D = static_cast<int64_t>(w.mtp.size()), H = c.hidden_size, V = c.vocab_size;
  const int64_t T = n_tokens, half = c.rope_dim() / 2;
  acts.resize(D);
  std::vector<double> losses(D, 0.0);
  for (int64_t k = 1; k <= D; k++) {
    const MtpWeights& m = w.mtp[k - 1];
    MtpActs& a = acts[k - 1];
    const int64_t Tk = T - k;
    if (Tk < 2) {  // no target k+1 ahead (and no rows for the depths after)
      a = MtpActs{};
      continue;
    }
    const int64_t N = n_seqs * Tk;
    a.n_tokens = Tk;
    // Row (b, i) embeds t_{b, i+k}; its target t_{b, i+k+1} is then the next row's id, so the
    // shifted ids feed next_token_loss unchanged.
    a.ids.resize(N);
    for (int64_t b = 0; b < n_seqs; b++)
      std::copy(ids + b * T + k, ids + b * T + T, a.ids.begin() + b * Tk);
    a.cos.resize(Tk * half);
    a.sin.resize(Tk * half);
    rope_angles(c, 0, Tk, a.cos.data(), a.sin.data());
    a.emb.resize(N * H);
    for (int64_t i = 0; i < N; i++)
      std::copy(w.embed_tokens.data + a.ids[i] * H, w.embed_tokens.data + (a.ids[i] + 1) * H,
                a.emb.begin() + i * H);
    // h^{k-1} has T-k+1 rows per sequence; depth k reads the first T-k of each.
    const float* prev = k == 1 ? h0 : acts[k - 2].h.data();
    a.h_prev.resize(N * H);
    for (int64_t b = 0; b < n_seqs; b++)
      std::copy(prev + b * (Tk + 1) * H, prev + (b * (Tk + 1) + Tk) * H,
                a.h_prev.begin() + b * Tk * H);
    // eq. 21, in the release's order: [enorm(embedding) | hnorm(hidden)] (the paper writes the
    // hidden state first).
    std::vector<float> e_normed(N * H), h_normed(N * H);  // (N_k, H) each
    cpu::rmsnorm_forward(e_normed.data(), a.emb.data(), m.enorm.data, N, H, c.rms_norm_eps);
    cpu::rmsnorm_forward(h_normed.data(), a.h_prev.data(), m.hnorm.data, N, H, c.rms_norm_eps);
    a.cat.resize(N * 2 * H);
    for (int64_t i = 0; i < N; i++) {
      std::copy(e_normed.begin() + i * H, e_normed.begin() + (i + 1) * H,
                a.cat.begin() + i * 2 * H);
      std::copy(h_normed.begin() + i * H, h_normed.begin() + (i + 1) * H,
                a.cat.begin() + i * 2 * H + H);
    }
    a.h.resize(N * H);
    cpu::linear_forward(a.h.data(), a.cat.data(), m.eh_proj.data, N, 2 * H, H);
    // eq. 22: the block turns h'^k into h^k in place.
    layer_forward(c, m.block, mtp_is_moe(c, k), a.h.data(), mtp_context(a, n_seqs), a.block,
                  /*keep=*/true, moe_training);
    // eq. 23-24: the shared output head (its own norm, the main lm_head) and cross-entropy.
    a.normed.resize(N * H);
    a.logits.resize(N * V);
    cpu::rmsnorm_forward(a.normed.data(), a.h.data(), m.shared_head_norm.data, N, H,
                         c.rms_norm_eps);
    cpu::linear_forward(a.logits.data(), a.normed.data(), w.lm_head.data, N, H, V);
    losses[k - 1] = next_token_loss(a.logits.data(), a.ids.data(), n_seqs, Tk, V);
  }
  return losses;
}

void mtp_backward(const ModelConfig& c, const ModelWeights& w, ModelWeights& g, int64_t n_seqs,
                  int64_t n_tokens, float scale, const std::vector<MtpActs>& acts, float* dh0) {
  const int64_t D = static_cast<int64_t>(w.mtp.size()), H = c.hidden_size, V = c.vocab_size;
  DSMOE_ASSERT(static_cast<int64_t>(acts.size()) == D);
  DSMOE_ASSERT(static_cast<int64_t>(g.mtp.size()) == D);  // Model::forward_backward checks it
  std::vector<float> dh;  // (N_k, H) d h^k from depth k+1; empty: none
  for (int64_t k = D; k >= 1; k--) {
    const MtpWeights& m = w.mtp[k - 1];
    MtpWeights& gm = g.mtp[k - 1];
    const MtpActs& a = acts[k - 1];
    const int64_t Tk = a.n_tokens, N = n_seqs * Tk;
    if (Tk == 0) continue;  // never ran (then neither did any deeper module)
    if (dh.empty()) dh.assign(N * H, 0.0f);
    DSMOE_ASSERT(static_cast<int64_t>(dh.size()) == N * H);
    // eq. 23-25: d (scale * L_k) / d logits, then the shared head.
    std::vector<float> dlogits(N * V);  // (N_k, V)
    next_token_loss_backward(a.logits.data(), a.ids.data(), n_seqs, Tk, V, dlogits.data());
    for (float& v : dlogits) v *= scale;
    std::vector<float> dnormed(N * H, 0.0f);  // (N_k, H)
    cpu::linear_backward(dnormed.data(), g.lm_head.data, dlogits.data(), a.normed.data(),
                         w.lm_head.data, N, H, V);
    cpu::rmsnorm_backward(dh.data(), gm.shared_head_norm.data, dnormed.data(), a.h.data(),
                          m.shared_head_norm.data, N, H, c.rms_norm_eps);
    // eq. 22: the block, d h^k -> d h'^k in place.
    layer_backward(c, m.block, gm.block, mtp_is_moe(c, k), dh.data(), mtp_context(a, n_seqs),
                   a.block);
    // eq. 21: eh_proj, then the two norms of the concatenation's halves.
    std::vector<float> dcat(N * 2 * H, 0.0f);  // (N_k, 2H)
    cpu::linear_backward(dcat.data(), gm.eh_proj.data, dh.data(), a.cat.data(), m.eh_proj.data, N,
                         2 * H, H);
    std::vector<float> de_normed(N * H), dh_normed(N * H);  // (N_k, H) each
    for (int64_t i = 0; i < N; i++) {
      std::copy(dcat.begin() + i * 2 * H, dcat.begin() + i * 2 * H + H, de_normed.begin() + i * H);
      std::copy(dcat.begin() + i * 2 * H + H, dcat.begin() + (i + 1) * 2 * H,
                dh_normed.begin() + i * H);
    }
    std::vector<float> demb(N * H, 0.0f), dprev(N * H, 0.0f);  // (N_k, H) each
    cpu::rmsnorm_backward(demb.data(), gm.enorm.data, de_normed.data(), a.emb.data(), m.enorm.data,
                          N, H, c.rms_norm_eps);
    cpu::rmsnorm_backward(dprev.data(), gm.hnorm.data, dh_normed.data(), a.h_prev.data(),
                          m.hnorm.data, N, H, c.rms_norm_eps);
    for (int64_t i = 0; i < N; i++) {  // the shared embedding: scatter-add, in row order
      float* row = g.embed_tokens.data + a.ids[i] * H;
      for (int64_t h = 0; h < H; h++) row[h] += demb[i * H + h];
    }
    // d h^{k-1}: rows i < T-k of each sequence of T-k+1 (h^0: the main stack's output).
    std::vector<float> dh_below;  // (n_seqs * (T-k+1), H) for depth k-1
    float* target = dh0;
    if (k > 1) {
      dh_below.assign(n_seqs * (Tk + 1) * H, 0.0f);
      target = dh_below.data();
    } else {
      DSMOE_ASSERT(Tk + 1 == n_tokens);
    }
    for (int64_t b = 0; b < n_seqs; b++)
      for (int64_t j = 0; j < Tk * H; j++) target[b * (Tk + 1) * H + j] += dprev[b * Tk * H + j];
    dh = std::move(dh_below);
  }
}

}  // namespace dsmoe
