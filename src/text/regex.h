// regex.h: the regexes of tokenizer.json (Oniguruma syntax, as Hugging Face tokenizers runs them)
// compiled with PCRE2 (UTF + UCP, JIT), and the scratch space a match needs.
#pragma once
#include <cstddef>
#include <memory>
#include <string>
#include <string_view>

namespace dsmoe::text {

// Per-thread match state; one serves every Regex.
class MatchScratch {
 public:
  MatchScratch();
  ~MatchScratch();
  MatchScratch(const MatchScratch&) = delete;
  MatchScratch& operator=(const MatchScratch&) = delete;
  void* data() const { return data_; }

 private:
  void* data_;  // pcre2_match_data*
};

// Oniguruma (Ruby syntax) to PCRE2: `\s`/`\S` become \p{White_Space}/\P{White_Space} (PCRE2's own
// \s also matches U+180E), `\h`/`\H` (hex digits in Oniguruma) become explicit classes and
// `\uHHHH` becomes `\x{HHHH}`. Everything else means the same in both.
std::string oniguruma_to_pcre2(std::string_view pattern, std::string_view where);

class Regex {
 public:
  // `where` names the file and field for error messages.
  Regex(std::string_view oniguruma_pattern, std::string_view where);
  ~Regex();
  Regex(Regex&& other) noexcept;
  Regex& operator=(Regex&& other) noexcept;
  Regex(const Regex&) = delete;
  Regex& operator=(const Regex&) = delete;

  // Finds the first match in subject (valid UTF-8) at or after byte `start` (a code point
  // boundary); sets [*match_start, *match_end) and returns true, or returns false. `^`, `$` and
  // lookarounds see the subject only.
  bool find(std::string_view subject, size_t start, MatchScratch& scratch, size_t* match_start,
            size_t* match_end) const;

  // True when the regex matches at the very start of subject.
  bool matches_at_start(std::string_view subject, MatchScratch& scratch) const;

  const std::string& pattern() const { return pattern_; }

 private:
  std::string pattern_;   // as given, for messages
  void* code_ = nullptr;  // pcre2_code*
  bool jit_ = false;
};

}  // namespace dsmoe::text
