// jinja_lexer.cpp: see jinja_lexer.h. Follows jinja2's lexer.py rules for the environment
// transformers uses: ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True).
#include "text/jinja_lexer.h"

#include <algorithm>
#include <array>
#include <cctype>

#include "text/jinja_value.h"
#include "text/utf8.h"
#include "util/check.h"

namespace dsmoe::text::jinja {
namespace {

// jinja2 joins the source's lines with \n and drops one trailing newline
// (keep_trailing_newline=False).
std::string normalize_newlines(const std::string& source) {
  std::string out;
  out.reserve(source.size());
  for (size_t i = 0; i < source.size(); ++i) {
    if (source[i] == '\r') {
      out.push_back('\n');
      if (i + 1 < source.size() && source[i + 1] == '\n') ++i;
    } else {
      out.push_back(source[i]);
    }
  }
  if (!out.empty() && out.back() == '\n') out.pop_back();
  return out;
}

bool all_py_space(std::string_view s) {
  size_t pos = 0;
  while (pos < s.size())
    if (!is_py_space(next_code_point(s, &pos))) return false;
  return !s.empty();
}

// Python's "unicode-escape" decoding of a string literal's body, as jinja2 applies it.
std::string unescape(std::string_view body) {
  std::string out;
  for (size_t i = 0; i < body.size(); ++i) {
    if (body[i] != '\\' || i + 1 == body.size()) {
      out.push_back(body[i]);
      continue;
    }
    const char c = body[++i];
    const auto hex = [&](int digits) {
      int32_t value = 0;
      for (int d = 0; d < digits; ++d) {
        DSMOE_CHECK(i + 1 < body.size() && std::isxdigit(static_cast<unsigned char>(body[i + 1])),
                    "truncated \\x, \\u or \\U escape in a string literal");
        value = value * 16 + std::stoi(std::string(1, body[++i]), nullptr, 16);
      }
      append_utf8(out, value);
    };
    switch (c) {
      case '\n':
        break;  // line continuation
      case '\\':
        out.push_back('\\');
        break;
      case '\'':
        out.push_back('\'');
        break;
      case '"':
        out.push_back('"');
        break;
      case 'a':
        out.push_back('\a');
        break;
      case 'b':
        out.push_back('\b');
        break;
      case 'f':
        out.push_back('\f');
        break;
      case 'n':
        out.push_back('\n');
        break;
      case 'r':
        out.push_back('\r');
        break;
      case 't':
        out.push_back('\t');
        break;
      case 'v':
        out.push_back('\v');
        break;
      case 'x':
        hex(2);
        break;
      case 'u':
        hex(4);
        break;
      case 'U':
        hex(8);
        break;
      default:
        if (c >= '0' && c <= '7') {
          int32_t value = c - '0';
          for (int d = 0; d < 2 && i + 1 < body.size() && body[i + 1] >= '0' && body[i + 1] <= '7';
               ++d)
            value = value * 8 + (body[++i] - '0');
          append_utf8(out, value);
        } else {
          out.push_back('\\');
          out.push_back(c);
        }
    }
  }
  return out;
}

class Lexer {
 public:
  explicit Lexer(std::string source) : source_(std::move(source)) {
    line_starts_.push_back(0);
    for (size_t i = 0; i < source_.size(); ++i)
      if (source_[i] == '\n') line_starts_.push_back(i + 1);
  }

  std::vector<Token> run() {
    bool line_starting = true;  // the previous match ended a line (jinja2's lstrip rule)
    while (pos_ < source_.size()) {
      const size_t tag = find_tag(pos_);
      std::string text = source_.substr(pos_, tag - pos_);
      if (tag == source_.size()) {
        emit_text(std::move(text), pos_);
        break;
      }
      const char type = source_[tag + 1];  // '{', '%' or '#'
      const char sign = tag + 2 < source_.size() ? source_[tag + 2] : '\0';
      if (sign == '-') {
        text.resize(rstrip_size(text));
      } else if (sign != '+' && type != '{') {
        const size_t line_start = text.rfind('\n') + 1;  // 0 when there is no newline
        if ((line_start > 0 || line_starting) &&
            all_py_space(std::string_view(text).substr(line_start)))
          text.resize(line_start);
      }
      emit_text(std::move(text), pos_);
      pos_ = tag + 2 + ((sign == '-' || sign == '+') ? 1 : 0);
      if (type == '#') {
        skip_comment(tag);
      } else if (type == '%' && try_raw(tag)) {
      } else {
        lex_tag(tag, type == '%');
      }
      line_starting = pos_ > 0 && source_[pos_ - 1] == '\n';
    }
    tokens_.push_back({TokenKind::kEnd, "", 0, 0});
    locate(&tokens_.back(), source_.size());
    return std::move(tokens_);
  }

 private:
  size_t find_tag(size_t from) const {
    for (size_t i = from; i + 1 < source_.size(); ++i) {
      if (source_[i] == '{' &&
          (source_[i + 1] == '{' || source_[i + 1] == '%' || source_[i + 1] == '#'))
        return i;
    }
    return source_.size();
  }

  void locate(Token* token, size_t offset) const {
    const auto it = std::upper_bound(line_starts_.begin(), line_starts_.end(), offset) - 1;
    token->line = static_cast<int>(it - line_starts_.begin()) + 1;
    int column = 1;  // code points from the line start: count the bytes that begin one
    for (size_t i = *it; i < offset; ++i)
      if ((static_cast<uint8_t>(source_[i]) & 0xC0) != 0x80) ++column;
    token->column = column;
  }

  [[noreturn]] void fail_at(size_t offset, const std::string& message) const {
    Token where{TokenKind::kEnd, "", 0, 0};
    locate(&where, offset);
    fail(fmt::format("chat template {}: {}", position(where.line, where.column), message));
  }

  void emit(TokenKind kind, std::string value, size_t offset) {
    tokens_.push_back({kind, std::move(value), 0, 0});
    locate(&tokens_.back(), offset);
  }

  void emit_text(std::string text, size_t offset) {
    if (!text.empty()) emit(TokenKind::kText, std::move(text), offset);
  }

  // After a tag's end: `-` strips all following whitespace; otherwise trim_blocks removes one
  // newline after a block or comment tag (`+` keeps it).
  void after_tag_end(char sign, bool is_block) {
    if (sign == '-') {
      pos_ = source_.size() - lstrip_size(std::string_view(source_).substr(pos_));
    } else if (sign != '+' && is_block && pos_ < source_.size() && source_[pos_] == '\n') {
      ++pos_;
    }
  }

  void skip_comment(size_t tag) {
    const size_t end = source_.find("#}", pos_);
    if (end == std::string::npos) fail_at(tag, "unexpected end of template, expected '#}'");
    const char sign = end > pos_ && (source_[end - 1] == '-' || source_[end - 1] == '+')
                          ? source_[end - 1]
                          : '\0';
    pos_ = end + 2;
    after_tag_end(sign, true);
  }

  // {% raw %}...{% endraw %}: the body is text, untouched.
  bool try_raw(size_t tag) {
    size_t p = pos_;
    while (p < source_.size() && std::isspace(static_cast<unsigned char>(source_[p]))) ++p;
    if (source_.compare(p, 3, "raw") != 0) return false;
    p += 3;
    while (p < source_.size() && std::isspace(static_cast<unsigned char>(source_[p]))) ++p;
    const bool minus = source_.compare(p, 3, "-%}") == 0;
    if (!minus && source_.compare(p, 2, "%}") != 0) return false;
    pos_ = p + (minus ? 3 : 2);
    if (minus) after_tag_end('-', true);
    for (size_t search = pos_;;) {
      const size_t begin = source_.find("{%", search);
      if (begin == std::string::npos) fail_at(tag, "missing {% endraw %}");
      size_t q = begin + 2;
      const char sign =
          q < source_.size() && (source_[q] == '-' || source_[q] == '+') ? source_[q++] : '\0';
      while (q < source_.size() && std::isspace(static_cast<unsigned char>(source_[q]))) ++q;
      if (source_.compare(q, 6, "endraw") != 0) {
        search = begin + 2;
        continue;
      }
      q += 6;
      while (q < source_.size() && std::isspace(static_cast<unsigned char>(source_[q]))) ++q;
      const char end_sign = source_[q] == '-' || source_[q] == '+' ? source_[q++] : '\0';
      if (source_.compare(q, 2, "%}") != 0) fail_at(begin, "expected '%}' after endraw");
      std::string body = source_.substr(pos_, begin - pos_);
      if (sign == '-') body.resize(rstrip_size(body));
      emit_text(std::move(body), pos_);
      pos_ = q + 2;
      after_tag_end(end_sign, true);
      return true;
    }
  }

  void lex_tag(size_t tag, bool is_block) {
    emit(is_block ? TokenKind::kBlockBegin : TokenKind::kVariableBegin, "", tag);
    const char* close = is_block ? "%}" : "}}";
    while (true) {
      while (pos_ < source_.size() && std::isspace(static_cast<unsigned char>(source_[pos_])))
        ++pos_;
      if (pos_ >= source_.size())
        fail_at(tag, fmt::format("unexpected end of template, expected '{}'", close));
      char sign = '\0';
      if ((source_[pos_] == '-' || (is_block && source_[pos_] == '+')) &&
          source_.compare(pos_ + 1, 2, close) == 0)
        sign = source_[pos_];
      if (sign != '\0' || source_.compare(pos_, 2, close) == 0) {
        emit(is_block ? TokenKind::kBlockEnd : TokenKind::kVariableEnd, "", pos_);
        pos_ += sign != '\0' ? 3 : 2;
        after_tag_end(sign, is_block);
        return;
      }
      lex_token();
    }
  }

  void lex_token() {
    const size_t start = pos_;
    const char c = source_[pos_];
    if (std::isalpha(static_cast<unsigned char>(c)) || c == '_') {
      while (pos_ < source_.size() &&
             (std::isalnum(static_cast<unsigned char>(source_[pos_])) || source_[pos_] == '_'))
        ++pos_;
      return emit(TokenKind::kName, source_.substr(start, pos_ - start), start);
    }
    if (std::isdigit(static_cast<unsigned char>(c))) return lex_number();
    if (c == '\'' || c == '"') {
      for (++pos_; pos_ < source_.size() && source_[pos_] != c; ++pos_)
        if (source_[pos_] == '\\') ++pos_;
      if (pos_ >= source_.size()) fail_at(start, "unterminated string literal");
      ++pos_;
      const std::string body = source_.substr(start + 1, pos_ - start - 2);
      return emit(TokenKind::kString, unescape(body), start);
    }
    static const std::array<const char*, 6> two_char = {"//", "**", "==", "!=", "<=", ">="};
    for (const char* op : two_char) {
      if (source_.compare(pos_, 2, op) == 0) {
        pos_ += 2;
        return emit(TokenKind::kOperator, op, start);
      }
    }
    if (std::string_view("+-*/%~<>=()[]{},.:|").find(c) != std::string_view::npos) {
      ++pos_;
      return emit(TokenKind::kOperator, std::string(1, c), start);
    }
    fail_at(start, fmt::format("unexpected character '{}'", c));
  }

  void lex_number() {
    const size_t start = pos_;
    const auto digits = [&] {
      while (pos_ < source_.size() &&
             (std::isdigit(static_cast<unsigned char>(source_[pos_])) || source_[pos_] == '_'))
        ++pos_;
    };
    digits();
    bool is_float = false;
    if (pos_ + 1 < source_.size() && source_[pos_] == '.' &&
        std::isdigit(static_cast<unsigned char>(source_[pos_ + 1]))) {
      is_float = true;
      ++pos_;
      digits();
    }
    if (pos_ < source_.size() && (source_[pos_] == 'e' || source_[pos_] == 'E')) {
      size_t p = pos_ + 1;
      if (p < source_.size() && (source_[p] == '+' || source_[p] == '-')) ++p;
      if (p < source_.size() && std::isdigit(static_cast<unsigned char>(source_[p]))) {
        is_float = true;
        pos_ = p;
        digits();
      }
    }
    std::string text = source_.substr(start, pos_ - start);
    text.erase(std::remove(text.begin(), text.end(), '_'), text.end());
    emit(is_float ? TokenKind::kFloat : TokenKind::kInteger, text, start);
  }

  std::string source_;
  std::vector<size_t> line_starts_;
  size_t pos_ = 0;
  std::vector<Token> tokens_;
};

}  // namespace

std::string position(int line, int column) { return fmt::format("line {}:{}", line, column); }

std::vector<Token> tokenize(const std::string& source) {
  return Lexer(normalize_newlines(source)).run();
}

}  // namespace dsmoe::text::jinja
