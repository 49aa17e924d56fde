// shared_kv_attention.cpp (cpu): see shared_kv_attention.h. An AVX-512 path (functions compiled
// for it, chosen at run time) and scalar loops doing the same arithmetic for other CPUs.
//
// Per chunk of 16 query rows ("lanes"), a thread's key range [s0, s1) goes in blocks of 64 keys
// (an online softmax, as flash attention runs it), so that the cache rows come from memory once:
//   1. scores: p[s][l] = scale * k_s . q_l for 8 keys at a time (the transposed queries qt[d][l]
//      are one vector per d; each key element is broadcast once for the 16 rows);
//   2. softmax: the running maximum m[l] takes the block's visible scores, p = exp(p - m) (0
//      where masked), and the running sum and output are rescaled by exp(m_before - m);
//   3. values: o[l][j] += sum_s p[s][l] v_s[j], per 16 columns of o, the block's rows from L2.
// The parts of the threads are merged by the same rescaling: with M = max_t m_t,
// out = sum_t exp(m_t - M) o_t / sum_t exp(m_t - M) sum_t.
#include "kernels/cpu/shared_kv_attention.h"

#include <immintrin.h>
#include <omp.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <vector>

#include "kernels/cpu/exp.h"
#include "util/cpu_cap.h"
#include "util/multiversion.h"

namespace dsmoe::cpu {
namespace {

constexpr int64_t kLanes = 16;              // query rows per chunk: one vector of scores per key
constexpr int64_t kScoreKeys = 8;           // keys per pass of the scores (8 FMA chains)
constexpr int64_t kBlockKeys = 64;          // keys per block: their rows stay in L2 between passes
constexpr int64_t kMinKeysPerThread = 128;  // fewer: not worth waking the team
constexpr int64_t kMaxThreads = 64;

std::atomic<bool> g_force_portable{false};

// One chunk of query rows on one thread: the inputs and where its results go.
struct ChunkTask {
  const float* qt;           // [qk_dim][kLanes] queries, transposed (rows past R zero)
  const int64_t* n_visible;  // [kLanes] keys each row sees (0 for rows past R)
  const float* k;            // the shared keys (row s at k + s * k_token_stride)
  const float* v;            // the shared values
  int64_t s0, s1;            // this thread's keys
  float* o;                  // [kLanes][v_dim] partial output (unnormalized)
  float* max_score;          // [kLanes] running maximum m (-inf: no visible key yet)
  float* sum;                // [kLanes] running sum of exp(score - m)
};

// One block of keys [b0, b1): p[key - b0][l] holds the scores, then the weights.
struct Block {
  int64_t b0, b1;
  float* p;        // [kBlockKeys][kLanes]
  float* rescale;  // [kLanes] exp(m_before - m_after): the factor of o and sum
};

// ---------------------------------------------------------------------------------------------
// Scalar loops.

void ScoresPortable(const AttentionShape& s, const ChunkTask& t, const Block& b) {
  for (int64_t key = b.b0; key < b.b1; key++) {
    float acc[kLanes] = {};
    const float* k_row = t.k + key * s.k_token_stride;
    for (int64_t d = 0; d < s.qk_dim; d++)
      for (int64_t l = 0; l < kLanes; l++) acc[l] += k_row[d] * t.qt[d * kLanes + l];
    for (int64_t l = 0; l < kLanes; l++) b.p[(key - b.b0) * kLanes + l] = s.scale * acc[l];
  }
}

void ValuesPortable(const AttentionShape& s, const ChunkTask& t, const Block& b) {
  for (int64_t l = 0; l < kLanes; l++)
    for (int64_t j = 0; j < s.v_dim; j++) t.o[l * s.v_dim + j] *= b.rescale[l];
  for (int64_t key = b.b0; key < b.b1; key++) {
    const float* v_row = t.v + key * s.v_token_stride;
    const float* p_key = b.p + (key - b.b0) * kLanes;
    for (int64_t l = 0; l < kLanes; l++)
      for (int64_t j = 0; j < s.v_dim; j++) t.o[l * s.v_dim + j] += p_key[l] * v_row[j];
  }
}

// ---------------------------------------------------------------------------------------------
// AVX-512.

#if defined(__x86_64__)
#define DSMOE_AVX512 __attribute__((target("avx512f")))

template <int kKeys>
DSMOE_AVX512 void ScoreKeys(const AttentionShape& s, const ChunkTask& t, const Block& b,
                            int64_t key) {
  __m512 acc[kKeys];
  const float* k_rows[kKeys];
  for (int i = 0; i < kKeys; i++) {
    acc[i] = _mm512_setzero_ps();
    k_rows[i] = t.k + (key + i) * s.k_token_stride;
  }
  for (int64_t d = 0; d < s.qk_dim; d++) {
    const __m512 q_d = _mm512_loadu_ps(t.qt + d * kLanes);
    for (int i = 0; i < kKeys; i++)
      acc[i] = _mm512_fmadd_ps(_mm512_set1_ps(k_rows[i][d]), q_d, acc[i]);
  }
  const __m512 scale = _mm512_set1_ps(s.scale);
  for (int i = 0; i < kKeys; i++)
    _mm512_storeu_ps(b.p + (key + i - b.b0) * kLanes, _mm512_mul_ps(scale, acc[i]));
}

DSMOE_AVX512 void ScoresNative(const AttentionShape& s, const ChunkTask& t, const Block& b) {
  int64_t key = b.b0;
  for (; key + kScoreKeys <= b.b1; key += kScoreKeys) ScoreKeys<kScoreKeys>(s, t, b, key);
  for (; key < b.b1; key++) ScoreKeys<1>(s, t, b, key);
}

// o[l][j0, j0 + 16) = rescale[l] * o[l][j0, j0 + 16) + the block's weighted values, for all 16
// rows (columns past v_dim masked). The loops over the rows are unrolled by pragma: left to
// GCC 12, it kept the 16 sums in registers but also stored them to the stack after every key,
// which took twice the time (5.2% of Q4_0 decode at 512-768 tokens of context, now 2.5%).
DSMOE_AVX512 void ValueColumns(const AttentionShape& s, const ChunkTask& t, const Block& b,
                               int64_t j0) {
  const __mmask16 mask =
      static_cast<__mmask16>((1u << std::min<int64_t>(kLanes, s.v_dim - j0)) - 1);
  float* o = t.o + j0;
  const float* v = t.v + b.b0 * s.v_token_stride + j0;
  const int64_t v_dim = s.v_dim, v_stride = s.v_token_stride, n_keys = b.b1 - b.b0;
  __m512 acc[kLanes];
#pragma GCC unroll 16
  for (int l = 0; l < kLanes; l++)
    acc[l] =
        _mm512_mul_ps(_mm512_set1_ps(b.rescale[l]), _mm512_maskz_loadu_ps(mask, o + l * v_dim));
  for (int64_t i = 0; i < n_keys; i++) {
    const __m512 v_row = _mm512_maskz_loadu_ps(mask, v + i * v_stride);
    const float* p_key = b.p + i * kLanes;
#pragma GCC unroll 16
    for (int l = 0; l < kLanes; l++)
      acc[l] = _mm512_fmadd_ps(_mm512_set1_ps(p_key[l]), v_row, acc[l]);
  }
#pragma GCC unroll 16
  for (int l = 0; l < kLanes; l++) _mm512_mask_storeu_ps(o + l * v_dim, mask, acc[l]);
}

DSMOE_AVX512 void ValuesNative(const AttentionShape& s, const ChunkTask& t, const Block& b) {
  for (int64_t j0 = 0; j0 < s.v_dim; j0 += kLanes) ValueColumns(s, t, b, j0);
}
#undef DSMOE_AVX512

// The CPU has AVX-512 and DSMOE_MAX_ISA allows it.
bool HasAvx512() { return cpu_allows_avx512(); }
#endif  // __x86_64__

// The online softmax over one block: the running maximum m moves to m' = max(m, the block's
// visible scores); o and sum are to be scaled by exp(m - m') (0 while nothing was visible); the
// block's scores become exp(score - m'), 0 where masked.
DSMOE_MULTIVERSION_BODY void SoftmaxBlockBody(const ChunkTask& t, const Block& b) {
  float m[kLanes], block_sum[kLanes] = {};
  std::copy_n(t.max_score, kLanes, m);
  for (int64_t key = b.b0; key < b.b1; key++)
    for (int64_t l = 0; l < kLanes; l++)
      if (key < t.n_visible[l]) m[l] = std::max(m[l], b.p[(key - b.b0) * kLanes + l]);
  for (int64_t key = b.b0; key < b.b1; key++) {
    float* p_key = b.p + (key - b.b0) * kLanes;
    for (int64_t l = 0; l < kLanes; l++) {
      p_key[l] = key < t.n_visible[l] ? exp_vectorizable(p_key[l] - m[l]) : 0.0f;
      block_sum[l] += p_key[l];
    }
  }
  for (int64_t l = 0; l < kLanes; l++) {
    b.rescale[l] = t.max_score[l] == -INFINITY ? 0.0f : exp_vectorizable(t.max_score[l] - m[l]);
    t.sum[l] = t.sum[l] * b.rescale[l] + block_sum[l];
    t.max_score[l] = m[l];
  }
}

void SoftmaxBlock(const ChunkTask& t, const Block& b) { multiversion<SoftmaxBlockBody>(t, b); }

// The chunk's keys block by block: scores, softmax, values while the block's rows are in L2
// (the cache is read from memory once).
void RunChunk(const AttentionShape& s, const ChunkTask& t) {
  std::fill_n(t.o, kLanes * s.v_dim, 0.0f);
  std::fill_n(t.max_score, kLanes, -INFINITY);
  std::fill_n(t.sum, kLanes, 0.0f);
  alignas(64) float p[kBlockKeys * kLanes], rescale[kLanes];
#if defined(__x86_64__)
  const bool native = !g_force_portable.load(std::memory_order_relaxed) && HasAvx512();
#endif
  for (int64_t b0 = t.s0; b0 < t.s1; b0 += kBlockKeys) {
    const Block b{b0, std::min(b0 + kBlockKeys, t.s1), p, rescale};
#if defined(__x86_64__)
    if (native) {
      ScoresNative(s, t, b);
      SoftmaxBlock(t, b);
      ValuesNative(s, t, b);
      continue;
    }
#endif
    ScoresPortable(s, t, b);
    SoftmaxBlock(t, b);
    ValuesPortable(s, t, b);
  }
}

}  // namespace

void shared_kv_attention_force_portable(bool on) { g_force_portable.store(on); }

void shared_kv_attention(float* out, const float* q, const float* k, const float* v,
                         const AttentionShape& s) {
  const int64_t R = s.n_q_tokens * s.n_heads, chunks = (R + kLanes - 1) / kLanes;
  // Keys past the last query's position are visible to no row.
  const int64_t keys = std::min(s.n_kv_tokens, s.q_pos0 + s.n_q_tokens);
  const int64_t n_parts =  // key ranges, one per thread (at least kMinKeysPerThread keys each)
      omp_in_parallel()
          ? 1
          : std::clamp<int64_t>(keys / kMinKeysPerThread, 1,
                                std::min<int64_t>(kMaxThreads, omp_get_max_threads()));
  // (kept per calling thread: a decoded token allocates nothing here)
  thread_local std::vector<float> qt, parts;
  thread_local std::vector<int64_t> n_visible;
  qt.assign(chunks * s.qk_dim * kLanes, 0.0f);
  n_visible.assign(chunks * kLanes, 0);
  for (int64_t r = 0; r < R; r++) {
    const int64_t c = r / kLanes, l = r % kLanes;
    for (int64_t d = 0; d < s.qk_dim; d++)
      qt[(c * s.qk_dim + d) * kLanes + l] = q[r * s.q_head_stride + d];
    n_visible[c * kLanes + l] = std::min(s.n_kv_tokens, s.q_pos0 + r / s.n_heads + 1);
  }
  // Per part and chunk: o [kLanes][v_dim], then m and sum [kLanes] each.
  const int64_t part = kLanes * (s.v_dim + 2);
  parts.resize(n_parts * chunks * part);
  float* parts_data = parts.data();
  const float* qt_data = qt.data();
  const int64_t* visible_data = n_visible.data();
#pragma omp parallel num_threads(static_cast <int>(n_parts)) if (n_parts > 1)
  {
    // Part th covers keys [s0, s1); a smaller team than asked for takes several parts each.
    for (int64_t th = omp_get_thread_num(); th < n_parts; th += omp_get_num_threads()) {
      const int64_t s0 = keys * th / n_parts, s1 = keys * (th + 1) / n_parts;
      for (int64_t c = 0; c < chunks; c++) {
        float* o = parts_data + (th * chunks + c) * part;
        const ChunkTask task{qt_data + c * s.qk_dim * kLanes,
                             visible_data + c * kLanes,
                             k,
                             v,
                             s0,
                             s1,
                             o,
                             o + kLanes * s.v_dim,
                             o + kLanes * (s.v_dim + 1)};
        RunChunk(s, task);
      }
    }
  }
  // Merge: weights exp(m_t - M) per part (0 for parts without a visible key).
  for (int64_t r = 0; r < R; r++) {
    const int64_t c = r / kLanes, l = r % kLanes;
    auto part_of = [&](int64_t th) { return parts_data + (th * chunks + c) * part; };
    float max_all = -INFINITY;
    for (int64_t th = 0; th < n_parts; th++)
      max_all = std::max(max_all, part_of(th)[kLanes * s.v_dim + l]);
    float weight[kMaxThreads], total = 0.0f;
    for (int64_t th = 0; th < n_parts; th++) {
      const float m = part_of(th)[kLanes * s.v_dim + l];
      weight[th] = m == -INFINITY ? 0.0f : std::exp(m - max_all);
      total += weight[th] * part_of(th)[kLanes * (s.v_dim + 1) + l];
    }
    float* out_r = out + r * s.out_head_stride;  // (loops over j: they vectorize)
    std::fill_n(out_r, s.v_dim, 0.0f);
    for (int64_t th = 0; th < n_parts; th++) {
      const float* o = part_of(th) + l * s.v_dim;
      for (int64_t j = 0; j < s.v_dim; j++) out_r[j] += weight[th] * o[j];
    }
    for (int64_t j = 0; j < s.v_dim; j++) out_r[j] /= total;
  }
}

}  // namespace dsmoe::cpu
