#include "util/threads.h"

#include <omp.h>
#include <sched.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <fstream>
#include <string>
#include <vector>

#include "util/log.h"

namespace dsmoe {
namespace {

// The CPU quota of this process's cgroup (v2 cpu.max: "QUOTA PERIOD" or "max PERIOD") in cores,
// rounded up; 0 when there is none or it cannot be read.
int cgroup_quota_cores() {
  std::ifstream self("/proc/self/cgroup");
  std::string line, group;
  while (std::getline(self, line))
    if (line.rfind("0::", 0) == 0) group = line.substr(3);
  for (const std::string& dir : {"/sys/fs/cgroup" + group, std::string("/sys/fs/cgroup")}) {
    std::ifstream in(dir + "/cpu.max");
    std::string quota;
    double period = 0;
    if (!(in >> quota >> period)) continue;
    if (quota == "max" || period <= 0) return 0;
    return std::max(1, static_cast<int>(std::ceil(std::stod(quota) / period)));
  }
  return 0;
}

}  // namespace

int usable_cores() {
  cpu_set_t set;
  int cores = sched_getaffinity(0, sizeof set, &set) == 0 ? CPU_COUNT(&set) : 0;
  if (cores <= 0) cores = std::max(1L, sysconf(_SC_NPROCESSORS_ONLN));
  const int quota = cgroup_quota_cores();
  return quota > 0 ? std::min(cores, quota) : cores;
}

void set_num_threads(int n) {
  if (n > 0) {
    const int cores = usable_cores();
    if (n > cores)
      log_info("warning: {} threads on {} usable cores: they will wait for each other", n, cores);
    omp_set_num_threads(n);
  } else if (std::getenv("OMP_NUM_THREADS") == nullptr) {
    omp_set_num_threads(usable_cores());
  }
}

int num_threads() { return omp_get_max_threads(); }

int other_runnable_tasks() {
  constexpr int kSamples = 5;
  std::vector<int> running;
  for (int i = 0; i < kSamples; i++) {
    if (i > 0) usleep(2000);
    std::ifstream in("/proc/loadavg");
    std::string load1, load5, load15, tasks;  // "0.12 0.30 0.25 2/180 12345"
    if (!(in >> load1 >> load5 >> load15 >> tasks)) return 0;
    running.push_back(std::atoi(tasks.c_str()));
  }
  std::sort(running.begin(), running.end());
  return std::max(0, running[kSamples / 2] - 1);  // (this process's reading thread is running)
}

WaitChoice choose_wait(int other_runnable, int threads, int online_cpus) {
  if (other_runnable + threads <= online_cpus) return {"GOMP_SPINCOUNT", kGompSpinCount};
  return {"OMP_WAIT_POLICY", "passive"};
}

int local_mpi_ranks() {
  for (const char* name : {"OMPI_COMM_WORLD_LOCAL_SIZE", "MPI_LOCALNRANKS"}) {
    const char* value = std::getenv(name);
    if (value != nullptr && std::atoi(value) > 0) return std::atoi(value);
  }
  return 1;
}

void reexec_with_chosen_wait(char** argv) {
  if (std::getenv("OMP_WAIT_POLICY") != nullptr || std::getenv("GOMP_SPINCOUNT") != nullptr) return;
  const auto online = static_cast<int>(std::max(1L, sysconf(_SC_NPROCESSORS_ONLN)));
  // (under mpirun the ranks on this machine start together: count all their threads)
  const WaitChoice choice =
      choose_wait(other_runnable_tasks(), usable_cores() * local_mpi_ranks(), online);
  if (setenv(choice.variable, choice.value, 0) != 0) return;
  execv("/proc/self/exe", argv);
  unsetenv(choice.variable);  // exec failed: carry on with libgomp's defaults
}

}  // namespace dsmoe
