// regex.cpp: see regex.h.
#define PCRE2_CODE_UNIT_WIDTH 8
#include "text/regex.h"

#include <pcre2.h>

#include <cctype>
#include <utility>

#include "util/check.h"

namespace dsmoe::text {
namespace {

// One pair is enough: only the whole match is read (a smaller ovector still reports it).
constexpr uint32_t kOvectorPairs = 1;
constexpr size_t kErrorMessageSize = 256;

std::string pcre2_message(int code) {
  PCRE2_UCHAR buffer[kErrorMessageSize];
  pcre2_get_error_message(code, buffer, sizeof buffer);
  return reinterpret_cast<const char*>(buffer);
}

pcre2_code* as_code(void* code) { return static_cast<pcre2_code*>(code); }

}  // namespace

MatchScratch::MatchScratch() : data_(pcre2_match_data_create(kOvectorPairs, nullptr)) {
  DSMOE_CHECK(data_ != nullptr, "out of memory creating PCRE2 match data");
}

MatchScratch::~MatchScratch() { pcre2_match_data_free(static_cast<pcre2_match_data*>(data_)); }

std::string oniguruma_to_pcre2(std::string_view pattern, std::string_view where) {
  std::string out;
  bool in_class = false;
  for (size_t i = 0; i < pattern.size(); ++i) {
    const char c = pattern[i];
    if (c == '[' && !in_class) {
      in_class = true;
      out += c;
      // A ']' right after '[' or '[^' is a literal in both syntaxes.
      if (i + 1 < pattern.size() && pattern[i + 1] == '^') out += pattern[++i];
      if (i + 1 < pattern.size() && pattern[i + 1] == ']') out += pattern[++i];
      continue;
    }
    if (c == ']' && in_class) in_class = false;
    if (c != '\\' || i + 1 == pattern.size()) {
      out += c;
      continue;
    }
    const char escaped = pattern[++i];
    switch (escaped) {
      case 's':
        out += "\\p{White_Space}";
        break;
      case 'S':
        out += "\\P{White_Space}";
        break;
      case 'h':
        out += in_class ? "0-9a-fA-F" : "[0-9a-fA-F]";
        break;
      case 'H':
        DSMOE_CHECK(!in_class, "{}: \\H inside a character class is not supported", where);
        out += "[^0-9a-fA-F]";
        break;
      case 'u':
        if (i + 4 < pattern.size() && std::isxdigit(static_cast<unsigned char>(pattern[i + 1])) &&
            std::isxdigit(static_cast<unsigned char>(pattern[i + 2])) &&
            std::isxdigit(static_cast<unsigned char>(pattern[i + 3])) &&
            std::isxdigit(static_cast<unsigned char>(pattern[i + 4]))) {
          out += "\\x{" + std::string(pattern.substr(i + 1, 4)) + "}";
          i += 4;
          break;
        }
        [[fallthrough]];
      default:
        out += '\\';
        out += escaped;
    }
  }
  return out;
}

Regex::Regex(std::string_view oniguruma_pattern, std::string_view where)
    : pattern_(oniguruma_pattern) {
  const std::string translated = oniguruma_to_pcre2(oniguruma_pattern, where);
  pcre2_compile_context* context = pcre2_compile_context_create(nullptr);
  // Oniguruma's Ruby syntax: `^`/`$` match at line starts/ends, and a line ends at '\n' only.
  pcre2_set_newline(context, PCRE2_NEWLINE_LF);
  int error_code = 0;
  PCRE2_SIZE error_offset = 0;
  pcre2_code* code =
      pcre2_compile(reinterpret_cast<PCRE2_SPTR>(translated.data()), translated.size(),
                    PCRE2_UTF | PCRE2_UCP | PCRE2_MULTILINE, &error_code, &error_offset, context);
  pcre2_compile_context_free(context);
  DSMOE_CHECK(code != nullptr, "{}: regex '{}' does not compile (as PCRE2 '{}'): {} at offset {}",
              where, pattern_, translated, pcre2_message(error_code), error_offset);
  code_ = code;
  jit_ = pcre2_jit_compile(code, PCRE2_JIT_COMPLETE) == 0;
}

Regex::~Regex() { pcre2_code_free(as_code(code_)); }

Regex::Regex(Regex&& other) noexcept
    : pattern_(std::move(other.pattern_)),
      code_(std::exchange(other.code_, nullptr)),
      jit_(other.jit_) {}

Regex& Regex::operator=(Regex&& other) noexcept {
  std::swap(pattern_, other.pattern_);
  std::swap(code_, other.code_);
  std::swap(jit_, other.jit_);
  return *this;
}

bool Regex::find(std::string_view subject, size_t start, MatchScratch& scratch, size_t* match_start,
                 size_t* match_end) const {
  auto* match_data = static_cast<pcre2_match_data*>(scratch.data());
  const auto* text = reinterpret_cast<PCRE2_SPTR>(subject.data());
  // Subjects are checked for valid UTF-8 once, before they get here.
  const int rc =
      jit_ ? pcre2_jit_match(as_code(code_), text, subject.size(), start, 0, match_data, nullptr)
           : pcre2_match(as_code(code_), text, subject.size(), start, PCRE2_NO_UTF_CHECK,
                         match_data, nullptr);
  if (rc == PCRE2_ERROR_NOMATCH) return false;
  DSMOE_CHECK(rc >= 0, "regex '{}' failed on a piece of {} bytes: {}", pattern_, subject.size(),
              pcre2_message(rc));
  const PCRE2_SIZE* ovector = pcre2_get_ovector_pointer(match_data);
  *match_start = ovector[0];
  *match_end = ovector[1];
  return true;
}

bool Regex::matches_at_start(std::string_view subject, MatchScratch& scratch) const {
  auto* match_data = static_cast<pcre2_match_data*>(scratch.data());
  const int rc =
      pcre2_match(as_code(code_), reinterpret_cast<PCRE2_SPTR>(subject.data()), subject.size(), 0,
                  PCRE2_ANCHORED | PCRE2_NO_UTF_CHECK, match_data, nullptr);
  return rc >= 0;
}

}  // namespace dsmoe::text
