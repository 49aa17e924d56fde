// read_probe.h (cpu): streaming reads of a buffer in several access patterns, the machine's
// fastest way to read memory, which bounds every engine's decode (issue 16 part 2). Each pattern
// only loads (an XOR of every 64-bit word, kept so that nothing is optimized away), on all
// OpenMP threads. No SIMD types here.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace dsmoe::cpu {

// How the threads walk the buffer. Each thread takes a contiguous share; within it,
// `streams_per_thread` equal parts are read side by side (one vector of each per step), so
// a thread keeps that many sequential streams in flight for the hardware prefetchers. A
// software prefetch `prefetch_distance` bytes ahead of each stream (0: none), as `prefetcht0`
// or, with `non_temporal`, `prefetchnta` (fetched past the outer caches).
struct ReadPattern {
  int streams_per_thread = 1;
  int64_t prefetch_distance = 0;
  bool non_temporal = false;
};

std::string describe(const ReadPattern& pattern);  // "2 streams/thread, prefetchnta +1024 B"

// The patterns the probe tries by default (a short list that holds the winners seen on
// Zen 4/5 and Sapphire Rapids), and the wider search of `dsmoe bench --bandwidth-search`.
std::vector<ReadPattern> default_read_patterns();
std::vector<ReadPattern> search_read_patterns();

// Reads `bytes` bytes of `data` (64-byte aligned; bytes a multiple of 4096) once in `pattern`
// on every OpenMP thread; returns the XOR of all its 64-bit words.
uint64_t read_buffer(const uint8_t* data, int64_t bytes, const ReadPattern& pattern);

}  // namespace dsmoe::cpu
