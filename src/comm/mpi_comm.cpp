// mpi_comm.cpp: MpiComm, Comm over MPI_COMM_WORLD. The only file that includes mpi.h.
#include "comm/mpi_comm.h"

#include <mpi.h>

#include <algorithm>
#include <climits>
#include <vector>

#include "util/check.h"
#include "util/log.h"

namespace dsmoe {
namespace {

template <typename T>
MPI_Datatype mpi_type();
template <>
MPI_Datatype mpi_type<float>() {
  return MPI_FLOAT;
}
template <>
MPI_Datatype mpi_type<double>() {
  return MPI_DOUBLE;
}
template <>
MPI_Datatype mpi_type<int64_t>() {
  return MPI_INT64_T;
}

int checked_int(int64_t value, const char* what) {
  DSMOE_CHECK(value >= 0 && value <= INT_MAX, "MPI {}: {} does not fit an int", what, value);
  return static_cast<int>(value);
}

void check_mpi(int code, const char* call) {
  if (code == MPI_SUCCESS) return;
  char text[MPI_MAX_ERROR_STRING];
  int length = 0;
  MPI_Error_string(code, text, &length);
  DSMOE_CHECK(false, "{} failed: {}", call, std::string(text, length));
}

// Adds its time to stats.seconds when it goes out of scope.
class CommTimer {
 public:
  explicit CommTimer(CommStats& stats) : stats_(stats), start_(MPI_Wtime()) {}
  ~CommTimer() { stats_.seconds += MPI_Wtime() - start_; }

 private:
  CommStats& stats_;
  double start_;
};

class MpiComm final : public Comm {
 public:
  MpiComm() {
    int provided = 0;
    check_mpi(MPI_Init_thread(nullptr, nullptr, MPI_THREAD_FUNNELED, &provided), "MPI_Init");
    MPI_Comm_rank(MPI_COMM_WORLD, &rank_);
    MPI_Comm_size(MPI_COMM_WORLD, &size_);
    find_nodes();
  }
  ~MpiComm() override { MPI_Finalize(); }

  int rank() const override { return rank_; }
  int size() const override { return size_; }

  void alltoallv(const void* send, const std::vector<int64_t>& send_bytes, void* recv,
                 const std::vector<int64_t>& recv_bytes) override {
    start_alltoallv(send, send_bytes, recv, recv_bytes);
    wait_alltoallv();
  }

  void start_alltoallv(const void* send, const std::vector<int64_t>& send_bytes, void* recv,
                       const std::vector<int64_t>& recv_bytes) override {
    DSMOE_CHECK(request_ == MPI_REQUEST_NULL, "start_alltoallv: an exchange is in flight");
    DSMOE_CHECK(static_cast<int>(send_bytes.size()) == size_ &&
                    static_cast<int>(recv_bytes.size()) == size_,
                "alltoallv: {} send and {} receive sizes for {} ranks", send_bytes.size(),
                recv_bytes.size(), size_);
    CommTimer timer(stats_);
    std::vector<int>& send_counts = pending_[0];
    std::vector<int>& send_offsets = pending_[1];
    std::vector<int>& recv_counts = pending_[2];
    std::vector<int>& recv_offsets = pending_[3];
    for (std::vector<int>& v : pending_) v.assign(size_, 0);
    int64_t send_at = 0, recv_at = 0;
    for (int r = 0; r < size_; r++) {
      send_counts[r] = checked_int(send_bytes[r], "alltoallv send size");
      recv_counts[r] = checked_int(recv_bytes[r], "alltoallv receive size");
      send_offsets[r] = checked_int(send_at, "alltoallv send offset");
      recv_offsets[r] = checked_int(recv_at, "alltoallv receive offset");
      send_at += send_bytes[r];
      recv_at += recv_bytes[r];
      if (r != rank_) stats_.bytes_sent += send_bytes[r], stats_.bytes_received += recv_bytes[r];
    }
    check_mpi(MPI_Ialltoallv(send, send_counts.data(), send_offsets.data(), MPI_BYTE, recv,
                             recv_counts.data(), recv_offsets.data(), MPI_BYTE, MPI_COMM_WORLD,
                             &request_),
              "MPI_Ialltoallv");
  }

  void wait_alltoallv() override {
    CommTimer timer(stats_);
    check_mpi(MPI_Wait(&request_, MPI_STATUS_IGNORE), "MPI_Wait (alltoallv)");
  }

  void alltoall(const int64_t* send, int64_t* recv) override {
    CommTimer timer(stats_);
    check_mpi(MPI_Alltoall(send, 1, MPI_INT64_T, recv, 1, MPI_INT64_T, MPI_COMM_WORLD),
              "MPI_Alltoall");
  }

  void allreduce_sum(float* data, int64_t n) override { ordered_allreduce(data, n); }
  void allreduce_sum(double* data, int64_t n) override { ordered_allreduce(data, n); }
  void allreduce_sum(int64_t* data, int64_t n) override { ordered_allreduce(data, n); }

  void broadcast(void* data, int64_t bytes, int root) override {
    CommTimer timer(stats_);
    check_mpi(MPI_Bcast(data, checked_int(bytes, "broadcast size"), MPI_BYTE, root, MPI_COMM_WORLD),
              "MPI_Bcast");
  }

  void gather(const void* send, int64_t bytes, void* recv, int root) override {
    CommTimer timer(stats_);
    const int count = checked_int(bytes, "gather size");
    check_mpi(MPI_Gather(send, count, MPI_BYTE, recv, count, MPI_BYTE, root, MPI_COMM_WORLD),
              "MPI_Gather");
  }

  void allgather(const void* send, int64_t bytes, void* recv) override {
    CommTimer timer(stats_);
    const int count = checked_int(bytes, "allgather size");
    check_mpi(MPI_Allgather(send, count, MPI_BYTE, recv, count, MPI_BYTE, MPI_COMM_WORLD),
              "MPI_Allgather");
  }

  void barrier() override {
    CommTimer timer(stats_);
    check_mpi(MPI_Barrier(MPI_COMM_WORLD), "MPI_Barrier");
  }

  [[noreturn]] void abort(int code) override {
    MPI_Abort(MPI_COMM_WORLD, code);
    std::exit(code);
  }

 private:
  // Ranks that share memory (MPI_COMM_TYPE_SHARED) form a node; nodes are numbered in the order
  // of their first rank.
  void find_nodes() {
    MPI_Comm node_comm;
    check_mpi(
        MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, rank_, MPI_INFO_NULL, &node_comm),
        "MPI_Comm_split_type");
    int leader = rank_;  // the node's lowest world rank
    MPI_Allreduce(MPI_IN_PLACE, &leader, 1, MPI_INT, MPI_MIN, node_comm);
    MPI_Comm_free(&node_comm);
    std::vector<int> leaders(size_);
    MPI_Allgather(&leader, 1, MPI_INT, leaders.data(), 1, MPI_INT, MPI_COMM_WORLD);
    node_of_rank_.assign(size_, 0);
    int n_nodes = 0;
    for (int r = 0; r < size_; r++)
      node_of_rank_[r] = leaders[r] == r ? n_nodes++ : node_of_rank_[leaders[r]];
  }

  // Reduce-scatter then all-gather, both by hand: rank q receives every rank's chunk q and adds
  // them in rank order, so the sum's order is fixed (MPI_Allreduce's is the library's choice).
  template <typename T>
  void ordered_allreduce(T* data, int64_t n) {
    if (size_ == 1 || n == 0) return;
    CommTimer timer(stats_);
    std::vector<int> counts(size_), offsets(size_);
    for (int r = 0; r < size_; r++) {
      const int64_t begin = n * r / size_, end = n * (r + 1) / size_;
      counts[r] = checked_int(end - begin, "all-reduce chunk");
      offsets[r] = checked_int(begin, "all-reduce offset");
    }
    const int mine = counts[rank_];
    std::vector<T> pieces(static_cast<size_t>(mine) * size_);  // [size, mine]: chunk from each
    std::vector<int> recv_counts(size_, mine), recv_offsets(size_);
    for (int r = 0; r < size_; r++) recv_offsets[r] = r * mine;
    const MPI_Datatype type = mpi_type<T>();
    check_mpi(MPI_Alltoallv(data, counts.data(), offsets.data(), type, pieces.data(),
                            recv_counts.data(), recv_offsets.data(), type, MPI_COMM_WORLD),
              "MPI_Alltoallv (all-reduce)");
    std::vector<T> sum(pieces.begin(), pieces.begin() + mine);
    for (int r = 1; r < size_; r++)
      for (int i = 0; i < mine; i++) sum[i] += pieces[static_cast<size_t>(r) * mine + i];
    check_mpi(MPI_Allgatherv(sum.data(), mine, type, data, counts.data(), offsets.data(), type,
                             MPI_COMM_WORLD),
              "MPI_Allgatherv (all-reduce)");
  }

  int rank_ = 0, size_ = 1;
  MPI_Request request_ = MPI_REQUEST_NULL;  // the alltoallv in flight
  std::vector<int> pending_[4];             // its counts and offsets (live until it completes)
};

}  // namespace

std::unique_ptr<Comm> make_mpi_world_comm() { return std::make_unique<MpiComm>(); }

}  // namespace dsmoe
