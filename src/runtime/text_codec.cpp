#include "runtime/text_codec.h"

#include "text/utf8.h"

namespace dsmoe {
namespace {

constexpr int64_t kByteVocab = 256;
constexpr unsigned char kNotAByte = 0xFF;  // never valid in UTF-8: decodes to U+FFFD

class ByteDecoder : public TokenDecoder {
 public:
  std::string push(int64_t token) override {
    const char byte = static_cast<char>(token >= 0 && token < kByteVocab ? token : kNotAByte);
    return assembler_.push(std::string_view(&byte, 1));
  }
  std::string flush() override { return assembler_.flush(); }

 private:
  text::Utf8Stream assembler_;
};

}  // namespace

ByteCodec::ByteCodec(const ModelConfig& config) {
  if (config.eos_token_id >= kByteVocab && config.eos_token_id < config.vocab_size)
    stop_ids_.push_back(config.eos_token_id);
}

std::vector<int64_t> ByteCodec::encode(const std::string& text) const {
  return std::vector<int64_t>(reinterpret_cast<const unsigned char*>(text.data()),
                              reinterpret_cast<const unsigned char*>(text.data()) + text.size());
}

std::unique_ptr<TokenDecoder> ByteCodec::decoder() const { return std::make_unique<ByteDecoder>(); }

std::string ByteCodec::render_chat(const nlohmann::json& messages,
                                   bool add_generation_prompt) const {
  std::string text;
  for (const nlohmann::json& message : messages)
    text += "<|" + message.at("role").get<std::string>() + "|>\n" +
            message.at("content").get<std::string>() + "\n";
  if (add_generation_prompt) text += "<|assistant|>\n";
  return text;
}

}  // namespace dsmoe
