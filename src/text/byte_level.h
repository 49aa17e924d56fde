// byte_level.h: the byte-level alphabet of GPT-2 style BPE (tokenizers' ByteLevel): each of the 256
// byte values is written as one printable code point, so a token string never holds raw bytes.
#pragma once
#include <array>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

namespace dsmoe::text {

// The code point that stands for `byte` (GPT-2's bytes_to_unicode: printable Latin-1 bytes stand
// for themselves, the other 68 take U+0100.. in byte order; a space is U+0120 'Ġ').
int32_t byte_to_code_point(uint8_t byte);

// The UTF-8 string of byte_to_code_point(byte).
const std::string& byte_to_string(uint8_t byte);

// The byte a code point of the alphabet stands for; nullopt for any other code point.
std::optional<uint8_t> code_point_to_byte(int32_t code_point);

// A byte-level string back to its bytes (tokenizers' ByteLevel decoder, token by token): when
// every code point belongs to the alphabet, the bytes they stand for; otherwise (an added token
// such as "<｜User｜>") the string's own bytes, unchanged.
std::string byte_level_decode(std::string_view token);

// Raw bytes to their byte-level string.
std::string byte_level_encode(std::string_view bytes);

}  // namespace dsmoe::text
