// read_probe.cpp (cpu): the streaming read loops of read_probe.h, compiled per x86 target
// (Highway foreach_target) like peak_probe.cpp. One loop per stream count (a template), so
// that each stream's pointer and the four accumulators live in registers.

// Every kernel file asks for AVX3_DL (Highway 1.0.3 leaves it out unless asked): the dispatch
// picks one target for all files, and a file without it would have no entry for that target.
// clang-format off
#ifndef HWY_WANT_AVX3_DL
#define HWY_WANT_AVX3_DL
#endif
#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "kernels/cpu/read_probe.cpp"
#include "hwy/foreach_target.h"  // IWYU pragma: keep
#include "hwy/highway.h"
// clang-format on

#include "kernels/cpu/read_probe.h"

#include <fmt/format.h>
#include <omp.h>

#include <cstdint>

#include "kernels/cpu/isa_dispatch.h"

HWY_BEFORE_NAMESPACE();
namespace dsmoe::cpu {
namespace HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;

// Reads [begin, begin + bytes) as kStreams side-by-side parts, four vectors of each per step.
template <int kStreams>
uint64_t ReadStreams(const uint8_t* begin, int64_t bytes, int64_t prefetch_distance,
                     bool non_temporal) {
  const hn::ScalableTag<uint64_t> d;
  const int64_t vector_bytes = static_cast<int64_t>(hn::Lanes(d) * sizeof(uint64_t));
  const int64_t step = 4 * vector_bytes;
  const int64_t part = bytes / kStreams / step * step;
  auto acc0 = hn::Zero(d), acc1 = hn::Zero(d), acc2 = hn::Zero(d), acc3 = hn::Zero(d);
  for (int64_t offset = 0; offset < part; offset += step) {
    for (int s = 0; s < kStreams; s++) {
      const uint8_t* p = begin + s * part + offset;
      if (prefetch_distance > 0) {
        if (non_temporal)
          __builtin_prefetch(p + prefetch_distance, 0, 0);
        else
          __builtin_prefetch(p + prefetch_distance, 0, 3);
      }
      const auto* words = reinterpret_cast<const uint64_t*>(p);
      const size_t lanes = hn::Lanes(d);
      acc0 = hn::Xor(acc0, hn::Load(d, words));
      acc1 = hn::Xor(acc1, hn::Load(d, words + lanes));
      acc2 = hn::Xor(acc2, hn::Load(d, words + 2 * lanes));
      acc3 = hn::Xor(acc3, hn::Load(d, words + 3 * lanes));
    }
  }
  const auto sum = hn::Xor(hn::Xor(acc0, acc1), hn::Xor(acc2, acc3));
  uint64_t result = 0;
  for (size_t i = 0; i < hn::Lanes(d); i++) result ^= hn::ExtractLane(sum, i);
  // What the parts left over (bytes not a multiple of kStreams steps), word by word.
  const auto* tail = reinterpret_cast<const uint64_t*>(begin + kStreams * part);
  const int64_t tail_words = (bytes - kStreams * part) / static_cast<int64_t>(sizeof(uint64_t));
  for (int64_t i = 0; i < tail_words; i++) result ^= tail[i];
  return result;
}

uint64_t ReadShare(const uint8_t* begin, int64_t bytes, int streams, int64_t prefetch_distance,
                   bool non_temporal) {
  switch (streams) {
    case 1:
      return ReadStreams<1>(begin, bytes, prefetch_distance, non_temporal);
    case 2:
      return ReadStreams<2>(begin, bytes, prefetch_distance, non_temporal);
    case 4:
      return ReadStreams<4>(begin, bytes, prefetch_distance, non_temporal);
    case 8:
      return ReadStreams<8>(begin, bytes, prefetch_distance, non_temporal);
    default:
      return ReadStreams<16>(begin, bytes, prefetch_distance, non_temporal);
  }
}

}  // namespace HWY_NAMESPACE
}  // namespace dsmoe::cpu
HWY_AFTER_NAMESPACE();

#if HWY_ONCE
namespace dsmoe::cpu {

HWY_EXPORT(ReadShare);
namespace {
[[maybe_unused]] const int64_t kIsaCapApplied = apply_isa_cap();
}  // namespace

std::string describe(const ReadPattern& pattern) {
  std::string text = fmt::format("{} stream{}/thread", pattern.streams_per_thread,
                                 pattern.streams_per_thread == 1 ? "" : "s");
  if (pattern.prefetch_distance > 0)
    text += fmt::format(", {} +{} B", pattern.non_temporal ? "prefetchnta" : "prefetcht0",
                        pattern.prefetch_distance);
  return text;
}

std::vector<ReadPattern> default_read_patterns() {
  return {{1, 0, false}, {2, 0, false}, {1, 1024, false}, {2, 1024, false}, {2, 256, true}};
}

std::vector<ReadPattern> search_read_patterns() {
  std::vector<ReadPattern> patterns;
  for (int streams : {1, 2, 4, 8, 16}) {
    patterns.push_back({streams, 0, false});
    for (int64_t distance : {256, 1024, 4096}) {
      patterns.push_back({streams, distance, false});
      patterns.push_back({streams, distance, true});
    }
  }
  return patterns;
}

uint64_t read_buffer(const uint8_t* data, int64_t bytes, const ReadPattern& pattern) {
  constexpr int64_t kPage = 4096;
  uint64_t result = 0;
#pragma omp parallel reduction(^ : result)
  {
    const int64_t n_threads = omp_get_num_threads(), thread = omp_get_thread_num();
    const int64_t pages = bytes / kPage;
    const int64_t first = pages * thread / n_threads, last = pages * (thread + 1) / n_threads;
    result ^= HWY_DYNAMIC_DISPATCH(ReadShare)(data + first * kPage, (last - first) * kPage,
                                              pattern.streams_per_thread, pattern.prefetch_distance,
                                              pattern.non_temporal);
  }
  return result;
}

}  // namespace dsmoe::cpu
#endif  // HWY_ONCE
