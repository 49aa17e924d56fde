// jinja_lexer.h: splits a template into text and the tokens of its {{ }} and {% %} tags, with
// jinja2's whitespace control as transformers configures it (trim_blocks, lstrip_blocks, `-`
// and `+` markers, no trailing newline kept).
#pragma once
#include <string>
#include <vector>

namespace dsmoe::text::jinja {

enum class TokenKind {
  kText,           // literal output, whitespace control already applied
  kVariableBegin,  // {{
  kVariableEnd,    // }}
  kBlockBegin,     // {%
  kBlockEnd,       // %}
  kName,
  kString,   // value: the unescaped string
  kInteger,  // value: the digits
  kFloat,
  kOperator,  // + - * / // % ** ~ == != < <= > >= = ( ) [ ] { } , . : |
  kEnd,       // end of the template
};

struct Token {
  TokenKind kind;
  std::string value;
  int line = 0;    // 1-based
  int column = 0;  // 1-based, in code points
};

// Tokenizes a template (newlines \r\n and \r read as \n). A lexical error throws dsmoe::Error
// naming the line and column.
std::vector<Token> tokenize(const std::string& source);

// The "line L:C" position prefix used by every template error message.
std::string position(int line, int column);

}  // namespace dsmoe::text::jinja
