// bpe.h: tokenizers' BPE model over the byte-level alphabet: a vocabulary of byte-level strings, a
// list of merges whose position is their rank, and the merge loop that turns one piece into ids.
#pragma once
#include <array>
#include <cstdint>
#include <nlohmann/json_fwd.hpp>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

namespace dsmoe::text {

// Heterogeneous lookup (string_view keys) for maps keyed by std::string.
struct StringHash {
  using is_transparent = void;
  size_t operator()(std::string_view s) const { return std::hash<std::string_view>{}(s); }
};
using StringIdMap = std::unordered_map<std::string, int32_t, StringHash, std::equal_to<>>;

// (left id, right id) -> (rank, merged id), open addressing.
class MergeTable {
 public:
  struct Merge {
    int32_t rank;
    int32_t merged_id;
  };
  void reserve(size_t n_merges);
  // A pair listed twice keeps its last rank, as tokenizers' HashMap collect does.
  void insert(int32_t left, int32_t right, Merge merge);
  const Merge* find(int32_t left, int32_t right) const {
    const uint64_t key = pack(left, right);
    for (size_t slot = hash(key);; slot = (slot + 1) & mask_) {
      const Slot& entry = slots_[slot];
      if (entry.key == key) return &entry.merge;
      if (entry.key == kEmpty) return nullptr;
    }
  }

 private:
  struct Slot {
    uint64_t key;
    Merge merge;
  };
  static constexpr uint64_t kEmpty = ~uint64_t{0};
  static uint64_t pack(int32_t left, int32_t right) {
    return (static_cast<uint64_t>(static_cast<uint32_t>(left)) << 32) |
           static_cast<uint32_t>(right);
  }
  size_t hash(uint64_t key) const { return (key * 0x9E3779B97F4A7C15ull) >> shift_; }
  std::vector<Slot> slots_ = std::vector<Slot>(1, Slot{kEmpty, {}});
  size_t mask_ = 0;
  int shift_ = 63;
};

// token string -> id over the strings of a by-id table, open addressing (loading looks up three
// strings per merge: a flat table keeps that well under a second for 128k tokens).
class TokenTable {
 public:
  // tokens[id] ("" for an id without a token); a string listed twice keeps its last id.
  void build(const std::vector<std::string>* tokens);
  std::optional<int32_t> find(std::string_view token) const;

 private:
  struct Slot {
    uint32_t tag;  // the hash's low bits, to skip most string compares
    int32_t id;    // -1: empty
  };
  static uint64_t hash(std::string_view token) { return std::hash<std::string_view>{}(token); }
  const std::vector<std::string>* tokens_ = nullptr;
  std::vector<Slot> slots_;
  size_t mask_ = 0;
};

// What tokenizer.json's model.vocab and model.merges hold, flat (read without building a DOM).
struct BpeData {
  std::vector<std::pair<std::string, int64_t>> vocab;       // (token, id), in file order
  std::vector<std::pair<std::string, std::string>> merges;  // (left, right), in rank order
};

class Bpe {
 public:
  // `model` is tokenizer.json's "model" (type BPE) with its vocab and merges; `where` names the
  // file for messages.
  static Bpe from_json(const nlohmann::json& model, const std::string& where);
  // The same from vocab and merges read apart (BpeData); their fields in `model` are ignored.
  static Bpe build(BpeData data, const nlohmann::json& model, const std::string& where);

  Bpe() = default;
  Bpe(Bpe&& other) noexcept { *this = std::move(other); }
  Bpe& operator=(Bpe&& other) noexcept;

  // Appends the ids of one piece (raw bytes, not byte-level text) to ids.
  void encode_piece(std::string_view piece, std::vector<int32_t>& ids) const;

  // The merge loops, on symbol ids, in place: the quadratic scan for short pieces, the heap for
  // long ones. Both apply the lowest-rank pair first, the leftmost among equals (public for tests).
  void merge_by_scan(std::vector<int32_t>& symbols) const;
  void merge_by_heap(std::vector<int32_t>& symbols) const;

  std::optional<int32_t> token_to_id(std::string_view token) const;
  // The vocabulary strings by id ("" where the vocabulary has no such id).
  const std::vector<std::string>& tokens() const { return tokens_; }

 private:
  // Up to this many bytes a piece is merged by scan, beyond it by heap.
  static constexpr size_t kMaxScanSymbols = 16;

  void initial_symbols(std::string_view piece, std::vector<int32_t>& symbols) const;

  std::vector<std::string> tokens_;
  TokenTable vocab_;                     // over tokens_
  std::array<int32_t, 256> byte_ids_{};  // -1: the byte's character is not in the vocabulary
  MergeTable merges_;
  std::optional<int32_t> unk_id_;
  bool fuse_unk_ = false;
  bool ignore_merges_ = false;
};

}  // namespace dsmoe::text
