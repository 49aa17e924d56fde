// tokenizer_impl.h: what a loaded Tokenizer holds (private to src/text: tokenizer.cpp encodes and
// decodes with it, tokenizer_load.cpp fills it from the JSON files).
#pragma once
#include <cstring>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "text/added_tokens.h"
#include "text/bpe.h"
#include "text/pre_tokenizer.h"
#include "text/tokenizer.h"

namespace dsmoe::text {

// Piece (raw bytes) -> its BPE ids, for pieces of up to kMaxKeyBytes (as tokenizers' BPE cache).
// Open addressing over two arenas, so that a hit costs a hash and about three cache lines; emptied
// when half full (the ids never depend on it).
class PieceCache {
 public:
  static constexpr size_t kMaxKeyBytes = 256;
  static constexpr size_t kSlots = size_t{1} << 19;

  // The cached ids of piece: true and [*ids, *ids + *n_ids), or false.
  bool find(std::string_view piece, uint64_t hash, const int32_t** ids, size_t* n_ids) const {
    if (slots_.empty()) return false;
    for (size_t slot = hash & (kSlots - 1);; slot = (slot + 1) & (kSlots - 1)) {
      const Slot& entry = slots_[slot];
      if (entry.key_size == 0) return false;
      if (entry.hash == hash && entry.key_size == piece.size() &&
          std::memcmp(keys_.data() + entry.key_offset, piece.data(), piece.size()) == 0) {
        *ids = ids_.data() + entry.ids_offset;
        *n_ids = entry.n_ids;
        return true;
      }
    }
  }
  void insert(std::string_view piece, uint64_t hash, const int32_t* ids, size_t n_ids) {
    if (piece.empty() || piece.size() > kMaxKeyBytes) return;
    if (slots_.empty() || n_entries_ >= kSlots / 2) clear();
    size_t slot = hash & (kSlots - 1);
    while (slots_[slot].key_size != 0) slot = (slot + 1) & (kSlots - 1);
    slots_[slot] =
        Slot{hash, static_cast<uint32_t>(keys_.size()), static_cast<uint32_t>(ids_.size()),
             static_cast<uint16_t>(piece.size()), static_cast<uint16_t>(n_ids)};
    keys_.append(piece);
    ids_.insert(ids_.end(), ids, ids + n_ids);
    ++n_entries_;
  }
  static uint64_t hash(std::string_view piece) { return std::hash<std::string_view>{}(piece); }

 private:
  struct Slot {
    uint64_t hash;
    uint32_t key_offset, ids_offset;
    uint16_t key_size, n_ids;  // key_size 0: empty
  };
  void clear() {
    slots_.assign(kSlots, Slot{0, 0, 0, 0, 0});
    keys_.clear();
    ids_.clear();
    n_entries_ = 0;
  }
  std::vector<Slot> slots_;
  std::string keys_;
  std::vector<int32_t> ids_;
  size_t n_entries_ = 0;
};

enum class TokenKind : uint8_t { kNone, kVocabulary, kAdded, kSpecial };

struct Tokenizer::Impl {
  std::string dir;
  Bpe bpe;
  PreTokenizer pre_tokenizer;
  std::unique_ptr<AddedTokenSplitter> added_tokens;

  // By id, for every id below vocab_size.
  std::vector<std::string> tokens;       // vocabulary string or added token content
  std::vector<std::string> token_bytes;  // what the id decodes to
  std::vector<TokenKind> kinds;
  StringIdMap added_ids;  // added token content -> id

  std::string bos_token, eos_token;
  std::optional<int32_t> bos_id, eos_id;
  bool add_bos = false, add_eos = false;
  // From a TemplateProcessing post-processor, when tokenizer_config.json has no add_bos_token /
  // add_eos_token: the ids around the text.
  std::vector<int32_t> template_prefix, template_suffix;
  bool use_template = false;
  std::string chat_template;

  mutable std::mutex cache_mutex;
  mutable PieceCache cache;
};

// Fills impl from DIR/tokenizer.json and DIR/tokenizer_config.json (tokenizer_load.cpp).
void load_tokenizer_files(const std::string& dir, Tokenizer::Impl& impl);

}  // namespace dsmoe::text
