// Tests that `dsmoe train` survives faults, run through the command line as a user would: SIGKILL
// at random moments and inside checkpoint writes (each resume ends at the same bytes as an
// uninterrupted run, and the published checkpoint always loads), a full disk or a real write
// error during a checkpoint, and non-finite losses and gradients (skipped, counted, and a run
// stopped after --max-nonfinite-steps in a row). Faults are injected with DSMOE_FAILPOINT
// (train/failpoint.h) and a file-size limit.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <sched.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <filesystem>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "model/config.h"
#include "model/transformer.h"
#include "test_util.h"
#include "tiny_models.h"
#include "train/checkpoint.h"
#include "util/check.h"
#include "util/threads.h"

extern char** environ;

namespace dsmoe {
namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;
using Clock = std::chrono::steady_clock;

const std::string kCli = DSMOE_CLI;

// How a child process ended.
struct Exit {
  bool killed = false;  // by SIGKILL
  int code = -1;        // exit status when not signalled
};

// `dsmoe train` as a child process, its stderr in a file.
class Child {
 public:
  struct Options {
    std::vector<std::string> env;    // extra NAME=VALUE entries
    std::vector<std::string> unset;  // NAMEs removed from the environment
    rlim_t max_file_bytes = RLIM_INFINITY;
    bool one_cpu = false;  // run on the first CPU of the affinity mask only
  };

  Child(const std::vector<std::string>& args, const std::string& stderr_path,
        const Options& options)
      : stderr_path_(stderr_path) {
    // Everything the child needs is built before fork: after it, only async-signal-safe calls.
    std::vector<std::string> env_strings(options.env);
    for (char** e = environ; *e != nullptr; e++) {
      const std::string entry(*e);
      bool removed = false;
      for (const std::string& name : options.unset) removed |= entry.rfind(name + "=", 0) == 0;
      if (!removed) env_strings.push_back(entry);
    }
    std::vector<char*> argv, envp;
    argv.push_back(const_cast<char*>(kCli.c_str()));
    for (const std::string& a : args) argv.push_back(const_cast<char*>(a.c_str()));
    argv.push_back(nullptr);
    for (std::string& e : env_strings) envp.push_back(e.data());
    envp.push_back(nullptr);
    cpu_set_t all, one_cpu_set;
    CPU_ZERO(&one_cpu_set);
    if (sched_getaffinity(0, sizeof all, &all) == 0)
      for (int cpu = 0; cpu < CPU_SETSIZE; cpu++)
        if (CPU_ISSET(cpu, &all)) {
          CPU_SET(cpu, &one_cpu_set);
          break;
        }
    write_text(stderr_path, "");  // empty before the parent looks at it
    pid_ = fork();
    if (pid_ == 0) {
      const int fd = ::open(stderr_path.c_str(), O_WRONLY | O_APPEND);
      if (fd < 0) _exit(127);
      dup2(fd, STDERR_FILENO);
      dup2(fd, STDOUT_FILENO);
      if (options.max_file_bytes != RLIM_INFINITY) {
        signal(SIGXFSZ, SIG_IGN);  // a write past the limit then fails with EFBIG
        const rlimit limit = {options.max_file_bytes, options.max_file_bytes};
        setrlimit(RLIMIT_FSIZE, &limit);
      }
      if (options.one_cpu) sched_setaffinity(0, sizeof one_cpu_set, &one_cpu_set);
      execve(kCli.c_str(), argv.data(), envp.data());
      _exit(127);
    }
    EXPECT_GT(pid_, 0) << "fork failed";
  }
  ~Child() {
    if (pid_ > 0 && !waited_) kill_now();
  }

  // Waits until the child exits by itself or `seconds` have passed (then kills it).
  Exit wait_or_kill_after(double seconds) {
    const auto deadline = Clock::now() + std::chrono::duration<double>(seconds);
    while (Clock::now() < deadline) {
      if (reap(WNOHANG)) return exit_;
      std::this_thread::sleep_for(std::chrono::milliseconds(2));
    }
    return kill_now();
  }

  // Waits until the child's stderr contains `text`: false if it exited first.
  bool wait_for_stderr(const std::string& text, double timeout_seconds) {
    const auto deadline = Clock::now() + std::chrono::duration<double>(timeout_seconds);
    while (Clock::now() < deadline) {
      if (stderr_text().find(text) != std::string::npos) return true;
      if (reap(WNOHANG)) return false;
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
    ADD_FAILURE() << "no '" << text << "' in the child's stderr: " << stderr_text();
    return false;
  }

  // Waits until the child's stderr contains `text`, then kills it; false if it exited first.
  bool kill_when_stderr_has(const std::string& text, double timeout_seconds) {
    if (!wait_for_stderr(text, timeout_seconds)) return false;
    return kill_now().killed;
  }

  Exit wait() {
    reap(0);
    return exit_;
  }

  std::string stderr_text() const { return read_bytes(stderr_path_); }

 private:
  Exit kill_now() {
    ::kill(pid_, SIGKILL);
    reap(0);
    return exit_;
  }

  bool reap(int flags) {
    if (waited_) return true;
    int status = 0;
    if (waitpid(pid_, &status, flags) != pid_) return false;
    waited_ = true;
    exit_.killed = WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL;
    exit_.code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
    return true;
  }

  std::string stderr_path_;
  pid_t pid_ = -1;
  bool waited_ = false;
  Exit exit_;
};

// The options of a child run with DSMOE_FAILPOINT=`value` (train/failpoint.h).
Child::Options failpoint(const std::string& value) {
  Child::Options options;
  options.env = {"DSMOE_FAILPOINT=" + value};
  return options;
}

// A tiny model and a data file in `dir`, and the arguments of a training run on them.
class TrainRun {
 public:
  TrainRun(const TempDir& dir, int64_t steps, int64_t save_every) : dir_(dir) {
    write_text(dir / "config.json", tiny_v3_json(/*n_layers=*/2, /*vocab=*/256).dump(2));
    std::string text;
    for (int i = 0; i < 60; i++) text += "the cat sat on the mat. one two three four five. ";
    write_text(dir / "data.txt", text);
    args_ = {"train",
             "--model-config",
             dir / "config.json",
             "--data",
             dir / "data.txt",
             "--steps",
             std::to_string(steps),
             "--save-every",
             std::to_string(save_every),
             "--batch-size",
             "4",
             "--seq-len",
             "32",
             "--lr",
             "0.01",
             "--warmup",
             "2",
             "--seed",
             "1",
             "--threads",
             "1",
             "--log-every",
             "1"};
  }

  // The arguments for output directory `out` (with --resume once it holds a checkpoint).
  std::vector<std::string> args(const std::string& out,
                                const std::vector<std::string>& extra = {}) const {
    std::vector<std::string> a = args_;
    a.insert(a.end(), {"--out", out});
    if (fs::exists(out + "/latest")) a.push_back("--resume");
    a.insert(a.end(), extra.begin(), extra.end());
    return a;
  }

  // Runs to completion; returns the exit and the stderr text.
  std::pair<Exit, std::string> run(const std::string& out, const Child::Options& options = {},
                                   const std::vector<std::string>& extra = {}) const {
    Child child(args(out, extra), dir_ / "stderr.txt", options);
    const Exit exit = child.wait();
    return {exit, child.stderr_text()};
  }

 private:
  const TempDir& dir_;
  std::vector<std::string> args_;
};

// Loads the newest published checkpoint of `out` the way --resume does; returns its step.
int64_t load_latest(const std::string& out) {
  const std::string latest = latest_checkpoint_dir(out);
  const ModelConfig config = load_model_config(latest);
  ModelWeights weights = random_weights(config, 0);
  const int64_t n_mtp = static_cast<int64_t>(weights.mtp.size());
  AdamWState adam = make_adamw_state(config, n_mtp);
  TrainerState state;
  load_checkpoint(out, config, weights, adam, state);
  return state.step;
}

std::string step_dir(const std::string& out, int64_t step) {
  return fmt::format("{}/step-{:08d}", out, step);
}

// The checkpoint files of step `step` in two runs are the same bytes.
void expect_same_checkpoint(const std::string& a, const std::string& b, int64_t step) {
  for (const char* file : {"model.safetensors", "optimizer.safetensors", "trainer_state.json"}) {
    SCOPED_TRACE(file);
    EXPECT_TRUE(read_bytes(step_dir(a, step) + "/" + file) ==
                read_bytes(step_dir(b, step) + "/" + file));
  }
  EXPECT_TRUE(read_bytes(a + "/model.safetensors") == read_bytes(b + "/model.safetensors"));
}

// The losses of metrics.jsonl, one per step.
std::vector<double> losses(const std::string& out) {
  std::vector<double> values;
  for (const json& line : read_metrics(out + "/metrics.jsonl"))
    values.push_back(line["loss"].is_number() ? line["loss"].get<double>() : NAN);
  return values;
}

// ---------------------------------------------------------------------------------------------
// Kills

// SIGKILL at seeded random moments (0 to 2 step times after the run printed step 1, 2 or 3
// after the checkpoint it resumed from, so that a kill costs a few steps and 13 of them fit in
// one run), and inside checkpoint writes (the writer pauses there on a
// DSMOE_FAILPOINT and the test kills it while it waits: before the optimizer file, before
// `latest` moves, and after it moved but before the top-level copy is replaced). Each time the
// published checkpoint loads, and the run resumed to the end equals an uninterrupted run.
TEST(Faults, KillsAtRandomMomentsAndInCheckpointWritesResumeBitExact) {
  TempDir dir;
  const int64_t steps = 60, save_every = 2;
  const TrainRun run(dir, steps, save_every);
  const std::string straight = dir / "straight", killed = dir / "killed";
  const auto start = Clock::now();
  const auto [straight_exit, straight_log] = run.run(straight);
  ASSERT_EQ(straight_exit.code, 0) << straight_log;
  const double run_seconds = std::chrono::duration<double>(Clock::now() - start).count();

  // Which of the kill attempts stop at a checkpoint pause, and before which file (of the next
  // checkpoint): inside the step directory, before `latest`, before the top-level copy.
  const std::vector<std::pair<int, std::string>> pauses = {
      {1, "optimizer.safetensors"}, {4, "latest"}, {7, "killed/model.safetensors"}};
  const double step_seconds = run_seconds / steps;  // with the start-up: an overestimate
  std::mt19937_64 rng(18);                          // the kill times are reproducible
  std::uniform_int_distribution<int64_t> steps_ahead(1, 3);
  std::uniform_real_distribution<double> into_step(0.0, 2.0);
  int n_random_kills = 0, n_pause_kills = 0;
  int64_t published = 0;
  std::string kill_log;
  for (int attempt = 0; attempt < 40 && n_random_kills + n_pause_kills < 13; attempt++) {
    SCOPED_TRACE(fmt::format("attempt {}", attempt));
    std::string pause_file;
    for (const auto& [index, file] : pauses)
      if (index == attempt) pause_file = file;
    const Child::Options options =
        pause_file.empty() ? Child::Options{} : failpoint("checkpoint_pause:60000:" + pause_file);
    Child child(run.args(killed), dir / "stderr.txt", options);
    if (!pause_file.empty()) {
      if (!child.kill_when_stderr_has("failpoint: checkpoint_pause", 60)) {
        ASSERT_EQ(child.wait().code, 0) << child.stderr_text();
        break;  // no checkpoint left to write
      }
      n_pause_kills++;
    } else {
      const int64_t target = published + steps_ahead(rng);
      const double delay = into_step(rng) * step_seconds;
      const bool reached = child.wait_for_stderr(fmt::format("step {}/{} ", target, steps), 60);
      const Exit exit = reached ? child.wait_or_kill_after(delay) : child.wait();
      if (!exit.killed) {
        ASSERT_EQ(exit.code, 0) << child.stderr_text();
        break;  // finished before the kill
      }
      n_random_kills++;
    }
    kill_log += pause_file.empty() ? " " : " pause:";
    if (!fs::exists(killed + "/latest")) {  // killed before the first checkpoint
      kill_log += "none";
      continue;
    }
    int64_t step = 0;
    ASSERT_NO_THROW(step = load_latest(killed)) << "after kill " << attempt;
    EXPECT_GE(step, published) << "the published checkpoint went backwards";
    published = step;
    kill_log += std::to_string(step);
  }
  std::printf("published step after each kill:%s\n", kill_log.c_str());
  EXPECT_GE(n_random_kills, 10);
  EXPECT_EQ(n_pause_kills, 3);
  const auto [final_exit, final_log] = run.run(killed);
  ASSERT_EQ(final_exit.code, 0) << final_log;
  expect_same_checkpoint(straight, killed, steps);
  EXPECT_EQ(losses(killed), losses(straight)) << "metrics.jsonl: one line per step, same losses";
}

// ---------------------------------------------------------------------------------------------
// Write errors

// A full disk while the step-4 checkpoint is written: one error naming the file and the
// checkpoint to resume; `latest` stays on step 2, which loads; the half-written step directory
// is gone; resuming (with space again) ends at the uninterrupted run's bytes.
TEST(Faults, DiskFullDuringACheckpointIsAClearErrorAndResumes) {
  TempDir dir;
  const TrainRun run(dir, 6, 2);
  const std::string straight = dir / "straight", full = dir / "full";
  ASSERT_EQ(run.run(straight).first.code, 0);
  const auto [exit, log] =
      run.run(full, failpoint("checkpoint_write:ENOSPC:step-00000004/optimizer.safetensors"));
  EXPECT_EQ(exit.code, 1) << log;
  EXPECT_NE(log.find("dsmoe: error: step 4: checkpoint not saved: " + step_dir(full, 4) +
                     "/optimizer.safetensors.tmp: write failed: No space left on device"),
            std::string::npos)
      << log;
  EXPECT_NE(log.find("the newest checkpoint is " + step_dir(full, 2)), std::string::npos) << log;
  EXPECT_EQ(load_latest(full), 2);
  EXPECT_FALSE(fs::exists(step_dir(full, 4)));
  const auto [resumed, resumed_log] = run.run(full);
  ASSERT_EQ(resumed.code, 0) << resumed_log;
  expect_same_checkpoint(straight, full, 6);
}

// A real write error from the kernel: the resumed run may not write files larger than 32 KiB
// (RLIMIT_FSIZE; the weights are larger, metrics and the trainer state smaller), so its first
// checkpoint fails with EFBIG inside the writer. The previous checkpoint stays published.
TEST(Faults, RealWriteErrorDuringACheckpointKeepsThePreviousOne) {
  TempDir dir;
  const TrainRun run(dir, 6, 2);
  const std::string straight = dir / "straight", limited = dir / "limited";
  ASSERT_EQ(run.run(straight).first.code, 0);
  {  // A checkpoint at step 2 only: killed before step 4 is published.
    Child child(run.args(limited), dir / "stderr.txt",
                failpoint("checkpoint_pause:60000:step-00000004/config.json"));
    ASSERT_TRUE(child.kill_when_stderr_has("failpoint: checkpoint_pause", 60));
  }
  ASSERT_EQ(load_latest(limited), 2);
  Child::Options options;
  options.max_file_bytes = 32 << 10;
  const auto [exit, log] = run.run(limited, options);
  EXPECT_EQ(exit.code, 1) << log;
  EXPECT_NE(log.find(step_dir(limited, 4) + "/model.safetensors.tmp: write failed: File too large"),
            std::string::npos)
      << log;
  EXPECT_EQ(load_latest(limited), 2);
  EXPECT_FALSE(fs::exists(step_dir(limited, 4)));
  const auto [resumed, resumed_log] = run.run(limited);
  ASSERT_EQ(resumed.code, 0) << resumed_log;
  expect_same_checkpoint(straight, limited, 6);
}

// metrics.jsonl that cannot grow (here: files over 2 KiB, a few steps' lines) stops the run with
// an error naming it, rather than training on without a record.
TEST(Faults, MetricsWriteErrorStopsTheRun) {
  TempDir dir;
  const TrainRun run(dir, 40, 0);
  const std::string out = dir / "run";
  Child::Options options;
  options.max_file_bytes = 2 << 10;
  const auto [exit, log] = run.run(out, options);
  EXPECT_EQ(exit.code, 1) << log;
  EXPECT_NE(log.find("dsmoe: error: " + out + "/metrics.jsonl: cannot write step"),
            std::string::npos)
      << log;
  EXPECT_NE(log.find("the newest checkpoint is none"), std::string::npos) << log;
}

// ---------------------------------------------------------------------------------------------
// Non-finite steps

// NaN losses at steps 3 and 4 and a NaN gradient at step 6: each step is skipped with a warning
// and counted (metrics.jsonl: skipped, skipped_steps); fewer than 5 in a row, so the run ends.
TEST(Faults, NonFiniteStepsAreSkippedAndCounted) {
  TempDir dir;
  const TrainRun run(dir, 8, 4);
  const std::string out = dir / "run";
  const auto [exit, log] = run.run(out, failpoint("nan_loss:3-4,nan_grad:6"));
  ASSERT_EQ(exit.code, 0) << log;
  EXPECT_NE(log.find("warning: step 3: non-finite loss nan"), std::string::npos) << log;
  EXPECT_NE(log.find("step skipped (2 in a row, 2 in all)"), std::string::npos) << log;
  EXPECT_NE(log.find("warning: step 6: non-finite loss"), std::string::npos) << log;
  const std::vector<json> lines = read_metrics(out + "/metrics.jsonl");
  ASSERT_EQ(lines.size(), 8u);
  const std::vector<int64_t> expected_counts = {0, 0, 1, 2, 2, 3, 3, 3};
  for (size_t i = 0; i < lines.size(); i++) {
    SCOPED_TRACE(lines[i].dump());
    EXPECT_EQ(lines[i]["skipped"].get<bool>(), i == 2 || i == 3 || i == 5);
    EXPECT_EQ(lines[i]["skipped_steps"].get<int64_t>(), expected_counts[i]);
  }
  const json state = json::parse(read_bytes(step_dir(out, 8) + "/trainer_state.json"));
  EXPECT_EQ(state["skipped_steps"], 3);
  EXPECT_EQ(state["nonfinite_in_a_row"], 0);
}

// NaN gradients from step 3 on: the 5th in a row (the default --max-nonfinite-steps) stops the
// run with a message naming the newest checkpoint; the count in a row survives a resume, and a
// smaller limit stops sooner.
TEST(Faults, NonFiniteStepsInARowStopTheRun) {
  TempDir dir;
  const TrainRun run(dir, 20, 4);
  const std::string out = dir / "run";
  const auto [exit, log] = run.run(out, failpoint("nan_grad:3-"));
  EXPECT_EQ(exit.code, 1) << log;
  EXPECT_NE(log.find("dsmoe: error: step 7: 5 non-finite steps in a row"), std::string::npos)
      << log;
  EXPECT_NE(log.find("the newest checkpoint is " + step_dir(out, 4)), std::string::npos) << log;
  EXPECT_EQ(read_metrics(out + "/metrics.jsonl").size(), 7u);
  // Step 4's checkpoint holds 2 in a row: with a limit of 3, the first skip after it stops.
  EXPECT_EQ(load_latest(out), 4);
  const auto [again, again_log] =
      run.run(out, failpoint("nan_grad:3-"), {"--max-nonfinite-steps", "3"});
  EXPECT_EQ(again.code, 1) << again_log;
  EXPECT_NE(again_log.find("step 5: 3 non-finite steps in a row"), std::string::npos) << again_log;
  // Without the fault it resumes and ends normally.
  const auto [resumed, resumed_log] = run.run(out);
  EXPECT_EQ(resumed.code, 0) << resumed_log;
}

TEST(Faults, MalformedFailpointIsAnErrorNamingTheVariable) {
  TempDir dir;
  const TrainRun run(dir, 2, 0);
  const auto [exit, log] = run.run(dir / "run", failpoint("checkpoint_write:EPERM"));
  EXPECT_EQ(exit.code, 1);
  EXPECT_NE(log.find("DSMOE_FAILPOINT: 'checkpoint_write:EPERM'"), std::string::npos) << log;
}

// ---------------------------------------------------------------------------------------------
// A shared machine

// How idle threads wait (util/threads.h): a short spin when the cores are free, else sleep.
TEST(Faults, WaitChoiceFollowsTheFreeCores) {
  const WaitChoice idle = choose_wait(0, 2, 2);
  EXPECT_STREQ(idle.variable, "GOMP_SPINCOUNT");
  EXPECT_STREQ(idle.value, kGompSpinCount);
  for (const WaitChoice busy : {choose_wait(1, 2, 2), choose_wait(3, 8, 10)}) {
    EXPECT_STREQ(busy.variable, "OMP_WAIT_POLICY");
    EXPECT_STREQ(busy.value, "passive");
  }
  EXPECT_STREQ(choose_wait(2, 8, 10).variable, "GOMP_SPINCOUNT");  // 2 cores left to the others
  // Two MPI ranks of 2 threads on 2 cores (what reexec_with_chosen_wait passes): sleep.
  EXPECT_STREQ(choose_wait(0, 2 * 2, 2).variable, "OMP_WAIT_POLICY");
}

// With no OpenMP variable set, dsmoe picks how its threads wait (it re-executes itself with the
// variable set: libgomp reads it before main); on a machine whose cores are all busy (here:
// spinning threads of this test) it sleeps: OMP_WAIT_POLICY=passive. A user's setting is kept.
// `dsmoe bench --json` reports what it ran with.
TEST(Faults, IdleThreadsSleepUnlessTheUserSaysOtherwise) {
  TempDir dir;
  const std::vector<std::string> args = {"bench",
                                         "--model",
                                         std::string(DSMOE_TEST_DATA) + "/v3-tiny/model",
                                         "--prompt",
                                         "4",
                                         "--decode",
                                         "2",
                                         "--reps",
                                         "1",
                                         "--json",
                                         "--no-roofline"};
  const std::vector<std::string> variables = {"OMP_WAIT_POLICY", "GOMP_SPINCOUNT"};
  struct Case {
    std::vector<std::string> env;
    std::string policy, spin_count;
  };
  const std::vector<Case> cases = {{{}, "passive", ""},
                                   {{"OMP_WAIT_POLICY=active"}, "active", ""},
                                   {{"GOMP_SPINCOUNT=1000"}, "", "1000"}};
  // Every core busy while the child starts (and runs: it reads the load once, at its start).
  std::atomic<bool> stop{false};
  std::vector<std::thread> busy;
  for (int i = 0; i < static_cast<int>(sysconf(_SC_NPROCESSORS_ONLN)); i++)
    busy.emplace_back([&] {
      while (!stop.load(std::memory_order_relaxed)) {
      }
    });
  for (const auto& [env, policy, spin_count] : cases) {
    SCOPED_TRACE(env.empty() ? "no variable" : env[0]);
    Child::Options options;
    options.env = env;
    options.unset = variables;
    Child child(args, dir / "out.txt", options);
    ASSERT_EQ(child.wait().code, 0) << child.stderr_text();
    EXPECT_NE(child.stderr_text().find("\"omp_wait_policy\":\"" + policy + "\""), std::string::npos)
        << child.stderr_text();
    EXPECT_NE(child.stderr_text().find("\"gomp_spincount\":\"" + spin_count + "\""),
              std::string::npos)
        << child.stderr_text();
  }
  stop = true;
  for (std::thread& t : busy) t.join();
}

// By default dsmoe runs as many threads as the cores it may use: here one (its affinity mask).
TEST(Faults, DefaultThreadsAreTheCoresTheProcessMayUse) {
  TempDir dir;
  Child::Options options;
  options.unset = {"OMP_NUM_THREADS"};
  options.one_cpu = true;
  Child child({"bench", "--model", std::string(DSMOE_TEST_DATA) + "/v3-tiny/model", "--prompt", "4",
               "--decode", "2", "--reps", "1", "--no-roofline"},
              dir / "out.txt", options);
  ASSERT_EQ(child.wait().code, 0) << child.stderr_text();
  EXPECT_NE(child.stderr_text().find(", 1 threads,"), std::string::npos) << child.stderr_text();
}

}  // namespace
}  // namespace dsmoe
