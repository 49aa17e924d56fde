// data.h: training data: text files tokenized byte-level (ids 0..255 are the bytes, the
// default tokenizer), and a seeded sampler of [batch, seq_len] windows whose state checkpoints.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "tensor/random.h"

namespace dsmoe {

// Concatenates the bytes of every file (a file that is empty or unreadable is an error naming it).
std::vector<int64_t> read_byte_tokens(const std::vector<std::string>& paths);

// Draws windows of seq_len tokens at uniformly random offsets.
class BatchSampler {
 public:
  BatchSampler(const std::vector<int64_t>* tokens, int64_t seq_len, uint64_t seed);
  // ids [batch, seq_len]
  void next(int64_t batch, int64_t* ids);
  Rng& rng() { return rng_; }

 private:
  const std::vector<int64_t>* tokens_;
  int64_t seq_len_;
  Rng rng_;
};

}  // namespace dsmoe
