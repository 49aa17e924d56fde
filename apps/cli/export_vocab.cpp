// export_vocab.cpp: tokenizer.ggml.* for dsmoe export (see export_vocab.h). Token types are
// llama.cpp's (gguf-py TokenType): normal 1, control 3, user-defined 4, unused 5.
#include "apps/cli/export_vocab.h"

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <vector>

#include "text/utf8.h"
#include "util/check.h"
#include "util/log.h"

namespace dsmoe::cli {
namespace {

using json = nlohmann::json;

constexpr int32_t kTokenNormal = 1;
constexpr int32_t kTokenControl = 3;
constexpr int32_t kTokenUserDefined = 4;
constexpr int32_t kTokenUnused = 5;
constexpr int kByteTokens = 256;

struct Vocabulary {
  std::vector<std::string> tokens;
  std::vector<int32_t> types;
  std::vector<std::string> merges;
  std::string pre;
  bool add_bos = false;
};

Vocabulary synthetic_vocabulary(int64_t vocab_size) {
  Vocabulary vocab;
  vocab.pre = "default";
  for (int64_t id = 0; id < vocab_size; id++) {
    vocab.tokens.push_back(id < kByteTokens ? byte_level_token(static_cast<unsigned char>(id))
                                            : fmt::format("<t{}>", id));
    vocab.types.push_back(kTokenNormal);
  }
  return vocab;
}

json read_json(const std::string& path) {
  std::ifstream in(path);
  DSMOE_CHECK(in.good(), "{}: cannot open", path);
  json value = json::parse(in, nullptr, false);
  DSMOE_CHECK(!value.is_discarded(), "{}: not valid JSON", path);
  return value;
}

// Places `token` at `id`, checking the id and that the slot is free.
void place_token(Vocabulary& vocab, const std::string& path, int64_t id, const std::string& token,
                 int32_t type) {
  DSMOE_CHECK(id >= 0 && id < static_cast<int64_t>(vocab.tokens.size()),
              "{}: token '{}' has id {}, outside the model's vocabulary [0, {})", path, token, id,
              vocab.tokens.size());
  vocab.tokens[id] = token;
  vocab.types[id] = type;
}

Vocabulary tokenizer_json_vocabulary(const std::string& path, int64_t vocab_size) {
  const json tokenizer = read_json(path);
  DSMOE_CHECK(tokenizer.contains("model") && tokenizer["model"].is_object(),
              "{}: no 'model' object", path);
  const json& model = tokenizer["model"];
  DSMOE_CHECK(model.value("type", "") == "BPE", "{}: model.type is '{}'; only BPE is exported",
              path, model.value("type", ""));
  DSMOE_CHECK(model.contains("vocab") && model["vocab"].is_object(), "{}: no model.vocab object",
              path);
  Vocabulary vocab;
  vocab.tokens.resize(vocab_size);
  vocab.types.assign(vocab_size, kTokenUnused);
  for (int64_t id = 0; id < vocab_size; id++) vocab.tokens[id] = fmt::format("[PAD{}]", id);
  for (const auto& [token, id] : model["vocab"].items()) {
    DSMOE_CHECK(id.is_number_integer(), "{}: model.vocab['{}'] is not an integer id", path, token);
    place_token(vocab, path, id.get<int64_t>(), token, kTokenNormal);
  }
  if (tokenizer.contains("added_tokens")) {
    for (const json& added : tokenizer["added_tokens"]) {
      DSMOE_CHECK(added.contains("id") && added.contains("content"),
                  "{}: an added_tokens entry lacks 'id' or 'content': {}", path, added.dump());
      const bool special = added.value("special", false);
      place_token(vocab, path, added["id"].get<int64_t>(), added["content"].get<std::string>(),
                  special ? kTokenControl : kTokenUserDefined);
    }
  }
  if (model.contains("merges")) {
    for (const json& merge : model["merges"]) {
      if (merge.is_string()) {
        vocab.merges.push_back(merge.get<std::string>());
      } else {
        DSMOE_CHECK(
            merge.is_array() && merge.size() == 2 && merge[0].is_string() && merge[1].is_string(),
            "{}: model.merges entry {} is neither \"a b\" nor [a, b]", path, merge.dump());
        vocab.merges.push_back(merge[0].get<std::string>() + " " + merge[1].get<std::string>());
      }
    }
  }
  return vocab;
}

}  // namespace

std::string byte_level_token(unsigned char byte) {
  // GPT-2's bytes_to_unicode: '!'..'~', U+00A1..U+00AC and U+00AE..U+00FF are themselves; the
  // other 68 bytes, in increasing order, become U+0100, U+0101, ...
  auto printable = [](int b) {
    return (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
  };
  int32_t code_point = byte;
  if (!printable(byte)) {
    int shifted = 0;
    for (int b = 0; b < byte; b++)
      if (!printable(b)) shifted++;
    code_point = kByteTokens + shifted;
  }
  std::string out;
  text::append_utf8(out, code_point);
  return out;
}

void add_vocabulary(GgufWriter& writer, const ModelConfig& config, const std::string& model_dir,
                    const std::string& tokenizer_pre) {
  const std::string tokenizer_path = model_dir + "/tokenizer.json";
  Vocabulary vocab;
  if (std::filesystem::exists(tokenizer_path)) {
    vocab = tokenizer_json_vocabulary(tokenizer_path, config.vocab_size);
    vocab.pre = config.arch == Arch::kDeepseekV3 ? "deepseek-v3" : "deepseek-llm";
    const std::string config_path = model_dir + "/tokenizer_config.json";
    if (std::filesystem::exists(config_path)) {
      const json tokenizer_config = read_json(config_path);
      vocab.add_bos = tokenizer_config.value("add_bos_token", false);
    }
    log_info("vocabulary: {} ({} merges)", tokenizer_path, vocab.merges.size());
  } else {
    vocab = synthetic_vocabulary(config.vocab_size);
    log_info("vocabulary: synthetic (no {}): byte tokens 0..255, then <t256>..", tokenizer_path);
  }
  if (!tokenizer_pre.empty()) vocab.pre = tokenizer_pre;
  for (int64_t id : {config.bos_token_id, config.eos_token_id})
    if (id >= 0 && id < config.vocab_size) vocab.types[id] = kTokenControl;

  writer.add_kv("tokenizer.ggml.model", GgufValue::string("gpt2"));
  writer.add_kv("tokenizer.ggml.pre", GgufValue::string(vocab.pre));
  writer.add_kv("tokenizer.ggml.tokens", GgufValue::strings(vocab.tokens));
  writer.add_kv("tokenizer.ggml.token_type", GgufValue::i32s(vocab.types));
  writer.add_kv("tokenizer.ggml.merges", GgufValue::strings(vocab.merges));
  if (config.bos_token_id >= 0 && config.bos_token_id < config.vocab_size)
    writer.add_kv("tokenizer.ggml.bos_token_id",
                  GgufValue::u32(static_cast<uint32_t>(config.bos_token_id)));
  if (config.eos_token_id >= 0 && config.eos_token_id < config.vocab_size)
    writer.add_kv("tokenizer.ggml.eos_token_id",
                  GgufValue::u32(static_cast<uint32_t>(config.eos_token_id)));
  writer.add_kv("tokenizer.ggml.add_bos_token", GgufValue::boolean(vocab.add_bos));
}

}  // namespace dsmoe::cli
