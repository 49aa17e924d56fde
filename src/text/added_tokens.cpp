// added_tokens.cpp: see added_tokens.h. Follows tokenizers' AddedVocabulary::find_matches: an
// Aho-Corasick scan with MatchKind::LeftmostLongest; a match refused by single_word is skipped and
// the scan goes on after it.
#include "text/added_tokens.h"

#include <algorithm>

#include "text/utf8.h"

namespace dsmoe::text {
namespace {

// The byte where the last code point of text[0, end) starts.
size_t last_code_point_start(std::string_view text, size_t end) {
  size_t start = end - 1;
  while (start > 0 && (static_cast<uint8_t>(text[start]) & 0xC0) == 0x80) --start;
  return start;
}

}  // namespace

void AddedTokenSplitter::Trie::insert(std::string_view content, int32_t token_index) {
  int32_t node = 0;
  for (const char c : content) {
    const auto byte = static_cast<uint8_t>(c);
    int32_t next = child(node, byte);
    if (next < 0) {
      next = static_cast<int32_t>(nodes_.size());
      nodes_.emplace_back();
      auto& children = nodes_[node].children;
      children.insert(
          std::lower_bound(children.begin(), children.end(), std::pair<uint8_t, int32_t>(byte, -1)),
          {byte, next});
      if (node == 0) root_child_[byte] = next;
    }
    node = next;
  }
  // tokenizers keeps the first of two added tokens with the same content.
  if (nodes_[node].token_index < 0) nodes_[node].token_index = token_index;
}

int32_t AddedTokenSplitter::Trie::child(int32_t node, uint8_t byte) const {
  if (node == 0) return root_child_[byte];
  for (const auto& [child_byte, child_node] : nodes_[node].children)
    if (child_byte == byte) return child_node;
  return -1;
}

int32_t AddedTokenSplitter::Trie::longest_match(std::string_view text, size_t pos,
                                                size_t* end) const {
  int32_t node = 0, found = -1;
  for (size_t i = pos; i < text.size(); ++i) {
    node = child(node, static_cast<uint8_t>(text[i]));
    if (node < 0) break;
    if (nodes_[node].token_index >= 0) found = nodes_[node].token_index, *end = i + 1;
  }
  return found;
}

AddedTokenSplitter::AddedTokenSplitter(std::vector<AddedToken> tokens)
    : tokens_(std::move(tokens)), alphanumeric_("[\\p{Alphabetic}\\p{N}]", "single_word") {
  for (size_t i = 0; i < tokens_.size(); ++i)
    if (!tokens_[i].content.empty())
      tries_[tokens_[i].normalized ? 1 : 0].insert(tokens_[i].content, static_cast<int32_t>(i));
}

void AddedTokenSplitter::split(std::string_view text, MatchScratch& scratch,
                               AddedTokenSink& sink) const {
  split_pass(text, 0, scratch, sink);
}

bool AddedTokenSplitter::accept_single_word(std::string_view text, size_t start, size_t end,
                                            MatchScratch& scratch) const {
  // Rust's char::is_alphanumeric of the code point at pos (false for invalid UTF-8, which the
  // regex must not see).
  auto is_alphanumeric_at = [&](size_t pos) {
    const int32_t code_point = next_code_point(text, &pos);
    if (code_point < 0) return false;
    std::string one;
    append_utf8(one, code_point);
    return alphanumeric_.matches_at_start(one, scratch);
  };
  const bool word_before = start > 0 && is_alphanumeric_at(last_code_point_start(text, start));
  const bool word_after = end < text.size() && is_alphanumeric_at(end);
  return !word_before && !word_after;
}

void AddedTokenSplitter::split_pass(std::string_view text, int pass, MatchScratch& scratch,
                                    AddedTokenSink& sink) const {
  auto emit_text = [&](size_t start, size_t end) {
    if (end <= start) return;
    if (pass == 0)
      split_pass(text.substr(start, end - start), 1, scratch, sink);
    else
      sink.on_text(text.substr(start, end - start));
  };
  const Trie& trie = tries_[pass];
  if (trie.empty()) return emit_text(0, text.size());
  size_t text_start = 0;  // where the stretch not yet emitted begins
  size_t pos = 0;
  while (pos < text.size()) {
    if (!trie.may_start(static_cast<uint8_t>(text[pos]))) {
      ++pos;
      continue;
    }
    size_t end = pos;
    const int32_t index = trie.longest_match(text, pos, &end);
    if (index < 0) {
      ++pos;
      continue;
    }
    const AddedToken& token = tokens_[index];
    if (token.single_word && !accept_single_word(text, pos, end, scratch)) {
      pos = end;
      continue;
    }
    size_t start = pos, stop = end;
    if (token.lstrip) {
      while (start > text_start) {
        const size_t previous = last_code_point_start(text, start);
        size_t cursor = previous;
        if (!is_white_space(next_code_point(text, &cursor))) break;
        start = previous;
      }
    }
    if (token.rstrip) {
      while (stop < text.size()) {
        size_t cursor = stop;
        if (!is_white_space(next_code_point(text, &cursor))) break;
        stop = cursor;
      }
    }
    emit_text(text_start, start);
    sink.on_token(token.id);
    text_start = stop;
    pos = end;
  }
  emit_text(text_start, text.size());
}

}  // namespace dsmoe::text
