// utf8.cpp: see utf8.h.
#include "text/utf8.h"

namespace dsmoe::text {

int32_t next_code_point(std::string_view s, size_t* pos) {
  const size_t start = *pos;
  const auto byte = [&](size_t i) { return static_cast<uint8_t>(s[i]); };
  const uint8_t lead = byte(start);
  *pos = start + 1;
  if (lead < 0x80) return lead;
  int n_continuation = 0;
  int32_t code_point = 0;
  int32_t min_value = 0;
  if ((lead & 0xE0) == 0xC0) {
    n_continuation = 1, code_point = lead & 0x1F, min_value = 0x80;
  } else if ((lead & 0xF0) == 0xE0) {
    n_continuation = 2, code_point = lead & 0x0F, min_value = 0x800;
  } else if ((lead & 0xF8) == 0xF0) {
    n_continuation = 3, code_point = lead & 0x07, min_value = 0x10000;
  } else {
    return -1;
  }
  if (start + n_continuation >= s.size()) return -1;  // truncated
  for (int i = 1; i <= n_continuation; ++i) {
    const uint8_t next = byte(start + i);
    if ((next & 0xC0) != 0x80) return -1;
    code_point = (code_point << 6) | (next & 0x3F);
  }
  if (code_point < min_value || code_point > 0x10FFFF ||
      (code_point >= 0xD800 && code_point <= 0xDFFF))
    return -1;
  *pos = start + 1 + n_continuation;
  return code_point;
}

void append_utf8(std::string& out, int32_t code_point) {
  if (code_point < 0x80) {
    out.push_back(static_cast<char>(code_point));
  } else if (code_point < 0x800) {
    out.push_back(static_cast<char>(0xC0 | (code_point >> 6)));
    out.push_back(static_cast<char>(0x80 | (code_point & 0x3F)));
  } else if (code_point < 0x10000) {
    out.push_back(static_cast<char>(0xE0 | (code_point >> 12)));
    out.push_back(static_cast<char>(0x80 | ((code_point >> 6) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | (code_point & 0x3F)));
  } else {
    out.push_back(static_cast<char>(0xF0 | (code_point >> 18)));
    out.push_back(static_cast<char>(0x80 | ((code_point >> 12) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | ((code_point >> 6) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | (code_point & 0x3F)));
  }
}

bool is_valid_utf8(std::string_view s) {
  size_t pos = 0;
  while (pos < s.size())
    if (next_code_point(s, &pos) < 0) return false;
  return true;
}

}  // namespace dsmoe::text

namespace dsmoe::text {
namespace {

constexpr int32_t kReplacementCharacter = 0xFFFD;

// The number of bytes the sequence that starts with `lead` has, 0 for a byte that cannot lead.
int sequence_length(uint8_t lead) {
  if (lead < 0x80) return 1;
  if (lead >= 0xC2 && lead <= 0xDF) return 2;
  if ((lead & 0xF0) == 0xE0) return 3;
  if (lead >= 0xF0 && lead <= 0xF4) return 4;
  return 0;
}

// True when s (shorter than a whole sequence) could still become a valid sequence.
bool is_incomplete_prefix(std::string_view s) {
  const int length = sequence_length(static_cast<uint8_t>(s[0]));
  if (length <= static_cast<int>(s.size())) return false;
  // Pad with the smallest continuation bytes that keep every prefix check meaningful: decode
  // succeeds for some completion iff it succeeds with 0x80..0xBF completions; try both ends.
  for (const char fill : {'\x80', '\xBF'}) {
    std::string candidate(s);
    candidate.resize(length, fill);
    size_t pos = 0;
    if (next_code_point(candidate, &pos) >= 0) return true;
  }
  return false;
}

}  // namespace

size_t valid_utf8_prefix(std::string_view s) {
  size_t pos = 0;
  while (pos < s.size()) {
    // ASCII fast path: eight bytes at a time.
    while (pos + 8 <= s.size()) {
      uint64_t word = 0;
      for (int i = 0; i < 8; ++i)
        word |= static_cast<uint64_t>(static_cast<uint8_t>(s[pos + i])) << (8 * i);
      if (word & 0x8080808080808080ull) break;
      pos += 8;
    }
    if (pos >= s.size()) break;
    size_t next = pos;
    if (next_code_point(s, &next) < 0) return pos;
    pos = next;
  }
  return s.size();
}

bool is_white_space(int32_t cp) {
  if (cp <= 0x20) return cp == 0x20 || (cp >= 0x09 && cp <= 0x0D);
  if (cp < 0x85) return false;
  return cp == 0x85 || cp == 0xA0 || cp == 0x1680 || (cp >= 0x2000 && cp <= 0x200A) ||
         cp == 0x2028 || cp == 0x2029 || cp == 0x202F || cp == 0x205F || cp == 0x3000;
}

std::string Utf8Stream::push(std::string_view bytes) {
  pending_.append(bytes);
  std::string out;
  size_t pos = 0;
  while (pos < pending_.size()) {
    size_t next = pos;
    const int32_t code_point = next_code_point(pending_, &next);
    if (code_point >= 0) {
      out.append(pending_, pos, next - pos);
      pos = next;
    } else if (is_incomplete_prefix(std::string_view(pending_).substr(pos))) {
      break;  // wait for the rest of this sequence
    } else {
      append_utf8(out, kReplacementCharacter);
      pos = next;  // one byte
    }
  }
  pending_.erase(0, pos);
  return out;
}

std::string Utf8Stream::flush() {
  // push() leaves only the unfinished start of one sequence: one U+FFFD for it (a maximal
  // subpart, as Unicode recommends and Python's decode(errors="replace") does).
  std::string out;
  if (!pending_.empty()) append_utf8(out, kReplacementCharacter);
  pending_.clear();
  return out;
}

}  // namespace dsmoe::text
