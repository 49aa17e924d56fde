// tokenizer.h: a checkpoint's own tokenizer (tokenizer.json + tokenizer_config.json, as Hugging
// Face publishes them): byte-level BPE that encodes to the ids of Hugging Face `tokenizers`. The
// pipeline, one stage per file: added-token split (added_tokens.h) -> pre-tokenizer
// (pre_tokenizer.h, PCRE2 regexes) -> BPE (bpe.h, byte-level, merges by rank) -> BOS/EOS; decoding
// maps byte-level strings back to bytes (byte_level.h).
#pragma once
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "text/utf8.h"  // Utf8Stream: printing token bytes as they come

namespace dsmoe::text {

class Tokenizer {
 public:
  // DIR/tokenizer.json (required) and DIR/tokenizer_config.json (optional; BOS/EOS, add_bos_token,
  // chat_template; DIR/chat_template.jinja when the config has no chat_template). Errors name the
  // file and the field.
  static Tokenizer load(const std::string& dir);

  // Text to ids. With add_special_tokens, BOS/EOS as tokenizer_config.json's add_bos_token /
  // add_eos_token say (when it has neither, tokenizer.json's TemplateProcessing post-processor).
  // Text that is not valid UTF-8 (which tokenizers cannot take) still encodes losslessly: each run
  // of invalid bytes is a piece of its own, byte-level encoded, so decode() gives the bytes back.
  std::vector<int64_t> encode(std::string_view text, bool add_special_tokens = false) const;

  // Ids to bytes (raw: a cut through a multi-byte character stays cut; see Utf8Stream). Added
  // tokens decode to their text; skip_special_tokens drops the special ones; ids without a token
  // are skipped, as tokenizers does.
  std::string decode(const std::vector<int64_t>& ids, bool skip_special_tokens = false) const;

  std::string token(int64_t id) const;        // vocabulary string (byte-level, e.g. "Ġthe")
  std::string token_bytes(int64_t id) const;  // the raw bytes the id decodes to
  int64_t vocab_size() const;                 // largest id + 1
  std::optional<int64_t> bos_id() const;      // tokenizer_config.json bos_token
  std::optional<int64_t> eos_id() const;
  const std::string& bos_token() const;  // "" if none
  const std::string& eos_token() const;
  bool add_bos() const;  // add_bos_token
  bool add_eos() const;  // add_eos_token
  bool is_special(int64_t id) const;
  std::optional<int64_t> token_to_id(std::string_view token) const;
  const std::string& chat_template() const;  // "" if none
  const std::string& dir() const;

  // The pre-tokenizer's pieces of a text without added tokens (byte-level strings, as the
  // fixture's "pieces"), for tests and debugging.
  std::vector<std::string> pieces(std::string_view text) const;

  struct Impl;

 private:
  explicit Tokenizer(std::shared_ptr<Impl> impl) : impl_(std::move(impl)) {}
  std::shared_ptr<Impl> impl_;  // shared by copies (immutable but for the thread-safe cache)
};

}  // namespace dsmoe::text
