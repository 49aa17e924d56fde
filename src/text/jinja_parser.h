// jinja_parser.h: parses template tokens into statements (jinja2's grammar and operator
// precedence for the subset chat templates use).
#pragma once
#include <string>

#include "text/jinja_ast.h"

namespace dsmoe::text::jinja {

// Parses a whole template. A syntax error throws dsmoe::Error naming line:column and what was
// expected there.
Body parse_template(const std::string& source);

}  // namespace dsmoe::text::jinja
