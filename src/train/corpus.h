// corpus.h: a generated, license-clean training corpus that mixes distinct kinds of text
// (prose, arithmetic, code, records, DNA), so that expert specialisation can be seen.
#pragma once
#include <cstdint>
#include <string>

namespace dsmoe {

// About `bytes` bytes of lines, each of one kind, in a seeded random order.
std::string generate_corpus(int64_t bytes, uint64_t seed);

}  // namespace dsmoe
