#include "tensor/dtype.h"

#include <array>
#include <cmath>
#include <cstring>
#include <limits>

#include "util/check.h"

namespace dsmoe {
namespace {

struct DTypeEntry {
  DType dtype;
  const char* name;
  size_t size;
};

constexpr std::array<DTypeEntry, 11> kDTypes = {{
    {DType::kF64, "F64", 8},
    {DType::kF32, "F32", 4},
    {DType::kF16, "F16", 2},
    {DType::kBF16, "BF16", 2},
    {DType::kF8_E4M3, "F8_E4M3", 1},
    {DType::kI64, "I64", 8},
    {DType::kI32, "I32", 4},
    {DType::kI16, "I16", 2},
    {DType::kI8, "I8", 1},
    {DType::kU8, "U8", 1},
    {DType::kBool, "BOOL", 1},
}};

const DTypeEntry& entry(DType dtype) {
  for (const DTypeEntry& e : kDTypes)
    if (e.dtype == dtype) return e;
  fail(fmt::format("invalid DType value {}", static_cast<int>(dtype)));
}

uint32_t float_bits(float value) {
  uint32_t bits;
  std::memcpy(&bits, &value, sizeof bits);
  return bits;
}

float bits_float(uint32_t bits) {
  float value;
  std::memcpy(&value, &bits, sizeof value);
  return value;
}

// Shifts `mantissa` right by `shift` (1..31) and rounds the result to nearest, ties to even.
// A carry out of the mantissa field is fine: it bumps the exponent, which is the right answer.
uint32_t shift_round_even(uint32_t mantissa, int shift) {
  uint32_t kept = mantissa >> shift;
  uint32_t rest = mantissa & ((1u << shift) - 1);
  uint32_t half = 1u << (shift - 1);
  if (rest > half || (rest == half && (kept & 1))) ++kept;
  return kept;
}

// Rounds a finite |x| (f32 bits, sign cleared) into a small float format with `mant_bits` of
// mantissa and exponent bias `bias`, assuming the caller already handled overflow. Returns the
// encoding without the sign; subnormals and underflow to zero round to nearest even as well.
uint32_t round_to_small_float(uint32_t abs_bits, int mant_bits, int bias) {
  const int exp = static_cast<int>(abs_bits >> 23);  // biased f32 exponent
  const uint32_t frac = abs_bits & 0x7FFFFF;
  const int min_normal_exp = 127 - bias + 1;  // f32 exponent of the format's 2^(1-bias)
  if (exp >= min_normal_exp) {
    uint32_t encoded =
        (static_cast<uint32_t>(exp - (127 - bias)) << mant_bits) | (frac >> (23 - mant_bits));
    uint32_t rest = frac & ((1u << (23 - mant_bits)) - 1);
    uint32_t half = 1u << (22 - mant_bits);
    if (rest > half || (rest == half && (encoded & 1))) ++encoded;
    return encoded;
  }
  // Subnormal target: value = m * 2^(exp - 150) and one subnormal step is 2^(1 - bias - mant_bits),
  // so the subnormal mantissa is m >> shift. m < 2^24, so a shift of 25 or more rounds to zero.
  if (exp == 0) return 0;  // f32 subnormals are far below any small format's smallest step
  const uint32_t m = frac | 0x800000;
  const int shift = (min_normal_exp - exp) + (23 - mant_bits);
  if (shift > 24) return 0;
  return shift_round_even(m, shift);
}

// All 256 e4m3fn values, so that bulk conversion is one lookup per element.
const std::array<float, 256>& f8e4m3_table() {
  static const std::array<float, 256> table = [] {
    std::array<float, 256> t{};
    for (int i = 0; i < 256; ++i) t[i] = f8e4m3_to_f32(static_cast<uint8_t>(i));
    return t;
  }();
  return table;
}

template <typename Bits, typename Fn>
void convert_each(const void* src, size_t n, float* dst, Fn fn) {
  const auto* bytes = static_cast<const uint8_t*>(src);
  for (size_t i = 0; i < n; ++i) {
    Bits bits;
    std::memcpy(&bits, bytes + i * sizeof(Bits), sizeof(Bits));
    dst[i] = fn(bits);
  }
}

}  // namespace

size_t dtype_size(DType dtype) { return entry(dtype).size; }

const char* dtype_name(DType dtype) { return entry(dtype).name; }

std::optional<DType> parse_dtype(std::string_view name) {
  for (const DTypeEntry& e : kDTypes)
    if (name == e.name) return e.dtype;
  return std::nullopt;
}

bool dtype_is_float(DType dtype) {
  switch (dtype) {
    case DType::kF64:
    case DType::kF32:
    case DType::kF16:
    case DType::kBF16:
    case DType::kF8_E4M3:
      return true;
    default:
      return false;
  }
}

float bf16_to_f32(uint16_t bits) { return bits_float(static_cast<uint32_t>(bits) << 16); }

uint16_t f32_to_bf16(float value) {
  uint32_t bits = float_bits(value);
  // Truncating a NaN whose payload sits in the low 16 bits would turn it into inf; keep it a
  // (quiet) NaN instead.
  if ((bits & 0x7FFFFFFF) > 0x7F800000) return static_cast<uint16_t>((bits >> 16) | 0x0040);
  // Round to nearest even; finite values past the largest bf16 correctly become inf.
  bits += 0x7FFF + ((bits >> 16) & 1);
  return static_cast<uint16_t>(bits >> 16);
}

float f16_to_f32(uint16_t bits) {
  const uint32_t sign = static_cast<uint32_t>(bits & 0x8000) << 16;
  const uint32_t exp = (bits >> 10) & 0x1F;
  const uint32_t mant = bits & 0x3FF;
  if (exp == 0) {  // zero or subnormal: mant * 2^-24, exact in f32
    float magnitude = std::ldexp(static_cast<float>(mant), -24);
    return sign ? -magnitude : magnitude;
  }
  if (exp == 31) return bits_float(sign | 0x7F800000 | (mant << 13));  // inf, or NaN with payload
  return bits_float(sign | ((exp + 112) << 23) | (mant << 13));
}

uint16_t f32_to_f16(float value) {
  const uint32_t bits = float_bits(value);
  const uint16_t sign = static_cast<uint16_t>((bits >> 16) & 0x8000);
  const uint32_t abs_bits = bits & 0x7FFFFFFF;
  if (abs_bits > 0x7F800000)  // NaN: keep the top payload bits and force the quiet bit
    return static_cast<uint16_t>(sign | 0x7E00 | ((abs_bits >> 13) & 0x3FF));
  // 65520 is the midpoint between 65504 (max, odd mantissa) and 65536; ties go to inf.
  if (abs_bits >= 0x477FF000) return static_cast<uint16_t>(sign | 0x7C00);
  return static_cast<uint16_t>(sign | round_to_small_float(abs_bits, 10, 15));
}

float f8e4m3_to_f32(uint8_t bits) {
  const bool negative = bits & 0x80;
  if ((bits & 0x7F) == 0x7F)
    return std::copysign(std::numeric_limits<float>::quiet_NaN(), negative ? -1.0f : 1.0f);
  const int exp = (bits >> 3) & 0xF;
  const int mant = bits & 0x7;
  float magnitude = exp == 0 ? std::ldexp(static_cast<float>(mant), -9)
                             : std::ldexp(static_cast<float>(8 + mant), exp - 10);
  return negative ? -magnitude : magnitude;
}

uint8_t f32_to_f8e4m3(float value) {
  const uint32_t bits = float_bits(value);
  const uint8_t sign = static_cast<uint8_t>((bits >> 24) & 0x80);
  const uint32_t abs_bits = bits & 0x7FFFFFFF;
  if (abs_bits > 0x7F800000) return static_cast<uint8_t>(sign | 0x7F);
  // e4m3fn has no inf: saturate (as the DeepSeek / PyTorch quantizers do) instead of overflowing
  // into the NaN code. Below 448 rounding can reach at most 448 itself.
  if (abs_bits >= float_bits(448.0f)) return static_cast<uint8_t>(sign | 0x7E);
  return static_cast<uint8_t>(sign | round_to_small_float(abs_bits, 3, 7));
}

void convert_to_f32(const void* src, DType dtype, size_t n, float* dst) {
  // Large tensors (loading a checkpoint) in chunks on all threads; the pages of the file are
  // read in parallel too.
  constexpr size_t kChunk = size_t{1} << 20;
  if (n > 2 * kChunk && dtype != DType::kF8_E4M3 && dtype_is_float(dtype)) {
    const size_t n_chunks = (n + kChunk - 1) / kChunk, elem = dtype_size(dtype);
#pragma omp parallel for schedule(static)
    for (size_t c = 0; c < n_chunks; c++) {
      const size_t begin = c * kChunk, len = std::min(kChunk, n - begin);
      convert_to_f32(static_cast<const uint8_t*>(src) + begin * elem, dtype, len, dst + begin);
    }
    return;
  }
  switch (dtype) {
    case DType::kF32:
      if (n > 0) std::memcpy(dst, src, n * sizeof(float));
      return;
    case DType::kF64:
      convert_each<double>(src, n, dst, [](double v) { return static_cast<float>(v); });
      return;
    case DType::kF16:
      convert_each<uint16_t>(src, n, dst, f16_to_f32);
      return;
    case DType::kBF16:
      convert_each<uint16_t>(src, n, dst, bf16_to_f32);
      return;
    case DType::kF8_E4M3: {
      const auto& table = f8e4m3_table();
      const auto* bytes = static_cast<const uint8_t*>(src);
      for (size_t i = 0; i < n; ++i) dst[i] = table[bytes[i]];
      return;
    }
    default:
      fail(fmt::format("cannot convert dtype {} to float32: not a floating type",
                       dtype_name(dtype)));
  }
}

}  // namespace dsmoe
