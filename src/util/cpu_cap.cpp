#include "util/cpu_cap.h"

#include <cstdlib>
#include <string_view>

#include "util/check.h"

namespace dsmoe {
namespace {

constexpr const char* kCapVariable = "DSMOE_MAX_ISA";

IsaCap parse_cap() {
  const char* value = std::getenv(kCapVariable);
  const std::string_view text = value != nullptr ? value : "";
  for (IsaCap cap : {IsaCap::kSse4, IsaCap::kAvx2, IsaCap::kAvx512, IsaCap::kNative})
    if (text == isa_cap_name(cap)) return cap;
  DSMOE_CHECK(text.empty(), "{}={}: expected native, avx512, avx2 or sse4", kCapVariable, text);
  return IsaCap::kNative;
}

#if defined(__x86_64__) && defined(__GNUC__)
bool cpu_has_avx2() { return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"); }
bool cpu_has_avx512() {
  return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
         __builtin_cpu_supports("avx512cd") && __builtin_cpu_supports("avx512dq") &&
         __builtin_cpu_supports("avx512vl");
}
bool cpu_has_avx512_bf16() { return __builtin_cpu_supports("avx512bf16"); }
bool cpu_has_avx512_vnni() { return __builtin_cpu_supports("avx512vnni"); }
bool cpu_has_avx512_gfni() {
  return __builtin_cpu_supports("gfni") && __builtin_cpu_supports("avx512vbmi");
}
#else
bool cpu_has_avx2() { return false; }
bool cpu_has_avx512() { return false; }
bool cpu_has_avx512_bf16() { return false; }
bool cpu_has_avx512_vnni() { return false; }
bool cpu_has_avx512_gfni() { return false; }
#endif

}  // namespace

IsaCap isa_cap() {
  static const IsaCap cap = parse_cap();
  return cap;
}

const char* isa_cap_name(IsaCap cap) {
  switch (cap) {
    case IsaCap::kSse4:
      return "sse4";
    case IsaCap::kAvx2:
      return "avx2";
    case IsaCap::kAvx512:
      return "avx512";
    case IsaCap::kNative:
      break;
  }
  return "native";
}

bool cpu_allows_avx2() {
  static const bool allowed = isa_cap() >= IsaCap::kAvx2 && cpu_has_avx2();
  return allowed;
}

bool cpu_allows_avx512() {
  static const bool allowed = isa_cap() >= IsaCap::kAvx512 && cpu_has_avx512();
  return allowed;
}

bool cpu_allows_avx512_bf16() {
  static const bool allowed = cpu_allows_avx512() && cpu_has_avx512_bf16();
  return allowed;
}

bool cpu_allows_avx512_vnni() {
  static const bool allowed = cpu_allows_avx512() && cpu_has_avx512_vnni();
  return allowed;
}

bool cpu_allows_avx512_gfni() {
  static const bool allowed = cpu_allows_avx512() && cpu_has_avx512_gfni();
  return allowed;
}

}  // namespace dsmoe
