#include "runtime/text_codec.h"

#include "text/utf8.h"

namespace dsmoe {
namespace {

constexpr int64_t kByteVocab = 256;
constexpr int32_t kReplacement = 0xFFFD;
constexpr unsigned char kNotAByte = 0xFF;  // never valid in UTF-8: decodes to U+FFFD

// Length of the UTF-8 sequence that lead byte `lead` opens (0: not a lead byte).
size_t sequence_length(unsigned char lead) {
  if (lead < 0x80) return 1;
  if (lead >= 0xC2 && lead <= 0xDF) return 2;
  if (lead >= 0xE0 && lead <= 0xEF) return 3;
  if (lead >= 0xF0 && lead <= 0xF4) return 4;
  return 0;
}

// True when s[pos..] is a valid but unfinished start of a multi-byte sequence (RFC 3629 table:
// E0 and F0 restrict the second byte from below, ED and F4 from above).
bool is_truncated_sequence(std::string_view s, size_t pos) {
  const auto lead = static_cast<unsigned char>(s[pos]);
  const size_t length = sequence_length(lead);
  if (length < 2 || pos + length <= s.size()) return false;
  for (size_t i = pos + 1; i < s.size(); i++) {
    const auto byte = static_cast<unsigned char>(s[i]);
    unsigned char low = 0x80, high = 0xBF;
    if (i == pos + 1) {
      if (lead == 0xE0) low = 0xA0;
      if (lead == 0xED) high = 0x9F;
      if (lead == 0xF0) low = 0x90;
      if (lead == 0xF4) high = 0x8F;
    }
    if (byte < low || byte > high) return false;
  }
  return true;
}

class ByteDecoder : public TokenDecoder {
 public:
  std::string push(int64_t token) override {
    const char byte = static_cast<char>(token >= 0 && token < kByteVocab ? token : kNotAByte);
    return assembler_.push(std::string_view(&byte, 1));
  }
  std::string flush() override { return assembler_.flush(); }

 private:
  Utf8Assembler assembler_;
};

}  // namespace

std::string Utf8Assembler::push(std::string_view bytes) {
  pending_.append(bytes);
  std::string out;
  size_t pos = 0;
  while (pos < pending_.size()) {
    if (is_truncated_sequence(pending_, pos)) break;
    const int32_t code_point = text::next_code_point(pending_, &pos);
    text::append_utf8(out, code_point < 0 ? kReplacement : code_point);
  }
  pending_.erase(0, pos);
  return out;
}

std::string Utf8Assembler::flush() {
  std::string out;
  if (!pending_.empty()) text::append_utf8(out, kReplacement);
  pending_.clear();
  return out;
}

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
