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

}  // namespace dsmoe::text
