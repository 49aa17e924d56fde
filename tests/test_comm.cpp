// test_comm.cpp: the Comm collectives. Run alone they test LocalComm; under mpirun (CTest's
// mpi_comm_np*) the same tests run on MPI's world communicator with every rank checking.
#include <gtest/gtest.h>

#include <cstring>
#include <numeric>
#include <vector>

#include "comm/comm.h"
#include "test_util.h"
#include "util/check.h"

namespace dsmoe {
namespace {

// Rank r sends (r + 1) * (q + 1) int32 values r * 100 + q + i to rank q.
TEST(Comm, AlltoallvSendsEachRankItsPiece) {
  Comm& comm = world_comm();
  const int R = comm.size(), me = comm.rank();
  std::vector<int64_t> send_bytes(R), recv_bytes(R);
  std::vector<int32_t> send;
  for (int q = 0; q < R; q++) {
    const int n = (me + 1) * (q + 1);
    for (int i = 0; i < n; i++) send.push_back(me * 100 + q + i);
    send_bytes[q] = n * static_cast<int64_t>(sizeof(int32_t));
  }
  // The sizes travel first, as the MoE dispatch does.
  std::vector<int64_t> n_send(R), n_recv(R);
  for (int q = 0; q < R; q++) n_send[q] = send_bytes[q];
  comm.alltoall(n_send.data(), n_recv.data());
  for (int r = 0; r < R; r++) {
    EXPECT_EQ(n_recv[r], (r + 1) * (me + 1) * static_cast<int64_t>(sizeof(int32_t)));
    recv_bytes[r] = n_recv[r];
  }
  std::vector<int32_t> recv(std::accumulate(recv_bytes.begin(), recv_bytes.end(), int64_t{0}) /
                            sizeof(int32_t));
  comm.alltoallv(send.data(), send_bytes, recv.data(), recv_bytes);
  size_t at = 0;
  for (int r = 0; r < R; r++)
    for (int i = 0; i < (r + 1) * (me + 1); i++) EXPECT_EQ(recv[at++], r * 100 + me + i);
  EXPECT_EQ(at, recv.size());
}

TEST(Comm, AlltoallvWithEmptyPieces) {
  Comm& comm = world_comm();
  const int R = comm.size();
  std::vector<int64_t> zero(R, 0);
  char byte = 0;
  comm.alltoallv(&byte, zero, &byte, zero);
  SUCCEED();
}

TEST(Comm, AllreduceSumsInRankOrderAndRepeats) {
  Comm& comm = world_comm();
  const int R = comm.size(), me = comm.rank();
  // Values whose float sum depends on the order: the rank-order sum is the expected one.
  const int64_t n = 37;  // not a multiple of R: uneven chunks
  std::vector<float> mine(n), expected(n, 0.0f);
  for (int64_t i = 0; i < n; i++) {
    for (int r = 0; r < R; r++) {
      const float value = (r % 2 == 0 ? 1e8f : 1.0f) * static_cast<float>(i + 1) / (r + 3);
      if (r == me) mine[i] = value;
      expected[i] = r == 0 ? value : expected[i] + value;
    }
  }
  std::vector<float> first = mine, second = mine;
  comm.allreduce_sum(first.data(), n);
  comm.allreduce_sum(second.data(), n);
  for (int64_t i = 0; i < n; i++) {
    EXPECT_EQ(first[i], expected[i]) << i;
    EXPECT_EQ(std::memcmp(&first[i], &second[i], sizeof(float)), 0) << i;
  }
  std::vector<double> d(3, static_cast<double>(me + 1));
  std::vector<int64_t> counts(2, me);
  comm.allreduce_sum(d.data(), 3);
  comm.allreduce_sum(counts.data(), 2);
  EXPECT_EQ(d[2], R * (R + 1) / 2.0);
  EXPECT_EQ(counts[1], static_cast<int64_t>(R) * (R - 1) / 2);
}

TEST(Comm, BroadcastGatherAllgather) {
  Comm& comm = world_comm();
  const int R = comm.size(), me = comm.rank();
  int64_t value = me == 0 ? 42 : -1;
  comm.broadcast(&value, sizeof(value), 0);
  EXPECT_EQ(value, 42);
  const int64_t mine = 10 * me + 1;
  std::vector<int64_t> gathered(R, -1), all(R, -1);
  comm.gather(&mine, sizeof(mine), gathered.data(), 0);
  comm.allgather(&mine, sizeof(mine), all.data());
  for (int r = 0; r < R; r++) {
    if (me == 0) {
      EXPECT_EQ(gathered[r], 10 * r + 1);
    }
    EXPECT_EQ(all[r], 10 * r + 1);
  }
  comm.barrier();
}

TEST(Comm, NodesNumberedInRankOrder) {
  Comm& comm = world_comm();
  const std::vector<int>& node = comm.node_of_rank();
  ASSERT_EQ(static_cast<int>(node.size()), comm.size());
  EXPECT_EQ(node[0], 0);
  for (size_t r = 1; r < node.size(); r++) EXPECT_LE(node[r], node[r - 1] + 1);
  EXPECT_EQ(comm.n_nodes(), node.back() + 1);
}

TEST(Comm, LocalCommIsOneRank) {
  LocalComm comm;
  EXPECT_EQ(comm.rank(), 0);
  EXPECT_EQ(comm.size(), 1);
  EXPECT_EQ(comm.n_nodes(), 1);
  std::vector<float> data = {1.5f, 2.5f};
  comm.allreduce_sum(data.data(), 2);
  EXPECT_EQ(data[1], 2.5f);
  const char text[] = "abc";
  char copy[4] = {};
  comm.alltoallv(text, {4}, copy, {4});
  EXPECT_STREQ(copy, "abc");
  const std::vector<int64_t> four = {4}, three = {3};
  EXPECT_THROW(comm.alltoallv(text, four, copy, three), Error);
  EXPECT_THROW(comm.broadcast(copy, 4, 1), Error);
}

}  // namespace
}  // namespace dsmoe
