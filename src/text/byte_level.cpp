// byte_level.cpp: see byte_level.h.
#include "text/byte_level.h"

#include <vector>

#include "text/utf8.h"

namespace dsmoe::text {
namespace {

constexpr int kNumBytes = 256;
constexpr int32_t kFirstShifted = 0x100;  // where the non-printable bytes go

bool is_printable_latin1(int byte) {
  return (byte >= '!' && byte <= '~') || (byte >= 0xA1 && byte <= 0xAC) ||
         (byte >= 0xAE && byte <= 0xFF);
}

struct Alphabet {
  std::array<int32_t, kNumBytes> code_point_of{};
  std::array<std::string, kNumBytes> string_of;
  std::vector<int16_t> byte_of;  // by code point, -1 outside the alphabet

  Alphabet() {
    int32_t next_shifted = kFirstShifted;
    for (int byte = 0; byte < kNumBytes; ++byte)
      code_point_of[byte] = is_printable_latin1(byte) ? byte : next_shifted++;
    byte_of.assign(next_shifted, -1);
    for (int byte = 0; byte < kNumBytes; ++byte) {
      append_utf8(string_of[byte], code_point_of[byte]);
      byte_of[code_point_of[byte]] = static_cast<int16_t>(byte);
    }
  }
};

const Alphabet& alphabet() {
  static const Alphabet instance;
  return instance;
}

}  // namespace

int32_t byte_to_code_point(uint8_t byte) { return alphabet().code_point_of[byte]; }

const std::string& byte_to_string(uint8_t byte) { return alphabet().string_of[byte]; }

std::optional<uint8_t> code_point_to_byte(int32_t code_point) {
  const auto& byte_of = alphabet().byte_of;
  if (code_point < 0 || code_point >= static_cast<int32_t>(byte_of.size())) return std::nullopt;
  if (byte_of[code_point] < 0) return std::nullopt;
  return static_cast<uint8_t>(byte_of[code_point]);
}

std::string byte_level_decode(std::string_view token) {
  std::string bytes;
  size_t pos = 0;
  while (pos < token.size()) {
    const std::optional<uint8_t> byte = code_point_to_byte(next_code_point(token, &pos));
    if (!byte) return std::string(token);
    bytes.push_back(static_cast<char>(*byte));
  }
  return bytes;
}

std::string byte_level_encode(std::string_view bytes) {
  std::string out;
  for (const char byte : bytes) out += byte_to_string(static_cast<uint8_t>(byte));
  return out;
}

}  // namespace dsmoe::text
