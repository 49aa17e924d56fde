#include "train/data.h"

#include <fstream>
#include <iterator>

#include "util/check.h"

namespace dsmoe {

std::vector<int64_t> read_byte_tokens(const std::vector<std::string>& paths) {
  DSMOE_CHECK(!paths.empty(), "no training data files given");
  std::vector<int64_t> tokens;
  for (const std::string& path : paths) {
    std::ifstream in(path, std::ios::binary);
    DSMOE_CHECK(in.good(), "{}: cannot open training data", path);
    const std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    DSMOE_CHECK(!bytes.empty(), "{}: training data file is empty", path);
    for (unsigned char byte : bytes) tokens.push_back(byte);
  }
  return tokens;
}

BatchSampler::BatchSampler(const std::vector<int64_t>* tokens, int64_t seq_len, uint64_t seed)
    : tokens_(tokens), seq_len_(seq_len), rng_(seed) {
  DSMOE_CHECK(static_cast<int64_t>(tokens->size()) >= seq_len,
              "training data holds {} tokens, fewer than one sequence of {}", tokens->size(),
              seq_len);
}

void BatchSampler::next(int64_t batch, int64_t* ids) {
  const uint64_t n_offsets = tokens_->size() - seq_len_ + 1;
  for (int64_t b = 0; b < batch; b++) {
    const int64_t offset = static_cast<int64_t>(rng_.next_u64() % n_offsets);
    std::copy(tokens_->begin() + offset, tokens_->begin() + offset + seq_len_, ids + b * seq_len_);
  }
}

}  // namespace dsmoe
