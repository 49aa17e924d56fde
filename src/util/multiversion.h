// multiversion.h: loops compiled twice, for x86-64 as a whole and for AVX-512 (x86-64-v4), the
// copy chosen at run time by cpu_allows_avx512() (util/cpu_cap.h), so that DSMOE_MAX_ISA=avx2
// runs the baseline copy as a CPU without AVX-512 would. (GCC's target_clones, used before, picks
// its copy when the program loads and cannot be steered.) The body is a plain function marked
// DSMOE_MULTIVERSION_BODY; a one-line wrapper calls multiversion<body>(args...):
//
//   DSMOE_MULTIVERSION_BODY void scale_body(float* x, float s, int64_t n) { ... }
//   void scale(float* x, float s, int64_t n) { multiversion<scale_body>(x, s, n); }
//
// The body is inlined into each copy and vectorized for that copy's instruction set. Sums keep
// their order in both (no reassociation), but the AVX-512 copy may contract a * b + c into one
// FMA (GCC's default -ffp-contract=fast), the baseline (no FMA) cannot: the copies can differ in
// the last bit of such expressions, as the AVX-512 and AVX2 Highway targets can.
#pragma once

#include <utility>

#include "util/cpu_cap.h"

#define DSMOE_MULTIVERSION_BODY [[gnu::always_inline]] inline

namespace dsmoe {

#if defined(__x86_64__) && defined(__GNUC__)
template <auto kBody, typename... Args>
[[gnu::target("arch=x86-64-v4")]] auto multiversion_avx512(Args&&... args) {
  return kBody(std::forward<Args>(args)...);
}
#endif

template <auto kBody, typename... Args>
auto multiversion(Args&&... args) {
#if defined(__x86_64__) && defined(__GNUC__)
  if (cpu_allows_avx512()) return multiversion_avx512<kBody>(std::forward<Args>(args)...);
#endif
  return kBody(std::forward<Args>(args)...);
}

}  // namespace dsmoe
