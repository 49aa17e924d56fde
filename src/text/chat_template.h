// chat_template.h: renders a checkpoint's chat_template (tokenizer_config.json) as Hugging Face
// transformers renders it: jinja2's ImmutableSandboxedEnvironment(trim_blocks=True,
// lstrip_blocks=True) with loop controls, raise_exception, strftime_now and transformers' tojson.
// The Jinja subset is implemented in jinja_*.{h,cpp}; see docs there for what is covered.
#pragma once
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

namespace dsmoe::text {

namespace jinja {
struct Stmt;
}

class ChatTemplate {
 public:
  // Parses the template; a syntax error throws dsmoe::Error naming line:column and what was
  // expected.
  explicit ChatTemplate(std::string source);
  ~ChatTemplate();
  ChatTemplate(ChatTemplate&&) noexcept;
  ChatTemplate& operator=(ChatTemplate&&) noexcept;

  // Renders with the variables of `context`: messages, add_generation_prompt, bos_token,
  // eos_token, tools, ... (whatever the template reads). Runtime errors (raise_exception, an
  // unknown filter, a type error) throw dsmoe::Error with the message; raise_exception's is the
  // template's message alone. Dict keys keep their order only through the ordered_json overload
  // (nlohmann::json sorts them), which matters where the template prints dicts (tojson).
  std::string render(const nlohmann::json& context) const;
  std::string render(const nlohmann::ordered_json& context) const;

  const std::string& source() const { return source_; }

 private:
  std::string source_;
  std::vector<std::unique_ptr<jinja::Stmt>> body_;
};

}  // namespace dsmoe::text
