// tokenizer_json.h: reads tokenizer.json in one pass, taking model.vocab and model.merges (about
// 255k entries for DeepSeek-V3) straight into flat vectors and building a JSON DOM only for the
// rest (a DOM of the vocabulary alone would take most of the loading time).
#pragma once
#include <nlohmann/json.hpp>
#include <string>

#include "text/bpe.h"

namespace dsmoe::text {

struct TokenizerJson {
  nlohmann::json root;  // everything but model.vocab and model.merges
  BpeData bpe;
};

// `path` names the file in errors.
TokenizerJson parse_tokenizer_json(const std::string& text, const std::string& path);

}  // namespace dsmoe::text
