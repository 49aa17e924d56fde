// comm.h: Comm, the collective operations the model and trainer use across ranks (all-to-all
// with per-rank sizes, deterministic all-reduce, broadcast, gather, barrier); LocalComm (one
// process) and the process's world communicator (MPI when built with it and run under mpirun).
#pragma once
#include <cstdint>
#include <memory>
#include <vector>

namespace dsmoe {

// What a communicator has moved and how long its collectives took (this rank, since creation).
struct CommStats {
  int64_t bytes_sent = 0;      // all-to-all bytes to other ranks
  int64_t bytes_received = 0;  // all-to-all bytes from other ranks
  double seconds = 0.0;        // wall time inside collectives
};

class Comm {
 public:
  virtual ~Comm() = default;
  virtual int rank() const = 0;
  virtual int size() const = 0;
  // node[r] = index of the node (shared-memory domain) of rank r, numbered 0.. in rank order.
  const std::vector<int>& node_of_rank() const { return node_of_rank_; }
  int n_nodes() const { return node_of_rank_.empty() ? 1 : node_of_rank_.back() + 1; }

  // Each rank sends send_bytes[r] bytes to rank r (the pieces stored one after another in rank
  // order) and receives recv_bytes[r] from rank r (stored likewise).
  virtual void alltoallv(const void* send, const std::vector<int64_t>& send_bytes, void* recv,
                         const std::vector<int64_t>& recv_bytes) = 0;
  // The same exchange without blocking: start it, compute, then wait_alltoallv() completes it
  // (the buffers must stay untouched until then; one exchange in flight at a time). By default
  // (one process) the exchange happens at the start.
  virtual void start_alltoallv(const void* send, const std::vector<int64_t>& send_bytes, void* recv,
                               const std::vector<int64_t>& recv_bytes) {
    alltoallv(send, send_bytes, recv, recv_bytes);
  }
  virtual void wait_alltoallv() {}
  // recv[r] = the value rank r put at send[this rank]; both [size].
  virtual void alltoall(const int64_t* send, int64_t* recv) = 0;
  // data[n] <- sum over ranks, added in rank order ((x0 + x1) + x2) + ...: the same bits on
  // every rank and every run at a fixed number of ranks.
  virtual void allreduce_sum(float* data, int64_t n) = 0;
  virtual void allreduce_sum(double* data, int64_t n) = 0;
  virtual void allreduce_sum(int64_t* data, int64_t n) = 0;
  // data[bytes] of rank `root` copied to every rank.
  virtual void broadcast(void* data, int64_t bytes, int root) = 0;
  // recv (root only, size() * bytes) <- each rank's send[bytes], in rank order.
  virtual void gather(const void* send, int64_t bytes, void* recv, int root) = 0;
  // recv (every rank, size() * bytes) <- each rank's send[bytes], in rank order.
  virtual void allgather(const void* send, int64_t bytes, void* recv) = 0;
  virtual void barrier() = 0;
  // Ends every rank of the job (an error on one rank must not leave the others waiting).
  [[noreturn]] virtual void abort(int code) = 0;

  const CommStats& stats() const { return stats_; }

 protected:
  std::vector<int> node_of_rank_;
  CommStats stats_;
};

// One process: every collective is a copy or nothing.
class LocalComm final : public Comm {
 public:
  LocalComm() { node_of_rank_ = {0}; }
  int rank() const override { return 0; }
  int size() const override { return 1; }
  void alltoallv(const void* send, const std::vector<int64_t>& send_bytes, void* recv,
                 const std::vector<int64_t>& recv_bytes) override;
  void alltoall(const int64_t* send, int64_t* recv) override { recv[0] = send[0]; }
  void allreduce_sum(float*, int64_t) override {}
  void allreduce_sum(double*, int64_t) override {}
  void allreduce_sum(int64_t*, int64_t) override {}
  void broadcast(void*, int64_t, int root) override;
  void gather(const void* send, int64_t bytes, void* recv, int root) override;
  void allgather(const void* send, int64_t bytes, void* recv) override;
  void barrier() override {}
  [[noreturn]] void abort(int code) override;
};

// Each rank's send[bytes] (the sizes may differ) concatenated in rank order at `root`; other
// ranks get an empty vector. (Counted as all-to-all traffic in the stats.)
std::vector<char> gatherv(Comm& comm, const void* send, int64_t bytes, int root);

// Whether this binary was built with MPI (CMake option DSMOE_MPI).
bool mpi_available();

// The process's communicator: MPI's world when built with MPI and started by mpirun (or srun),
// else a LocalComm. Created on first use; MPI is finalized at exit.
Comm& world_comm();

}  // namespace dsmoe
