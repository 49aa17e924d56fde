// ops.h (ref): scalar reference kernels, templates over the element type so that tests can run
// them in double as ground truth. Row-major buffers; shapes in the comments.
#pragma once
#include <cmath>
#include <cstdint>
#include <vector>

#include "kernels/attention_shape.h"

namespace dsmoe::ref {

// out[m, n] = sum_k inp[m, k] * weight[n, k]   (a Hugging Face Linear: weight is [N, K])
template <typename T>
void linear_forward(T* out, const T* inp, const T* weight, int64_t M, int64_t K, int64_t N) {
  for (int64_t m = 0; m < M; m++)
    for (int64_t n = 0; n < N; n++) {
      T sum = 0;
      for (int64_t k = 0; k < K; k++) sum += inp[m * K + k] * weight[n * K + k];
      out[m * N + n] = sum;
    }
}

// out[m, :] = inp[m, :] / sqrt(mean(inp[m, :]^2) + eps) * weight
template <typename T>
void rmsnorm_forward(T* out, const T* inp, const T* weight, int64_t M, int64_t C, float eps) {
  for (int64_t m = 0; m < M; m++) {
    const T* x = inp + m * C;
    double sum_sq = 0;
    for (int64_t c = 0; c < C; c++) sum_sq += static_cast<double>(x[c]) * x[c];
    T rstd = static_cast<T>(1.0 / std::sqrt(sum_sq / C + eps));
    for (int64_t c = 0; c < C; c++) out[m * C + c] = x[c] * rstd * weight[c];
  }
}

// out = silu(gate) * up, silu(x) = x / (1 + exp(-x))   (the SwiGLU product)
template <typename T>
void silu_mul_forward(T* out, const T* gate, const T* up, int64_t n) {
  for (int64_t i = 0; i < n; i++) out[i] = gate[i] / (T(1) + std::exp(-gate[i])) * up[i];
}

// In-place softmax of one row of n values (max-subtracted).
template <typename T>
void softmax_inplace(T* x, int64_t n) {
  T max_value = x[0];
  for (int64_t i = 1; i < n; i++) max_value = x[i] > max_value ? x[i] : max_value;
  T sum = 0;
  for (int64_t i = 0; i < n; i++) {
    x[i] = std::exp(x[i] - max_value);
    sum += x[i];
  }
  for (int64_t i = 0; i < n; i++) x[i] /= sum;
}

// Cross-entropy of one row against `target`: log sum_v exp(x_v) - x[target]; with dlogits,
// scale * (softmax(x) - onehot(target)).
template <typename T>
T cross_entropy_row(const T* logits, int64_t n, int64_t target, T scale, T* dlogits) {
  T max_value = logits[0];
  for (int64_t v = 1; v < n; v++) max_value = logits[v] > max_value ? logits[v] : max_value;
  T sum = 0;
  for (int64_t v = 0; v < n; v++) sum += std::exp(logits[v] - max_value);
  if (dlogits != nullptr) {
    for (int64_t v = 0; v < n; v++) dlogits[v] = scale * std::exp(logits[v] - max_value) / sum;
    dlogits[target] -= scale;
  }
  return std::log(sum) + max_value - logits[target];
}

// RoPE on x[t, h, 0:rope_dim] (addressed by strides), angle table cos/sin [n_tokens, rope_dim/2].
// interleaved: pairs (2i, 2i+1) (DeepSeek-V2/V3); otherwise rotate-half: pairs (i, i + d/2)
// (DeepSeek V1, Llama).
template <typename T>
void rope_forward(T* x, int64_t n_tokens, int64_t n_heads, int64_t token_stride,
                  int64_t head_stride, int64_t rope_dim, const float* cos, const float* sin,
                  bool interleaved) {
  const int64_t half = rope_dim / 2;
  for (int64_t t = 0; t < n_tokens; t++)
    for (int64_t h = 0; h < n_heads; h++) {
      T* row = x + t * token_stride + h * head_stride;
      for (int64_t i = 0; i < half; i++) {
        const int64_t a = interleaved ? 2 * i : i;
        const int64_t b = interleaved ? 2 * i + 1 : i + half;
        const T c = cos[t * half + i], s = sin[t * half + i];
        const T x0 = row[a], x1 = row[b];
        row[a] = x0 * c - x1 * s;
        row[b] = x1 * c + x0 * s;
      }
    }
}

// p[0, n_visible) = softmax(scale * q_row . k_j) over the visible keys j of one head (k points
// at that head's first key; keys advance by k_token_stride).
template <typename T>
void attention_probabilities(const T* q_row, const T* k, int64_t n_visible, const AttentionShape& s,
                             T* p) {
  for (int64_t j = 0; j < n_visible; j++) {
    const T* krow = k + j * s.k_token_stride;
    T dot = 0;
    for (int64_t d = 0; d < s.qk_dim; d++) dot += q_row[d] * krow[d];
    p[j] = dot * static_cast<T>(s.scale);
  }
  softmax_inplace(p, n_visible);
}

// Causal scaled-dot-product attention for one sequence with grouped KV heads (see
// AttentionShape): query t attends to keys 0 .. q_pos0 + t.
template <typename T>
void attention_forward(T* out, const T* q, const T* k, const T* v, const AttentionShape& s) {
  std::vector<T> scores(s.n_kv_tokens);
  const int64_t group = s.n_heads / s.n_kv_heads;
  for (int64_t t = 0; t < s.n_q_tokens; t++)
    for (int64_t h = 0; h < s.n_heads; h++) {
      const int64_t kv_head = h / group;
      const int64_t n_visible = s.q_pos0 + t + 1;
      attention_probabilities(q + t * s.q_token_stride + h * s.q_head_stride,
                              k + kv_head * s.k_head_stride, n_visible, s, scores.data());
      T* orow = out + t * s.out_token_stride + h * s.out_head_stride;
      for (int64_t d = 0; d < s.v_dim; d++) orow[d] = 0;
      for (int64_t j = 0; j < n_visible; j++) {
        const T* vrow = v + j * s.v_token_stride + kv_head * s.v_head_stride;
        for (int64_t d = 0; d < s.v_dim; d++) orow[d] += scores[j] * vrow[d];
      }
    }
}

// ---------------------------------------------------------------------------- backward
// Each backward accumulates (+=) into the gradients of inputs and parameters, as llm.c does;
// a null gradient pointer skips that gradient.

// Of linear_forward: dinp[M, K] += dout[M, N] . weight[N, K]; dweight[N, K] += dout^T . inp.
template <typename T>
void linear_backward(T* dinp, T* dweight, const T* dout, const T* inp, const T* weight, int64_t M,
                     int64_t K, int64_t N) {
  for (int64_t m = 0; m < M; m++)
    for (int64_t n = 0; n < N; n++) {
      const T d = dout[m * N + n];
      for (int64_t k = 0; k < K; k++) {
        if (dinp != nullptr) dinp[m * K + k] += d * weight[n * K + k];
        if (dweight != nullptr) dweight[n * K + k] += d * inp[m * K + k];
      }
    }
}

// Of rmsnorm_forward: with xhat = x * rstd and g = dout * weight,
// dx = rstd * (g - xhat * mean(g * xhat)), dweight += dout * xhat.
template <typename T>
void rmsnorm_backward(T* dinp, T* dweight, const T* dout, const T* inp, const T* weight, int64_t M,
                      int64_t C, float eps) {
  for (int64_t m = 0; m < M; m++) {
    const T* x = inp + m * C;
    const T* dy = dout + m * C;
    double sum_sq = 0;
    for (int64_t c = 0; c < C; c++) sum_sq += static_cast<double>(x[c]) * x[c];
    const T rstd = static_cast<T>(1.0 / std::sqrt(sum_sq / C + eps));
    double dot = 0;  // sum g * xhat
    for (int64_t c = 0; c < C; c++) dot += static_cast<double>(dy[c]) * weight[c] * x[c] * rstd;
    const T mean_dot = static_cast<T>(dot / C);
    for (int64_t c = 0; c < C; c++) {
      const T xhat = x[c] * rstd;
      if (dweight != nullptr) dweight[c] += dy[c] * xhat;
      if (dinp != nullptr) dinp[m * C + c] += rstd * (dy[c] * weight[c] - xhat * mean_dot);
    }
  }
}

// Of silu_mul_forward (overwrites dgate, dup): silu'(g) = sigma(g) * (1 + g * (1 - sigma(g))).
template <typename T>
void silu_mul_backward(T* dgate, T* dup, const T* dout, const T* gate, const T* up, int64_t n) {
  for (int64_t i = 0; i < n; i++) {
    const T sigma = T(1) / (T(1) + std::exp(-gate[i]));
    const T silu = gate[i] * sigma;
    dup[i] = dout[i] * silu;
    dgate[i] = dout[i] * up[i] * sigma * (T(1) + gate[i] * (T(1) - sigma));
  }
}

// Of attention_forward: recomputes the probabilities, then dV += P^T dO, dS = P * (dP - sum(dO *
// O)), dQ += scale * dS K, dK += scale * dS^T Q. `out` is the forward's output.
template <typename T>
void attention_backward(T* dq, T* dk, T* dv, const T* dout, const T* q, const T* k, const T* v,
                        const T* out, const AttentionShape& s) {
  std::vector<T> p(s.n_kv_tokens);
  const int64_t group = s.n_heads / s.n_kv_heads;
  for (int64_t t = 0; t < s.n_q_tokens; t++)
    for (int64_t h = 0; h < s.n_heads; h++) {
      const int64_t kv_head = h / group, n_visible = s.q_pos0 + t + 1;
      const T* qrow = q + t * s.q_token_stride + h * s.q_head_stride;
      const T* dorow = dout + t * s.out_token_stride + h * s.out_head_stride;
      const T* orow = out + t * s.out_token_stride + h * s.out_head_stride;
      attention_probabilities(qrow, k + kv_head * s.k_head_stride, n_visible, s, p.data());
      T do_dot_o = 0;
      for (int64_t d = 0; d < s.v_dim; d++) do_dot_o += dorow[d] * orow[d];
      for (int64_t j = 0; j < n_visible; j++) {
        const T* vrow = v + j * s.v_token_stride + kv_head * s.v_head_stride;
        T* dvrow = dv + j * s.v_token_stride + kv_head * s.v_head_stride;
        T dp = 0;
        for (int64_t d = 0; d < s.v_dim; d++) {
          dp += dorow[d] * vrow[d];
          dvrow[d] += p[j] * dorow[d];
        }
        const T ds = p[j] * (dp - do_dot_o) * static_cast<T>(s.scale);
        const T* krow = k + j * s.k_token_stride + kv_head * s.k_head_stride;
        T* dkrow = dk + j * s.k_token_stride + kv_head * s.k_head_stride;
        T* dqrow = dq + t * s.q_token_stride + h * s.q_head_stride;
        for (int64_t d = 0; d < s.qk_dim; d++) {
          dqrow[d] += ds * krow[d];
          dkrow[d] += ds * qrow[d];
        }
      }
    }
}

}  // namespace dsmoe::ref
