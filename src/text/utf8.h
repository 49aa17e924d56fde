// utf8.h: UTF-8 decoding and encoding shared by the tokenizer, the chat templates and the server.
#pragma once
#include <cstdint>
#include <string>
#include <string_view>

namespace dsmoe::text {

// Decodes the code point at s[*pos] and advances *pos past it. Returns -1 (and advances one
// byte) for an invalid or truncated sequence, an overlong form or a surrogate.
int32_t next_code_point(std::string_view s, size_t* pos);

// Appends the UTF-8 encoding of a code point (0 .. 0x10FFFF, not a surrogate).
void append_utf8(std::string& out, int32_t code_point);

// True when s is well-formed UTF-8.
bool is_valid_utf8(std::string_view s);

// The length of the longest well-formed UTF-8 prefix of s.
size_t valid_utf8_prefix(std::string_view s);

// Unicode White_Space (Rust's char::is_whitespace, Oniguruma's \s): U+0009-000D, U+0020, U+0085,
// U+00A0, U+1680, U+2000-200A, U+2028, U+2029, U+202F, U+205F, U+3000.
bool is_white_space(int32_t code_point);

// Turns a stream of bytes (token by token) into printable text: push() returns the longest
// complete UTF-8 prefix of what it has seen and keeps an incomplete tail (at most 3 bytes) for the
// next call; bytes that can never start or continue a valid sequence come out as U+FFFD.
// flush() ends the stream: an unfinished sequence left over comes out as one U+FFFD.
class Utf8Stream {
 public:
  std::string push(std::string_view bytes);
  std::string flush();

 private:
  std::string pending_;  // an incomplete sequence, at most 3 bytes
};

}  // namespace dsmoe::text
