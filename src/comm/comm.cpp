#include "comm/comm.h"

#include <cstdlib>
#include <cstring>

#include "comm/mpi_comm.h"
#include "util/check.h"

namespace dsmoe {

void LocalComm::alltoallv(const void* send, const std::vector<int64_t>& send_bytes, void* recv,
                          const std::vector<int64_t>& recv_bytes) {
  DSMOE_CHECK(send_bytes.size() == 1 && recv_bytes.size() == 1 && send_bytes[0] == recv_bytes[0],
              "alltoallv on one rank: sends {} bytes to itself but expects {}",
              send_bytes.empty() ? -1 : send_bytes[0], recv_bytes.empty() ? -1 : recv_bytes[0]);
  if (send_bytes[0] > 0) std::memmove(recv, send, send_bytes[0]);
}

void LocalComm::broadcast(void*, int64_t, int root) {
  DSMOE_CHECK(root == 0, "broadcast from rank {} on one rank", root);
}

void LocalComm::gather(const void* send, int64_t bytes, void* recv, int root) {
  DSMOE_CHECK(root == 0, "gather to rank {} on one rank", root);
  if (bytes > 0) std::memmove(recv, send, bytes);
}

void LocalComm::allgather(const void* send, int64_t bytes, void* recv) {
  if (bytes > 0) std::memmove(recv, send, bytes);
}

void LocalComm::abort(int code) { std::exit(code); }

std::vector<char> gatherv(Comm& comm, const void* send, int64_t bytes, int root) {
  const int R = comm.size();
  std::vector<int64_t> sizes(R);
  comm.allgather(&bytes, sizeof(bytes), sizes.data());
  std::vector<int64_t> send_bytes(R, 0), recv_bytes(R, 0);
  send_bytes[root] = bytes;
  if (comm.rank() == root) recv_bytes = sizes;
  int64_t n_total = 0;
  for (int64_t n : recv_bytes) n_total += n;
  std::vector<char> out(n_total);
  comm.alltoallv(send, send_bytes, out.data(), recv_bytes);
  return out;
}

bool mpi_available() {
#ifdef DSMOE_HAVE_MPI
  return true;
#else
  return false;
#endif
}

namespace {

// Started by a launcher (OpenMPI's mpirun, or a PMI/PMIx one such as srun)?
bool launched_by_mpi() {
  for (const char* name : {"OMPI_COMM_WORLD_SIZE", "PMIX_RANK", "PMI_RANK"})
    if (std::getenv(name) != nullptr) return true;
  return false;
}

}  // namespace

Comm& world_comm() {
  static std::unique_ptr<Comm> comm = []() -> std::unique_ptr<Comm> {
#ifdef DSMOE_HAVE_MPI
    if (launched_by_mpi()) return make_mpi_world_comm();
#endif
    return std::make_unique<LocalComm>();
  }();
  return *comm;
}

}  // namespace dsmoe
