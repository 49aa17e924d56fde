// parallel.h: what the subcommands that run under mpirun share: running a command on every
// rank (one error ends the job), the rank's expert shard, sequences split between ranks.
#pragma once
#include <cstdint>
#include <functional>
#include <memory>
#include <string>

#include "comm/comm.h"
#include "model/expert_parallel.h"
#include "model/transformer.h"

namespace dsmoe::cli {

// Runs `command` on this rank with row-invariant products (kernels/cpu/ops.h): only rank 0 logs; an
// error on any rank of several prints it with the rank and aborts the whole job (the others would
// wait forever in a collective).
int run_on_ranks(const std::function<int()>& command);

// The experts this rank loads: its shard with several ranks, all in one process.
ExpertShard rank_shard(Comm& comm, const std::string& model_dir);

// Loads a checkpoint for inference with this rank's experts and makes its MoE layers dispatch
// over `comm` (a no-op in one process); `dispatcher`, when given, gets the layers' dispatcher
// (its traffic counters; null in one process).
Model load_parallel_model(Comm& comm, const std::string& model_dir, const std::string& weights,
                          std::shared_ptr<ExpertParallel>* dispatcher = nullptr);

// Sequences [first, end) of n_seqs that rank `rank` of `size` runs.
struct SeqRange {
  int64_t first = 0, end = 0;
  int64_t count() const { return end - first; }
};
SeqRange rank_sequences(int64_t n_seqs, int rank, int size);

}  // namespace dsmoe::cli
