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
