// balance.h: the auxiliary balance losses of one MoE layer: expert-level (DeepSeek-V2 eq. 12-14,
// batch-wise or per sequence as DeepSeekMoE V1's seq_aux and DeepSeek-V3 eq. 17-20),
// device-level (V2 eq. 15-17) and communication (V2 eq. 18-20); and the load statistics.
#pragma once
#include <cstdint>
#include <vector>

#include "model/config.h"
#include "model/router.h"

namespace dsmoe {

struct BalanceLosses {
  double expert = 0.0;  // alpha1 * sum_i f_i P_i
  double device = 0.0;  // alpha2 * sum_d f'_d P'_d
  double comm = 0.0;    // alpha3 * sum_d f''_d P''_d
  double total() const { return expert + device + comm; }
};

// Losses of `routing` over n_seqs sequences of n_tokens tokens (routing.n_tokens = both). When
// dscores is not null, adds d(total)/d scores into dscores [n_seqs * n_tokens, E]. The counts
// (f terms) are constants, as in the reference: only the mean affinities P carry gradient.
// Under sigmoid scoring, P uses the scores normalised per token (DeepSeek-V3 eq. 19).
BalanceLosses balance_losses(const ModelConfig& config, const Routing& routing, int64_t n_seqs,
                             int64_t n_tokens, float* dscores);

// Tokens routed to each expert (dropped assignments excluded) [E].
std::vector<int64_t> expert_loads(const ModelConfig& config, const Routing& routing);

}  // namespace dsmoe
