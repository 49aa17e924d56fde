// transformer_backward.cpp: the training forward and the backward pass of the whole model, the
// forward's list of ops in reverse (llm.c style).
#include <algorithm>

#include "kernels/cpu/ops.h"
#include "model/mtp.h"
#include "model/rope.h"
#include "model/transformer.h"
#include "util/check.h"

namespace dsmoe {

ModelWeights zeros_like_weights(const ModelConfig& config, int64_t n_mtp) {
  ModelWeights zeros;
  zeros.mtp.resize(n_mtp);
  for_each_tensor(config, zeros,
                  [](const std::string&, const Shape& shape, TensorRole, Tensor& tensor) {
                    tensor = Tensor::zeros(shape);
                  });
  if (config.tie_word_embeddings) zeros.lm_head = zeros.embed_tokens;
  return zeros;
}

StepStats Model::forward_backward(const int64_t* ids, int64_t n_seqs, int64_t n_tokens,
                                  ModelWeights& grads, TrainActs& acts,
                                  const TrainOptions& options) const {
  const ModelConfig& c = config_;
  const int64_t N = n_seqs * n_tokens, H = c.hidden_size, V = c.vocab_size;
  DSMOE_CHECK(n_seqs > 0 && n_tokens > 1, "training needs sequences of at least 2 tokens");
  DSMOE_CHECK(weight_format_ == WeightFormat::kF32,
              "training needs float32 weights; this model was quantized to {}",
              weight_format_name(weight_format_));
  // ---- forward, keeping activations
  acts.x_final.resize(N * H);
  embed(ids, N, acts.x_final.data());
  DSMOE_CHECK(!c.noisy_gating || options.noise_rng != nullptr,
              "noisy gating needs a random generator for training");
  MoeTraining moe_training;
  moe_training.router.noise_rng = options.noise_rng;
  moe_training.n_seqs = n_seqs;
  moe_training.balance_losses = options.balance_losses;
  run_layers(acts.x_final.data(), n_seqs, n_tokens, nullptr, nullptr, &acts.layers, &moe_training);
  acts.normed.resize(N * H);
  acts.logits.resize(N * V);
  cpu::rmsnorm_forward(acts.normed.data(), acts.x_final.data(), weights_.norm.data, N, H,
                       c.rms_norm_eps);
  cpu::linear_forward(acts.logits.data(), acts.normed.data(), weights_.lm_head.data, N, H, V);
  std::vector<float>& dlogits = acts.dlogits;  // (N, V)
  dlogits.resize(N * V);
  StepStats stats;
  stats.loss =
      next_token_loss_backward(acts.logits.data(), ids, n_seqs, n_tokens, V, dlogits.data());
  if (!options.cross_entropy) std::fill(dlogits.begin(), dlogits.end(), 0.0f);
  // DeepSeek-V3 sec. 2.2: the MTP modules continue from the last layer's output, before the norm.
  const bool use_mtp = options.mtp && !weights_.mtp.empty();
  const int64_t n_mtp = static_cast<int64_t>(weights_.mtp.size());
  DSMOE_CHECK(!use_mtp || grads.mtp.size() == weights_.mtp.size(),
              "MTP training: the gradients hold {} MTP modules, the model {} (make them with "
              "zeros_like_weights(config, weights.mtp.size()), or set TrainOptions.mtp = false)",
              grads.mtp.size(), n_mtp);
  double mtp_sum = 0.0;
  if (use_mtp) {
    stats.mtp_loss = mtp_forward(c, weights_, ids, n_seqs, n_tokens, acts.x_final.data(), acts.mtp,
                                 &moe_training);
    stats.mtp_scale = c.mtp_loss_scaling_factor / static_cast<double>(n_mtp);  // eq. 25
    for (double l : stats.mtp_loss) mtp_sum += l;
  } else {
    acts.mtp.clear();
  }
  for (int64_t L = 0; L < c.num_hidden_layers + (use_mtp ? n_mtp : 0); L++) {
    if (!c.is_moe_layer(L)) continue;
    const int64_t k = L - c.num_hidden_layers + 1;         // MTP depth when > 0
    if (k > 0 && acts.mtp[k - 1].n_tokens == 0) continue;  // sequences too short for depth k
    const MoeActs& moe = k > 0 ? acts.mtp[k - 1].block.moe : acts.layers[L].moe;
    stats.aux[L] = moe.aux;
    stats.aux_loss += moe.aux.total();
    stats.expert_load[L] = expert_loads(c, moe.routing);
    stats.n_dropped += moe.routing.n_dropped;
  }
  stats.objective =
      (options.cross_entropy ? stats.loss + stats.mtp_scale * mtp_sum : 0.0) + stats.aux_loss;

  // ---- backward
  std::vector<float> dnormed(N * H, 0.0f), dx(N * H, 0.0f);  // (N, H)
  cpu::linear_backward(dnormed.data(), grads.lm_head.data, dlogits.data(), acts.normed.data(),
                       weights_.lm_head.data, N, H, V);
  cpu::rmsnorm_backward(dx.data(), grads.norm.data, dnormed.data(), acts.x_final.data(),
                        weights_.norm.data, N, H, c.rms_norm_eps);
  if (use_mtp)  // d x_final += what MTP depth 1 (and through it every depth) sends back
    mtp_backward(c, weights_, grads, n_seqs, n_tokens,
                 options.cross_entropy ? static_cast<float>(stats.mtp_scale) : 0.0f, acts.mtp,
                 dx.data());
  const int64_t half = c.rope_dim() / 2;
  std::vector<float> cos(n_tokens * half), sin(n_tokens * half);
  rope_angles(c, 0, n_tokens, cos.data(), sin.data());
  AttentionContext ctx;
  ctx.n_seqs = n_seqs, ctx.n_tokens = n_tokens, ctx.cos = cos.data(), ctx.sin = sin.data();
  ctx.mla_mode = MlaMode::kNaive;
  for (int64_t L = c.num_hidden_layers - 1; L >= 0; L--)
    layer_backward(c, weights_.layers[L], grads.layers[L], c.is_moe_layer(L), dx.data(), ctx,
                   acts.layers[L]);
  for (int64_t i = 0; i < N; i++) {  // embedding: scatter-add, in token order
    float* row = grads.embed_tokens.data + ids[i] * H;
    for (int64_t h = 0; h < H; h++) row[h] += dx[i * H + h];
  }
  return stats;
}

}  // namespace dsmoe
