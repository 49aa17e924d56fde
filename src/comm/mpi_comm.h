// mpi_comm.h: the MPI communicator's factory (mpi_comm.cpp, built only with DSMOE_MPI; the one
// file that includes mpi.h).
#pragma once
#include <memory>

#include "comm/comm.h"

namespace dsmoe {

// MPI_Init (threads: funneled), MPI_COMM_WORLD and its nodes; MPI_Finalize when destroyed.
std::unique_ptr<Comm> make_mpi_world_comm();

}  // namespace dsmoe
