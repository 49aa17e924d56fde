// chat_template.cpp: see chat_template.h.
#include "text/chat_template.h"

#include "text/jinja_eval.h"
#include "text/jinja_parser.h"

namespace dsmoe::text {

ChatTemplate::ChatTemplate(std::string source)
    : source_(std::move(source)), body_(jinja::parse_template(source_)) {}

ChatTemplate::~ChatTemplate() = default;
ChatTemplate::ChatTemplate(ChatTemplate&&) noexcept = default;
ChatTemplate& ChatTemplate::operator=(ChatTemplate&&) noexcept = default;

std::string ChatTemplate::render(const nlohmann::json& context) const {
  return render(nlohmann::ordered_json::parse(context.dump()));
}

std::string ChatTemplate::render(const nlohmann::ordered_json& context) const {
  return jinja::Interpreter(context).render(body_);
}

}  // namespace dsmoe::text
