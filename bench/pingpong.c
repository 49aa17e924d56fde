/* bench/pingpong.c: point-to-point latency and bandwidth between ranks 0 and 1 (the classic
 * ping-pong: rank 0 sends N bytes, rank 1 sends them back; one-way time = round trip / 2), for
 * sizes 8 B .. 8 MiB (x4 each), best of REPS round trips after a warm-up. Prints one JSON object:
 * {"sizes": [...], "one_way_seconds": [...], "latency_s": one-way time of 8 bytes,
 *  "bandwidth_bytes_per_s": size / one-way time at the largest size}.
 * Built and run by bench/scale_out.sh (mpicc; mpirun -np 2 --mca btl self,vader or self,tcp). */
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum { kMinBytes = 8, kMaxBytes = 16 << 20, kWarmup = 10, kTag = 7 };

/* Best one-way seconds of `reps` round trips of `bytes` bytes. */
static double one_way_seconds(int rank, char* buffer, int bytes, int reps) {
  double best = 1e30;
  for (int i = -kWarmup; i < reps; i++) {
    MPI_Barrier(MPI_COMM_WORLD);
    const double start = MPI_Wtime();
    if (rank == 0) {
      MPI_Send(buffer, bytes, MPI_BYTE, 1, kTag, MPI_COMM_WORLD);
      MPI_Recv(buffer, bytes, MPI_BYTE, 1, kTag, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
    } else if (rank == 1) {
      MPI_Recv(buffer, bytes, MPI_BYTE, 0, kTag, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
      MPI_Send(buffer, bytes, MPI_BYTE, 0, kTag, MPI_COMM_WORLD);
    }
    const double seconds = (MPI_Wtime() - start) / 2;
    if (i >= 0 && seconds < best) best = seconds;
  }
  return best;
}

int main(int argc, char** argv) {
  MPI_Init(&argc, &argv);
  int rank = 0, size = 1;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Comm_size(MPI_COMM_WORLD, &size);
  if (size != 2) {
    if (rank == 0) fprintf(stderr, "pingpong: run with exactly 2 ranks (got %d)\n", size);
    MPI_Abort(MPI_COMM_WORLD, 2);
  }
  const int reps = argc > 1 ? atoi(argv[1]) : 50;
  char* buffer = malloc(kMaxBytes);
  memset(buffer, 1, kMaxBytes);
  if (rank == 0) printf("{\"sizes\": [");
  double latency = 0, last = 0;
  int last_bytes = kMinBytes;
  int first = 1;
  char times[4096] = "";
  for (int bytes = kMinBytes; bytes <= kMaxBytes; bytes *= 4) {
    /* As many round trips for the large sizes: on a busy machine most of them are interrupted,
     * and the best of few is not the link's speed. */
    last = one_way_seconds(rank, buffer, bytes, reps);
    if (bytes == kMinBytes) latency = last;
    last_bytes = bytes;
    if (rank == 0) {
      printf("%s%d", first ? "" : ", ", bytes);
      snprintf(times + strlen(times), sizeof(times) - strlen(times), "%s%.9g", first ? "" : ", ",
               last);
    }
    first = 0;
  }
  if (rank == 0)
    printf("], \"one_way_seconds\": [%s], \"latency_s\": %.9g, \"bandwidth_bytes_per_s\": %.6g}\n",
           times, latency, (double)last_bytes / last);
  free(buffer);
  MPI_Finalize();
  return 0;
}
