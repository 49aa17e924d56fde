#include "runtime/tokenizer_codec.h"

#include <algorithm>
#include <filesystem>

#include "util/check.h"

namespace dsmoe {
namespace {

// Tokens that end an assistant's turn in the chat templates of the DeepSeek family and of the
// other common ones (besides EOS).
constexpr const char* kEndOfTurnTokens[] = {"<｜end▁of▁sentence｜>", "<|EOT|>", "<|im_end|>",
                                            "<|eot_id|>", "<|end|>"};

class TokenizerDecoder : public TokenDecoder {
 public:
  explicit TokenizerDecoder(const text::Tokenizer& tokenizer) : tokenizer_(tokenizer) {}
  // Ids the tokenizer has no token for (a model's vocabulary may be padded past it: V3 has 129,280
  // rows for 128,815 tokens) decode to nothing, as tokenizers' decode skips them.
  std::string push(int64_t token) override {
    if (token < 0 || token >= tokenizer_.vocab_size()) return {};
    return stream_.push(tokenizer_.token_bytes(token));
  }
  std::string flush() override { return stream_.flush(); }

 private:
  const text::Tokenizer& tokenizer_;
  text::Utf8Stream stream_;
};

}  // namespace

TokenizerCodec::TokenizerCodec(text::Tokenizer tokenizer) : tokenizer_(std::move(tokenizer)) {
  if (!tokenizer_.chat_template().empty()) chat_template_.emplace(tokenizer_.chat_template());
  if (tokenizer_.eos_id().has_value()) stop_ids_.push_back(*tokenizer_.eos_id());
  for (const char* token : kEndOfTurnTokens) {
    const std::optional<int64_t> id = tokenizer_.token_to_id(token);
    if (id.has_value() && std::find(stop_ids_.begin(), stop_ids_.end(), *id) == stop_ids_.end())
      stop_ids_.push_back(*id);
  }
}

std::vector<int64_t> TokenizerCodec::encode(const std::string& text) const {
  std::vector<int64_t> ids = tokenizer_.encode(text, /*add_special_tokens=*/false);
  const std::optional<int64_t> bos = tokenizer_.bos_id();
  if (tokenizer_.add_bos() && bos.has_value() && (ids.empty() || ids.front() != *bos))
    ids.insert(ids.begin(), *bos);
  return ids;
}

std::unique_ptr<TokenDecoder> TokenizerCodec::decoder() const {
  return std::make_unique<TokenizerDecoder>(tokenizer_);
}

std::string TokenizerCodec::render_chat(const nlohmann::json& messages,
                                        bool add_generation_prompt) const {
  DSMOE_CHECK(chat_template_.has_value(), "{}: tokenizer_config.json has no chat_template",
              tokenizer_.dir());
  nlohmann::json context = {{"messages", messages},
                            {"add_generation_prompt", add_generation_prompt},
                            {"bos_token", tokenizer_.bos_token()},
                            {"eos_token", tokenizer_.eos_token()}};
  return chat_template_->render(context);
}

std::unique_ptr<TextCodec> load_text_codec(const std::string& model_dir,
                                           const ModelConfig& config) {
  if (!std::filesystem::exists(std::filesystem::path(model_dir) / "tokenizer.json"))
    return std::make_unique<ByteCodec>(config);
  return std::make_unique<TokenizerCodec>(text::Tokenizer::load(model_dir));
}

}  // namespace dsmoe
