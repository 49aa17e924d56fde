// chat_template.h: renders a checkpoint's chat_template (tokenizer_config.json) as Hugging Face
// transformers renders it: jinja2's ImmutableSandboxedEnvironment(trim_blocks=True,
// lstrip_blocks=True) with loop controls, raise_exception, strftime_now and transformers' tojson.
//
// The Jinja subset (jinja_*.{h,cpp}): {{ }}, {% %}, {# #} with -/+ whitespace control; if/elif/
// else, for (else, `if` filter, tuple targets, loop.index0/index/revindex/first/last/length/
// previtem/nextitem), break/continue, set (names, tuples, ns.attr, block set), macro with
// defaults, raw, generation; jinja2's scoping of loops and macros; literals, + - * / // % ** ~,
// comparisons (chained), in/not in, and/or/not, a if b else c, subscripts and slices; str
// methods (strip, split, startswith, replace, upper, ...) and dict get/items/keys/values;
// common filters and tests; undefined values as jinja2's default Undefined. Not supported:
// include/extends/block/call/filter/with tags, loop.cycle, recursive loops, string % and
// format(), undefined values inside list or dict literals; tuples print as lists.
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
