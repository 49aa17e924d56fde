// isa_dispatch.h: DSMOE_MAX_ISA (util/cpu_cap.h) applied to Highway's run-time dispatch.
#pragma once

#include <cstdint>

namespace dsmoe::cpu {

// Disables the Highway targets above the cap (hwy::DisableTargets) the first time it is called
// and returns that mask (0 without a cap). Every file that dispatches with HWY_DYNAMIC_DISPATCH
// calls it from a static initializer, so the cap holds before the first kernel runs and before
// a test lists hwy::SupportedTargets().
int64_t apply_isa_cap();

// hwy::SupportedTargets() (the cap applied), for code that lists targets. Highway 1.0.3's
// SupportedTargets(), called directly, also sets the dispatch to every target the CPU has,
// the disabled ones included, until the next DisableTargets or SetSupportedTargetsForTest;
// this sets it back to what it returns.
int64_t supported_targets();

}  // namespace dsmoe::cpu
