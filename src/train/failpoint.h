// failpoint.h: test-only fault injection for training, read from the DSMOE_FAILPOINT environment
// variable (unset in normal use: then every hook below does nothing).
//
// DSMOE_FAILPOINT holds comma-separated points:
//   checkpoint_write:ERRNO[:FILE]  writing a checkpoint file fails as a full disk would (ERRNO:
//                                  ENOSPC, EIO or EDQUOT); FILE, a path suffix such as
//                                  "step-00000004/optimizer.safetensors", limits it to that file
//   checkpoint_pause:MS[:FILE]     before writing FILE (default "latest": the step directory is
//                                  complete and not yet published) print "failpoint:
//                                  checkpoint_pause <path>" to stderr and sleep MS milliseconds,
//                                  so that a test can kill the process there for certain
//   nan_loss:FIRST[-LAST]          the loss of steps FIRST..LAST (1-based; "FIRST-": to the end)
//   nan_grad:FIRST[-LAST]          is NaN, or one gradient element of theirs is
#pragma once
#include <cstdint>
#include <string>

namespace dsmoe {

struct StepRange {
  int64_t first = 0, last = -1;  // empty by default
  bool contains(int64_t step) const { return step >= first && step <= last; }
};

struct Failpoints {
  int write_errno = 0;  // 0: no injected write error
  std::string write_file;
  int64_t pause_ms = 0;  // 0: no pause
  std::string pause_file = "latest";
  StepRange nan_loss, nan_grad;
};

// The points in DSMOE_FAILPOINT; a malformed value is an Error naming the variable.
Failpoints read_failpoints();

// The hook before each checkpoint file is written: fails or pauses as `points` says for `path`.
void failpoint_before_write(const Failpoints& points, const std::string& path);

}  // namespace dsmoe
