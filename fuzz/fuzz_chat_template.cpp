// fuzz_chat_template: a template (the bytes before the first NUL) rendered with messages (the JSON
// after it, or a fixed conversation): output or an Error, never a crash or a hang.
#include <cstring>
#include <nlohmann/json.hpp>

#include "fuzz/fuzz_util.h"
#include "text/chat_template.h"
#include "util/check.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view input = dsmoe::fuzz::as_view(data, size);
  const size_t split = input.find('\0');
  const std::string source(input.substr(0, split));
  nlohmann::json messages = nlohmann::json::parse(
      split == std::string_view::npos ? std::string_view("null") : input.substr(split + 1),
      nullptr, /*allow_exceptions=*/false);
  if (messages.is_discarded() || messages.is_null())
    messages = nlohmann::json::parse(
        R"([{"role":"system","content":"Be brief."},{"role":"user","content":"Hi"},)"
        R"({"role":"assistant","content":"<think>x</think>Hello","tool_calls":[{"type":"function",)"
        R"("function":{"name":"f","arguments":"{\"a\":1}"}}]},{"role":"tool","content":"42"}])");
  try {
    const dsmoe::text::ChatTemplate chat_template(source);
    const nlohmann::json context = {{"messages", messages},
                                    {"add_generation_prompt", true},
                                    {"bos_token", "<s>"},
                                    {"eos_token", "</s>"}};
    (void)chat_template.render(context);
  } catch (const dsmoe::Error&) {
  }
  return 0;
}
