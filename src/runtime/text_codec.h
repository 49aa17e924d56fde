// text_codec.h: TextCodec, what the server needs from a tokenizer and chat template (encode a
// prompt, render chat messages, decode generated tokens to UTF-8 text one token at a time, the
// ids that end a turn), and ByteCodec, the byte-level one of `dsmoe train` models (ids 0..255
// are bytes).
#pragma once
#include <cstdint>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <string_view>
#include <vector>

#include "model/config.h"

namespace dsmoe {

// Decodes one sequence's generated tokens incrementally (tokenizers merge bytes across tokens,
// so each sequence has its own state).
class TokenDecoder {
 public:
  virtual ~TokenDecoder() = default;
  // The text that one more token completes (valid UTF-8; may be empty).
  virtual std::string push(int64_t token) = 0;
  // The rest at the end of the sequence.
  virtual std::string flush() = 0;
};

class TextCodec {
 public:
  virtual ~TextCodec() = default;
  virtual std::vector<int64_t> encode(const std::string& text) const = 0;
  virtual std::unique_ptr<TokenDecoder> decoder() const = 0;
  // messages: [{"role": "system" | "user" | "assistant" | ..., "content": string}, ...]
  // (validated by the caller). add_generation_prompt appends the assistant's turn opening.
  virtual std::string render_chat(const nlohmann::json& messages,
                                  bool add_generation_prompt) const = 0;
  // Tokens that end generation (EOS, end of turn); not part of the output text.
  virtual const std::vector<int64_t>& stop_ids() const = 0;
};

// Byte-level text: token i < 256 is byte i. Ids >= 256 (a model's vocabulary may be larger) are
// not text and decode to U+FFFD; such an id equal to the config's eos_token_id ends generation
// (a byte-level EOS would be a byte of text, e.g. '\n', and is not treated as the end).
// Chat: "<|role|>\ncontent\n" per message, then "<|assistant|>\n".
class ByteCodec : public TextCodec {
 public:
  explicit ByteCodec(const ModelConfig& config);
  std::vector<int64_t> encode(const std::string& text) const override;
  std::unique_ptr<TokenDecoder> decoder() const override;
  std::string render_chat(const nlohmann::json& messages,
                          bool add_generation_prompt) const override;
  const std::vector<int64_t>& stop_ids() const override { return stop_ids_; }

 private:
  std::vector<int64_t> stop_ids_;
};

}  // namespace dsmoe
