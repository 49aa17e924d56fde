// The bandwidth probe's streaming-read loops (kernels/cpu/read_probe.h): every pattern reads
// every 64-bit word of the buffer exactly once (its XOR checksum equals a scalar loop's), for
// 1 and 2 threads and sizes whose shares do not split evenly into streams; and the probe
// (runtime/bench.h) reports every way it tried.
#include <gtest/gtest.h>
#include <omp.h>

#include <cstdint>
#include <cstring>
#include <random>
#include <vector>

#include "kernels/cpu/read_probe.h"
#include "runtime/bench.h"

namespace dsmoe {
namespace {

TEST(ReadProbe, EveryPatternReadsEveryWordOnce) {
  constexpr int64_t kPage = 4096;
  std::vector<uint64_t> words((kPage * 77 + 64) / sizeof(uint64_t));
  std::mt19937_64 rng(7);
  for (uint64_t& w : words) w = rng();
  // A 64-byte aligned start inside the vector.
  auto* base = reinterpret_cast<uint8_t*>(words.data());
  const int64_t skip = static_cast<int64_t>((64 - reinterpret_cast<uintptr_t>(base) % 64) % 64);
  for (int64_t pages : {1, 3, 16, 77}) {
    const uint8_t* data = base + skip;
    uint64_t expected = 0;
    for (int64_t i = 0; i < pages * kPage / 8; i++) {
      uint64_t w;
      std::memcpy(&w, data + 8 * i, 8);
      expected ^= w;
    }
    for (int threads : {1, 2}) {
      omp_set_num_threads(threads);
      for (const cpu::ReadPattern& pattern : cpu::search_read_patterns())
        EXPECT_EQ(cpu::read_buffer(data, pages * kPage, pattern), expected)
            << pages << " pages, " << threads << " threads, " << cpu::describe(pattern);
    }
  }
  omp_set_num_threads(1);
}

TEST(ReadProbe, TheProbeReportsEveryWay) {
  BandwidthProbe probe(int64_t{8} << 20);
  const double fastest = probe.measure(1);
  ASSERT_EQ(probe.ways().size(), 3 + cpu::default_read_patterns().size());
  double best = 0;
  for (const BandwidthProbe::Way& way : probe.ways()) {
    EXPECT_GT(way.best_bytes_per_s, 0) << way.name;
    best = std::max(best, way.best_bytes_per_s);
  }
  EXPECT_EQ(fastest, best);
}

}  // namespace
}  // namespace dsmoe
