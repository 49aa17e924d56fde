// tokenizer_load.cpp: builds a Tokenizer from DIR/tokenizer.json and DIR/tokenizer_config.json.
// Every stage of tokenizer.json that would change the ids and is not implemented is refused with
// the field that names it, rather than silently ignored.
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "text/byte_level.h"
#include "text/json_util.h"
#include "text/tokenizer_impl.h"
#include "text/tokenizer_json.h"
#include "util/check.h"

namespace dsmoe::text {
namespace {

using nlohmann::json;

std::optional<std::string> read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return std::nullopt;
  std::stringstream buffer;
  buffer << in.rdbuf();
  return buffer.str();
}

json parse_json_file(const std::string& path, const std::string& text) {
  try {
    return json::parse(text);
  } catch (const json::exception& e) {
    fail(fmt::format("{}: not valid JSON: {}", path, e.what()));
  }
}

// A normalizer that changes nothing (null, or a Sequence of such): the only kind supported.
void check_normalizer(const json& normalizer, const std::string& field) {
  if (normalizer.is_null()) return;
  const std::string type = normalizer.value("type", "");
  DSMOE_CHECK(type == "Sequence",
              "{}: normalizer '{}' is not supported (only none or an empty Sequence)", field, type);
  const auto& list = member(normalizer, "normalizers");
  for (size_t i = 0; i < list.size(); ++i)
    check_normalizer(list[i], fmt::format("{}.normalizers[{}]", field, i));
}

// Decoders: ByteLevel (or a Sequence of ByteLevel), or none.
void check_decoder(const json& decoder, const std::string& field) {
  if (decoder.is_null()) return;
  const std::string type = decoder.value("type", "");
  if (type == "Sequence") {
    const auto& list = member(decoder, "decoders");
    for (size_t i = 0; i < list.size(); ++i)
      check_decoder(list[i], fmt::format("{}.decoders[{}]", field, i));
    return;
  }
  DSMOE_CHECK(type == "ByteLevel", "{}: decoder '{}' is not supported (only ByteLevel)", field,
              type);
}

std::vector<AddedToken> parse_added_tokens(const json& list, const std::string& field) {
  std::vector<AddedToken> tokens;
  if (list.is_null()) return tokens;
  DSMOE_CHECK(list.is_array(), "{}: expected a list", field);
  for (size_t i = 0; i < list.size(); ++i) {
    const json& entry = list[i];
    const std::string where = fmt::format("{}[{}]", field, i);
    DSMOE_CHECK(entry.is_object() && entry.contains("id") && entry["id"].is_number_integer() &&
                    entry["id"].get<int64_t>() >= 0 && entry.contains("content") &&
                    entry["content"].is_string(),
                "{}: expected {{\"id\": non-negative integer, \"content\": string, ...}}", where);
    AddedToken token;
    token.id = entry["id"].get<int32_t>();
    token.content = entry["content"];
    token.special = entry.value("special", false);
    token.single_word = entry.value("single_word", false);
    token.lstrip = entry.value("lstrip", false);
    token.rstrip = entry.value("rstrip", false);
    token.normalized = entry.value("normalized", !token.special);
    tokens.push_back(std::move(token));
  }
  return tokens;
}

// TemplateProcessing's "single" template: the special tokens before and after the text ($A).
void parse_template(const json& processor, const std::string& field, Tokenizer::Impl& impl) {
  const std::string type = processor.value("type", "");
  if (type == "Sequence") {
    const auto& list = member(processor, "processors");
    for (size_t i = 0; i < list.size(); ++i)
      parse_template(list[i], fmt::format("{}.processors[{}]", field, i), impl);
    return;
  }
  if (type == "ByteLevel") return;  // changes offsets only
  DSMOE_CHECK(type == "TemplateProcessing",
              "{}: post-processor '{}' is not supported (ByteLevel, TemplateProcessing)", field,
              type);
  impl.use_template = true;
  bool after_text = false;
  const auto& single = member(processor, "single");
  for (size_t i = 0; i < single.size(); ++i) {
    const json& piece = single[i];
    if (piece.contains("Sequence")) {
      after_text = true;
      continue;
    }
    const std::string where = fmt::format("{}.single[{}]", field, i);
    DSMOE_CHECK(piece.contains("SpecialToken") && piece["SpecialToken"].contains("id"),
                "{}: expected SpecialToken or Sequence", where);
    const std::string name = piece["SpecialToken"]["id"];
    const auto& special = member(processor, "special_tokens");
    DSMOE_CHECK(special.contains(name) && special[name].contains("ids"),
                "{}.special_tokens: '{}' is missing", field, name);
    for (const auto& id : special[name]["ids"])
      (after_text ? impl.template_suffix : impl.template_prefix).push_back(id.get<int32_t>());
  }
}

// bos_token / eos_token: a string, {"content": ...} (AddedToken), or null.
std::string special_token_text(const json& config, const char* field, const std::string& path) {
  if (!config.contains(field) || config[field].is_null()) return "";
  const json& value = config[field];
  if (value.is_string()) return value;
  DSMOE_CHECK(value.is_object() && value.contains("content") && value["content"].is_string(),
              "{}: {}: expected a string or {{\"content\": string}}", path, field);
  return value["content"];
}

// chat_template: a string, or a list of {"name", "template"} (the one named "default").
std::string chat_template_text(const json& config, const std::string& path) {
  if (!config.contains("chat_template") || config["chat_template"].is_null()) return "";
  const json& value = config["chat_template"];
  if (value.is_string()) return value;
  DSMOE_CHECK(value.is_array(),
              "{}: chat_template: expected a string or a list of {{name, template}}", path);
  for (const json& entry : value)
    if (entry.is_object() && entry.value("name", "") == "default" && entry.contains("template") &&
        entry["template"].is_string())
      return entry["template"];
  return "";
}

void load_config(const std::string& dir, Tokenizer::Impl& impl) {
  const std::string path = dir + "/tokenizer_config.json";
  const std::optional<std::string> text = read_file(path);
  json config = json::object();
  if (text) {
    config = parse_json_file(path, *text);
    DSMOE_CHECK(config.is_object(), "{}: expected a JSON object", path);
  }
  for (const char* field : {"add_bos_token", "add_eos_token"})
    DSMOE_CHECK(!config.contains(field) || config[field].is_boolean() || config[field].is_null(),
                "{}: {}: expected true or false", path, field);
  // transformers' Llama-style tokenizers rebuild the post-processor from these two flags.
  if (config.contains("add_bos_token") || config.contains("add_eos_token"))
    impl.use_template = false;
  auto flag = [&](const char* field) {
    return config.contains(field) && config[field].is_boolean() && config[field].get<bool>();
  };
  impl.add_bos = flag("add_bos_token");
  impl.add_eos = flag("add_eos_token");
  impl.bos_token = special_token_text(config, "bos_token", path);
  impl.eos_token = special_token_text(config, "eos_token", path);
  auto lookup = [&](const std::string& token, const char* field) -> std::optional<int32_t> {
    if (token.empty()) return std::nullopt;
    if (const auto added = impl.added_ids.find(token); added != impl.added_ids.end())
      return added->second;
    const auto id = impl.bpe.token_to_id(token);
    DSMOE_CHECK(id, "{}: {} '{}' is not a token of {}/tokenizer.json", path, field, token, dir);
    return id;
  };
  impl.bos_id = lookup(impl.bos_token, "bos_token");
  impl.eos_id = lookup(impl.eos_token, "eos_token");
  impl.chat_template = chat_template_text(config, path);
  if (impl.chat_template.empty()) {
    // Newer transformers write the template to its own file.
    if (const auto jinja = read_file(dir + "/chat_template.jinja")) impl.chat_template = *jinja;
  }
}

// The by-id tables: vocabulary first, then added tokens over it (tokenizers looks them up first).
void build_id_tables(const std::vector<AddedToken>& added, Tokenizer::Impl& impl) {
  const auto& vocabulary = impl.bpe.tokens();
  size_t n_ids = vocabulary.size();
  for (const AddedToken& token : added) n_ids = std::max<size_t>(n_ids, token.id + 1);
  impl.tokens.assign(n_ids, "");
  impl.token_bytes.assign(n_ids, "");
  impl.kinds.assign(n_ids, TokenKind::kNone);
  for (size_t id = 0; id < vocabulary.size(); ++id) {
    if (vocabulary[id].empty()) continue;
    impl.tokens[id] = vocabulary[id];
    impl.token_bytes[id] = byte_level_decode(vocabulary[id]);
    impl.kinds[id] = TokenKind::kVocabulary;
  }
  for (const AddedToken& token : added) {
    impl.tokens[token.id] = token.content;
    // tokenizers runs added tokens through the ByteLevel decoder too: a content made only of
    // byte-level characters becomes the bytes they stand for, any other stays as it is.
    impl.token_bytes[token.id] = byte_level_decode(token.content);
    impl.kinds[token.id] = token.special ? TokenKind::kSpecial : TokenKind::kAdded;
    impl.added_ids.emplace(token.content, token.id);
  }
}

}  // namespace

void load_tokenizer_files(const std::string& dir, Tokenizer::Impl& impl) {
  impl.dir = dir;
  const std::string path = dir + "/tokenizer.json";
  const std::optional<std::string> text = read_file(path);
  DSMOE_CHECK(text, "{}: cannot open (a tokenizer directory holds tokenizer.json)", path);
  TokenizerJson file = parse_tokenizer_json(*text, path);
  const json& root = file.root;
  DSMOE_CHECK(root.is_object(), "{}: expected a JSON object", path);
  DSMOE_CHECK(root.contains("model"), "{}: model: missing", path);

  check_normalizer(member(root, "normalizer"), path + ": normalizer");
  check_decoder(member(root, "decoder"), path + ": decoder");
  impl.bpe = Bpe::build(std::move(file.bpe), root["model"], path);
  impl.pre_tokenizer = PreTokenizer::from_json(member(root, "pre_tokenizer"), path);
  std::vector<AddedToken> added =
      parse_added_tokens(member(root, "added_tokens"), path + ": added_tokens");
  build_id_tables(added, impl);
  impl.added_tokens = std::make_unique<AddedTokenSplitter>(std::move(added));
  const json& post_processor = member(root, "post_processor");
  if (!post_processor.is_null()) parse_template(post_processor, path + ": post_processor", impl);
  load_config(dir, impl);
}

}  // namespace dsmoe::text
