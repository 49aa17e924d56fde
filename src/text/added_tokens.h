// added_tokens.h: tokenizers' AddedVocabulary split: the added tokens of tokenizer.json are cut out
// of the raw text first (leftmost-longest match, with their lstrip/rstrip/single_word options), and
// only the text between them goes on to the pre-tokenizer and BPE.
#pragma once
#include <array>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "text/regex.h"

namespace dsmoe::text {

struct AddedToken {
  std::string content;
  int32_t id = 0;
  bool special = false;
  bool single_word = false;
  bool lstrip = false;
  bool rstrip = false;
  bool normalized = false;
};

// Calls on_text(text) for each stretch between added tokens and on_token(id) for each token.
class AddedTokenSink {
 public:
  virtual ~AddedTokenSink() = default;
  virtual void on_text(std::string_view text) = 0;
  virtual void on_token(int32_t id) = 0;
};

class AddedTokenSplitter {
 public:
  explicit AddedTokenSplitter(std::vector<AddedToken> tokens);

  // As tokenizers does it: tokens with normalized=false are split out of the raw text first, then
  // those with normalized=true out of each remaining stretch (there is no normalizer here).
  void split(std::string_view text, MatchScratch& scratch, AddedTokenSink& sink) const;

  const std::vector<AddedToken>& tokens() const { return tokens_; }

 private:
  // A byte trie of token contents.
  class Trie {
   public:
    void insert(std::string_view content, int32_t token_index);
    // The longest token that starts at text[pos], -1 if none; *end is set past it.
    int32_t longest_match(std::string_view text, size_t pos, size_t* end) const;
    bool empty() const { return nodes_.size() == 1; }
    bool may_start(uint8_t byte) const { return root_child_[byte] >= 0; }

   private:
    struct Node {
      std::vector<std::pair<uint8_t, int32_t>> children;  // (byte, node), sorted by byte
      int32_t token_index = -1;
    };
    int32_t child(int32_t node, uint8_t byte) const;
    std::vector<Node> nodes_ = std::vector<Node>(1);
    std::array<int32_t, 256> root_child_ = filled_minus_one();
    static std::array<int32_t, 256> filled_minus_one() {
      std::array<int32_t, 256> array;
      array.fill(-1);
      return array;
    }
  };

  void split_pass(std::string_view text, int pass, MatchScratch& scratch,
                  AddedTokenSink& sink) const;
  bool accept_single_word(std::string_view text, size_t start, size_t end,
                          MatchScratch& scratch) const;

  std::vector<AddedToken> tokens_;
  std::array<Trie, 2> tries_;  // [0]: normalized=false, [1]: normalized=true
  Regex alphanumeric_;         // Rust's char::is_alphanumeric, for single_word
};

}  // namespace dsmoe::text
