#include "kernels/cpu/isa_dispatch.h"

#include "hwy/targets.h"
#include "util/cpu_cap.h"

namespace dsmoe::cpu {
namespace {

// Highway numbers its x86 targets best first (lower bit = wider), so every target above X is a
// bit below X's: AVX3, AVX3_DL (and the AVX3_ZEN4 / AVX3_SPR of later Highway versions) sit
// below AVX2.
int64_t targets_above_cap(IsaCap cap) {
#if HWY_ARCH_X86
  if (cap == IsaCap::kAvx2) return HWY_AVX2 - 1;
  if (cap == IsaCap::kSse4) return HWY_SSE4 - 1;
#else
  (void)cap;
#endif
  return 0;
}

int64_t disable_targets_above_cap() {
  const int64_t disabled = targets_above_cap(isa_cap());
  if (disabled != 0) hwy::DisableTargets(disabled);
  return disabled;
}

}  // namespace

int64_t apply_isa_cap() {
  static const int64_t disabled = disable_targets_above_cap();
  return disabled;
}

int64_t supported_targets() {
  apply_isa_cap();
  const int64_t targets = hwy::SupportedTargets();
  hwy::GetChosenTarget().Update(targets);
  return targets;
}

}  // namespace dsmoe::cpu
