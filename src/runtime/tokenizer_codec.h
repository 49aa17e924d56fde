// tokenizer_codec.h: TokenizerCodec, a checkpoint's own tokenizer.json and chat template as the
// TextCodec of the server, `dsmoe generate --prompt` and `dsmoe chat`; load_text_codec picks it
// when the checkpoint has a tokenizer.json, and the byte-level codec of `dsmoe train` models
// otherwise.
#pragma once
#include <memory>
#include <optional>
#include <string>

#include "runtime/text_codec.h"
#include "text/chat_template.h"
#include "text/tokenizer.h"

namespace dsmoe {

class TokenizerCodec : public TextCodec {
 public:
  explicit TokenizerCodec(text::Tokenizer tokenizer);
  // BOS first when tokenizer_config.json's add_bos_token asks for it, unless the text already
  // begins with it (a rendered chat writes its own).
  std::vector<int64_t> encode(const std::string& text) const override;
  std::unique_ptr<TokenDecoder> decoder() const override;
  // The chat_template of tokenizer_config.json, with bos_token and eos_token; an Error when the
  // checkpoint has none.
  std::string render_chat(const nlohmann::json& messages,
                          bool add_generation_prompt) const override;
  // EOS and the end-of-turn tokens the vocabulary has.
  const std::vector<int64_t>& stop_ids() const override { return stop_ids_; }

  const text::Tokenizer& tokenizer() const { return tokenizer_; }

 private:
  text::Tokenizer tokenizer_;
  std::optional<text::ChatTemplate> chat_template_;
  std::vector<int64_t> stop_ids_;
};

// DIR/tokenizer.json -> TokenizerCodec; otherwise the byte-level ByteCodec.
std::unique_ptr<TextCodec> load_text_codec(const std::string& model_dir, const ModelConfig& config);

}  // namespace dsmoe
