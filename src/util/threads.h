// threads.h: one place that sets how many threads every parallel region (OpenMP, BLAS) uses, and
// how they wait: a machine shared with other work must not lose its cores to spinning threads.
#pragma once

namespace dsmoe {

// n <= 0: usable_cores() threads, unless OMP_NUM_THREADS says otherwise. n > 0 is honoured (with
// a warning when it exceeds the usable cores: threads then wait on each other's time slices).
void set_num_threads(int n);
int num_threads();

// The cores this process may run on: its CPU affinity mask, capped by a cgroup v2 CPU quota
// (cpu.max, as containers set it) rounded up.
int usable_cores();

// How idle OpenMP threads wait, chosen once at start. libgomp's default (GOMP_SPINCOUNT 300000
// pause loops: ~15 ms on a Xeon, whose pause takes ~140 cycles) spins at every barrier and
// between parallel regions; on cores shared with other busy processes that spinning takes the
// time slices that the straggler everyone waits for needs (decode 5-12x slower under `stress`,
// even with a short spin: bench/shared_load.sh). Sleeping at once (OMP_WAIT_POLICY=passive) costs
// a wake-up of ~90 us per parallel region instead, and a decoded token runs ~50 of them: on an
// idle machine a short spin decodes 1.15-1.5x and prefills 1.25-1.45x faster (bench/README.md).
// So when no other task is runnable beyond the cores this process leaves free, dsmoe spins
// kGompSpinCount loops (~0.5 ms), then sleeps; otherwise it sleeps at once.
inline constexpr const char* kGompSpinCount = "10000";

// The tasks that are runnable now besides this one (the median of a few samples of
// /proc/loadavg's running count, 2 ms apart); 0 when it cannot be read.
int other_runnable_tasks();

// The variable dsmoe sets when the user set neither: {"GOMP_SPINCOUNT", kGompSpinCount} when
// other_runnable + threads <= online_cpus, else {"OMP_WAIT_POLICY", "passive"}.
struct WaitChoice {
  const char* variable;
  const char* value;
};
WaitChoice choose_wait(int other_runnable, int threads, int online_cpus);

// The ranks an MPI launcher started on this machine (OpenMPI's OMPI_COMM_WORLD_LOCAL_SIZE,
// MPICH's MPI_LOCALNRANKS), 1 without one.
int local_mpi_ranks();

// libgomp reads OMP_WAIT_POLICY and GOMP_SPINCOUNT once, when it is loaded, before main(): so
// when neither is set, this sets the one choose_wait picks (for usable_cores() threads in each of
// local_mpi_ranks() processes: ranks that share the cores sleep) and
// re-executes the program (/proc/self/exe, same argv) once; the variable being set is what stops
// a second re-execution. Call it first thing in main(). Returns (without re-executing) when the
// user set either variable (OMP_WAIT_POLICY=passive: always sleep, =active: always spin) or exec
// fails. A long-running process (serve, train) keeps the choice made at its start.
void reexec_with_chosen_wait(char** argv);

}  // namespace dsmoe
