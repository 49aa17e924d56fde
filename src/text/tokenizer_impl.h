// tokenizer_impl.h: what a loaded Tokenizer holds (private to src/text: tokenizer.cpp encodes and
// decodes with it, tokenizer_load.cpp fills it from the JSON files).
#pragma once
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

// Piece (raw bytes) -> its BPE ids, for pieces of up to kMaxKeyBytes; cleared when it reaches
// kMaxEntries (tokenizers keeps a similar cache; the ids never depend on it).
class PieceCache {
 public:
  static constexpr size_t kMaxKeyBytes = 256;
  static constexpr size_t kMaxEntries = size_t{1} << 20;

  // The cached ids of piece, or nullptr.
  const std::vector<int32_t>* find(std::string_view piece) const {
    const auto found = map_.find(piece);
    return found == map_.end() ? nullptr : &found->second;
  }
  void insert(std::string_view piece, const int32_t* ids, size_t n_ids) {
    if (piece.size() > kMaxKeyBytes) return;
    if (map_.size() >= kMaxEntries) map_.clear();
    map_.emplace(std::string(piece), std::vector<int32_t>(ids, ids + n_ids));
  }

 private:
  std::unordered_map<std::string, std::vector<int32_t>, StringHash, std::equal_to<>> map_;
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
