#include "apps/cli/parallel.h"

#include <cstdio>
#include <exception>

#include "apps/cli/common.h"
#include "kernels/cpu/ops.h"
#include "util/log.h"

namespace dsmoe::cli {

int run_on_ranks(const std::function<int()>& command) {
  cpu::set_row_invariant_products(true);  // one process and R ranks: the same bits
  Comm& comm = world_comm();
  if (comm.size() == 1) return command();
  if (comm.rank() != 0) log_level() = LogLevel::kQuiet;
  try {
    const int code = command();
    comm.barrier();
    return code;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "dsmoe: error on rank %d of %d: %s\n", comm.rank(), comm.size(), e.what());
    std::fflush(stderr);
    comm.abort(1);
  }
  return 1;  // (not reached: abort ends the process)
}

ExpertShard rank_shard(Comm& comm, const std::string& model_dir) {
  if (comm.size() == 1) return {};
  const ModelConfig config = load_model_config(model_dir);
  return ExpertParallel(comm, config).shard();
}

Model load_parallel_model(Comm& comm, const std::string& model_dir, const std::string& weights,
                          std::shared_ptr<ExpertParallel>* dispatcher) {
  Model model = load_inference_model(model_dir, weights, rank_shard(comm, model_dir));
  if (comm.size() > 1) {
    auto ep = std::make_shared<ExpertParallel>(comm, model.config());
    use_expert_parallel(model.config(), model.mutable_weights(), ep);
    if (dispatcher != nullptr) *dispatcher = ep;
    log_info("expert parallelism: {} ranks on {} node(s), {} routed experts per rank", comm.size(),
             comm.n_nodes(), model.config().n_routed_experts / comm.size());
  }
  return model;
}

SeqRange rank_sequences(int64_t n_seqs, int rank, int size) {
  return {n_seqs * rank / size, n_seqs * (rank + 1) / size};
}

}  // namespace dsmoe::cli
