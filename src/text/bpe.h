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

class Bpe {
 public:
  // `model` is tokenizer.json's "model" (type BPE); `where` names the file for messages.
  static Bpe from_json(const nlohmann::json& model, const std::string& where);

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
  static constexpr size_t kMaxScanSymbols = 48;

  void initial_symbols(std::string_view piece, std::vector<int32_t>& symbols) const;

  StringIdMap vocab_;
  std::vector<std::string> tokens_;
  std::array<int32_t, 256> byte_ids_{};  // -1: the byte's character is not in the vocabulary
  MergeTable merges_;
  std::optional<int32_t> unk_id_;
  bool fuse_unk_ = false;
  bool ignore_merges_ = false;
};

}  // namespace dsmoe::text
