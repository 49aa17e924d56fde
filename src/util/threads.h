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

// libgomp spins up to ~3 ms (GOMP_SPINCOUNT 300000) at every barrier and between parallel
// regions before it sleeps; on cores shared with other busy processes that spinning takes their
// time slices and the stragglers' (a step can be 10x slower). libgomp reads OMP_WAIT_POLICY and
// GOMP_SPINCOUNT once, when it is loaded, before main(): so when neither is set, this sets
// OMP_WAIT_POLICY=passive and re-executes the program (/proc/self/exe, same argv) once; the
// variable being set is what stops a second re-execution. Call it first thing in main(). Returns
// (without re-executing) when the user set either variable (OMP_WAIT_POLICY=active: spin, for a
// dedicated machine) or exec fails.
void reexec_with_passive_wait_policy(char** argv);

}  // namespace dsmoe
