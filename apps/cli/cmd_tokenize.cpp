// cmd_tokenize.cpp: dsmoe tokenize --tokenizer DIR: JSON lines on stdin, one JSON line out for
// each.
//   {"text": T, "add_special_tokens": B (optional, false)}
//     -> {"ids": [...], "ids_with_special": [...], "tokens": [...], "decoded": D}
//   {"messages": [...], "add_generation_prompt": B} -> {"rendered": R, "ids": [...]}
//   anything else -> {"error": "line N: ..."}, and the lines after it go on.
#include <iostream>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>

#include "apps/cli/commands.h"
#include "text/chat_template.h"
#include "text/tokenizer.h"
#include "util/check.h"

namespace dsmoe::cli {
namespace {

using nlohmann::json;

// The chat template of tokenizer_config.json over the line's messages, as transformers renders
// it. The line is parsed again with its keys in order (tojson prints dicts as given).
std::string render_chat_template(const text::Tokenizer& tokenizer, const std::string& raw_line) {
  const nlohmann::ordered_json line = nlohmann::ordered_json::parse(raw_line);
  return text::ChatTemplate(tokenizer.chat_template())
      .render(nlohmann::ordered_json{
          {"messages", line["messages"]},
          {"add_generation_prompt", line.value("add_generation_prompt", false)},
          {"bos_token", tokenizer.bos_token()},
          {"eos_token", tokenizer.eos_token()}});
}

json answer_text(const text::Tokenizer& tokenizer, const json& line) {
  DSMOE_CHECK(line["text"].is_string(), "\"text\" must be a string");
  const auto& add_special =
      line.contains("add_special_tokens") ? line["add_special_tokens"] : json(false);
  DSMOE_CHECK(add_special.is_boolean(), "\"add_special_tokens\" must be true or false");
  const std::string& text = line["text"].get_ref<const std::string&>();
  const std::vector<int64_t> ids = tokenizer.encode(text, add_special.get<bool>());
  json tokens = json::array();
  for (const int64_t id : ids) tokens.push_back(tokenizer.token(id));
  return json{{"ids", ids},
              {"ids_with_special", tokenizer.encode(text, true)},
              {"tokens", std::move(tokens)},
              {"decoded", tokenizer.decode(ids)}};
}

json answer_messages(const text::Tokenizer& tokenizer, const json& line,
                     const std::string& raw_line) {
  DSMOE_CHECK(line["messages"].is_array(), "\"messages\" must be a list");
  DSMOE_CHECK(!line.contains("add_generation_prompt") || line["add_generation_prompt"].is_boolean(),
              "\"add_generation_prompt\" must be true or false");
  DSMOE_CHECK(!tokenizer.chat_template().empty(), "{}/tokenizer_config.json has no chat_template",
              tokenizer.dir());
  const std::string rendered = render_chat_template(tokenizer, raw_line);
  return json{{"rendered", rendered}, {"ids", tokenizer.encode(rendered, false)}};
}

json answer(const text::Tokenizer& tokenizer, const std::string& text) {
  json line;
  try {
    line = json::parse(text);
  } catch (const json::exception& e) {
    fail(fmt::format("not valid JSON: {}", e.what()));
  }
  DSMOE_CHECK(line.is_object() && (line.contains("text") || line.contains("messages")),
              "expected {{\"text\": ...}} or {{\"messages\": [...]}}");
  return line.contains("text") ? answer_text(tokenizer, line)
                               : answer_messages(tokenizer, line, text);
}

}  // namespace

Command add_tokenize(CLI::App& app) {
  auto dir = std::make_shared<std::string>();
  app.add_option("--tokenizer", *dir,
                 "directory with tokenizer.json (and tokenizer_config.json), e.g. a checkpoint")
      ->required();
  return [dir] {
    const auto tokenizer = text::Tokenizer::load(*dir);
    std::string line;
    for (int64_t line_number = 1; std::getline(std::cin, line); ++line_number) {
      json out;
      try {
        out = answer(tokenizer, line);
      } catch (const std::exception& e) {
        out = json{{"error", fmt::format("line {}: {}", line_number, e.what())}};
      }
      // Decoded text may cut a character in two: invalid bytes become U+FFFD in the JSON.
      std::cout << out.dump(-1, ' ', false, json::error_handler_t::replace) << '\n' << std::flush;
    }
    return 0;
  };
}

}  // namespace dsmoe::cli
