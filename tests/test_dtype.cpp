// Tests for tensor/dtype: names and sizes, and the scalar and bulk float conversions.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

#include "tensor/dtype.h"
#include "util/check.h"

namespace dsmoe {
namespace {

const float kInf = std::numeric_limits<float>::infinity();
const float kNaN = std::numeric_limits<float>::quiet_NaN();

TEST(DType, NamesSizesAndParse) {
  const DType all[] = {DType::kF64,     DType::kF32, DType::kF16, DType::kBF16,
                       DType::kF8_E4M3, DType::kI64, DType::kI32, DType::kI16,
                       DType::kI8,      DType::kU8,  DType::kBool};
  for (DType d : all) EXPECT_EQ(parse_dtype(dtype_name(d)), d) << dtype_name(d);
  EXPECT_STREQ(dtype_name(DType::kBF16), "BF16");
  EXPECT_STREQ(dtype_name(DType::kF8_E4M3), "F8_E4M3");
  EXPECT_STREQ(dtype_name(DType::kBool), "BOOL");
  EXPECT_EQ(dtype_size(DType::kF64), 8u);
  EXPECT_EQ(dtype_size(DType::kF32), 4u);
  EXPECT_EQ(dtype_size(DType::kBF16), 2u);
  EXPECT_EQ(dtype_size(DType::kF8_E4M3), 1u);
  EXPECT_EQ(dtype_size(DType::kI64), 8u);
  EXPECT_EQ(dtype_size(DType::kBool), 1u);
  EXPECT_EQ(parse_dtype("Q9"), std::nullopt);
  EXPECT_EQ(parse_dtype("f32"), std::nullopt);  // the spelling is case-sensitive
  EXPECT_TRUE(dtype_is_float(DType::kF8_E4M3));
  EXPECT_TRUE(dtype_is_float(DType::kF64));
  EXPECT_FALSE(dtype_is_float(DType::kI64));
  EXPECT_FALSE(dtype_is_float(DType::kBool));
}

TEST(DType, Bf16KnownValuesAndRounding) {
  EXPECT_EQ(f32_to_bf16(1.0f), 0x3F80);
  EXPECT_EQ(f32_to_bf16(-2.0f), 0xC000);
  EXPECT_EQ(bf16_to_f32(0x3F80), 1.0f);
  EXPECT_EQ(f32_to_bf16(kInf), 0x7F80);
  EXPECT_EQ(f32_to_bf16(-kInf), 0xFF80);
  // bf16 keeps 7 mantissa bits: 1 + 2^-8 is the tie between 1 and 1 + 2^-7 -> even (1).
  EXPECT_EQ(f32_to_bf16(1.0f + std::ldexp(1.0f, -8)), 0x3F80);
  // 1 + 3 * 2^-8 ties between 0x3F81 (odd) and 0x3F82 (even) -> 0x3F82.
  EXPECT_EQ(f32_to_bf16(1.0f + 3 * std::ldexp(1.0f, -8)), 0x3F82);
  // Just above the tie rounds up.
  EXPECT_EQ(f32_to_bf16(1.0f + std::ldexp(1.0f, -8) + std::ldexp(1.0f, -20)), 0x3F81);
  // The largest float rounds past the largest bf16 to inf.
  EXPECT_EQ(f32_to_bf16(std::numeric_limits<float>::max()), 0x7F80);
  EXPECT_TRUE(std::isnan(bf16_to_f32(f32_to_bf16(kNaN))));
  // A NaN whose payload is only in the low 16 bits must not become inf.
  uint32_t low_payload_nan = 0x7F800001;
  float nan;
  std::memcpy(&nan, &low_payload_nan, sizeof nan);
  EXPECT_TRUE(std::isnan(bf16_to_f32(f32_to_bf16(nan))));
}

TEST(DType, Bf16RoundTripsEveryCode) {
  for (uint32_t code = 0; code < 0x10000; ++code) {
    float value = bf16_to_f32(static_cast<uint16_t>(code));
    if (std::isnan(value)) {
      EXPECT_TRUE(std::isnan(bf16_to_f32(f32_to_bf16(value))));
      continue;
    }
    ASSERT_EQ(f32_to_bf16(value), code) << std::hex << code;
  }
}

TEST(DType, F16KnownValues) {
  EXPECT_EQ(f32_to_f16(1.0f), 0x3C00);
  EXPECT_EQ(f32_to_f16(-0.0f), 0x8000);
  EXPECT_EQ(f16_to_f32(0x3C00), 1.0f);
  EXPECT_EQ(f16_to_f32(0xC000), -2.0f);
  EXPECT_EQ(f16_to_f32(0x7BFF), 65504.0f);
  EXPECT_EQ(f16_to_f32(0x0001), std::ldexp(1.0f, -24));  // smallest subnormal
  EXPECT_EQ(f16_to_f32(0x03FF), 1023 * std::ldexp(1.0f, -24));
  EXPECT_EQ(f16_to_f32(0x0400), std::ldexp(1.0f, -14));  // smallest normal
  EXPECT_EQ(f16_to_f32(0x7C00), kInf);
  EXPECT_EQ(f16_to_f32(0xFC00), -kInf);
  EXPECT_TRUE(std::isnan(f16_to_f32(0x7E00)));
  EXPECT_TRUE(std::isnan(f16_to_f32(0x7C01)));
  EXPECT_EQ(f32_to_f16(kInf), 0x7C00);
  EXPECT_EQ(f32_to_f16(-kInf), 0xFC00);
  EXPECT_TRUE(std::isnan(f16_to_f32(f32_to_f16(kNaN))));
  EXPECT_EQ(f32_to_f16(std::ldexp(1.0f, -24)), 0x0001);
  EXPECT_EQ(f32_to_f16(-std::ldexp(1.0f, -24)), 0x8001);
}

TEST(DType, F16RoundsToNearestEven) {
  // Normal range: 1 + 2^-11 ties between 1 and 1 + 2^-10 -> 1; 1 + 3 * 2^-11 -> 1 + 2^-9.
  EXPECT_EQ(f32_to_f16(1.0f + std::ldexp(1.0f, -11)), 0x3C00);
  EXPECT_EQ(f32_to_f16(1.0f + 3 * std::ldexp(1.0f, -11)), 0x3C02);
  // Overflow: 65519 rounds down to the max, the tie 65520 goes to inf.
  EXPECT_EQ(f32_to_f16(65519.0f), 0x7BFF);
  EXPECT_EQ(f32_to_f16(65520.0f), 0x7C00);
  EXPECT_EQ(f32_to_f16(1e6f), 0x7C00);
  // Subnormals: half the smallest step ties to 0, 1.5 steps tie to 2 steps.
  EXPECT_EQ(f32_to_f16(std::ldexp(1.0f, -25)), 0x0000);
  EXPECT_EQ(f32_to_f16(std::ldexp(1.0f, -25) * 1.0001f), 0x0001);
  EXPECT_EQ(f32_to_f16(3 * std::ldexp(1.0f, -25)), 0x0002);
  EXPECT_EQ(f32_to_f16(1e-10f), 0x0000);
  // The largest subnormal plus a half step rounds up into the smallest normal.
  EXPECT_EQ(f32_to_f16(1023.5f * std::ldexp(1.0f, -24)), 0x0400);
}

TEST(DType, F16RoundTripsEveryCode) {
  for (uint32_t code = 0; code < 0x10000; ++code) {
    float value = f16_to_f32(static_cast<uint16_t>(code));
    if (std::isnan(value)) {
      EXPECT_TRUE(std::isnan(f16_to_f32(f32_to_f16(value))));
      continue;
    }
    ASSERT_EQ(f32_to_f16(value), code) << std::hex << code;
  }
}

TEST(DType, F8E4M3KnownValues) {
  EXPECT_EQ(f8e4m3_to_f32(0x38), 1.0f);
  EXPECT_EQ(f8e4m3_to_f32(0x7E), 448.0f);
  EXPECT_EQ(f8e4m3_to_f32(0xFE), -448.0f);
  EXPECT_EQ(f8e4m3_to_f32(0x01), std::ldexp(1.0f, -9));
  EXPECT_EQ(f8e4m3_to_f32(0x07), 7 * std::ldexp(1.0f, -9));
  EXPECT_EQ(f8e4m3_to_f32(0x08), std::ldexp(1.0f, -6));
  EXPECT_EQ(f8e4m3_to_f32(0x00), 0.0f);
  EXPECT_TRUE(std::signbit(f8e4m3_to_f32(0x80)));
  EXPECT_TRUE(std::isnan(f8e4m3_to_f32(0x7F)));
  EXPECT_TRUE(std::isnan(f8e4m3_to_f32(0xFF)));
  EXPECT_EQ(f8e4m3_to_f32(0x78), 256.0f);  // exponent 15 is an ordinary exponent (no inf)
}

TEST(DType, F8E4M3FromF32RoundsAndSaturates) {
  EXPECT_EQ(f32_to_f8e4m3(1.0f), 0x38);
  EXPECT_EQ(f32_to_f8e4m3(448.0f), 0x7E);
  EXPECT_EQ(f32_to_f8e4m3(450.0f), 0x7E);
  EXPECT_EQ(f32_to_f8e4m3(1000.0f), 0x7E);
  EXPECT_EQ(f32_to_f8e4m3(-1000.0f), 0xFE);
  EXPECT_EQ(f32_to_f8e4m3(kInf), 0x7E);
  EXPECT_EQ(f32_to_f8e4m3(-kInf), 0xFE);
  EXPECT_TRUE(std::isnan(f8e4m3_to_f32(f32_to_f8e4m3(kNaN))));
  // 3 mantissa bits: 1 + 1/16 ties to 1, 1 + 3/16 ties to 1.25 (even), 1 + 1/16 + eps goes up.
  EXPECT_EQ(f32_to_f8e4m3(1.0625f), 0x38);
  EXPECT_EQ(f32_to_f8e4m3(1.1875f), 0x3A);
  EXPECT_EQ(f32_to_f8e4m3(1.07f), 0x39);
  // Subnormals (step 2^-9): half a step ties to 0, 1.5 steps to 2 steps.
  EXPECT_EQ(f32_to_f8e4m3(std::ldexp(1.0f, -10)), 0x00);
  EXPECT_EQ(f32_to_f8e4m3(3 * std::ldexp(1.0f, -10)), 0x02);
  EXPECT_EQ(f32_to_f8e4m3(std::ldexp(1.0f, -9)), 0x01);
  EXPECT_EQ(f32_to_f8e4m3(-std::ldexp(1.0f, -9)), 0x81);
  EXPECT_EQ(f32_to_f8e4m3(1e-10f), 0x00);
  // The largest subnormal plus a half step rounds up into the smallest normal.
  EXPECT_EQ(f32_to_f8e4m3(7.5f * std::ldexp(1.0f, -9)), 0x08);
}

TEST(DType, F8E4M3RoundTripsEveryCode) {
  for (int code = 0; code < 256; ++code) {
    if ((code & 0x7F) == 0x7F) continue;  // NaN
    EXPECT_EQ(f32_to_f8e4m3(f8e4m3_to_f32(static_cast<uint8_t>(code))), code) << code;
  }
}

// Each float dtype converts from a deliberately misaligned buffer.
TEST(DType, ConvertToF32FromUnalignedMemory) {
  const float values[] = {1.0f, -2.5f, 0.375f, 448.0f};
  std::vector<uint8_t> buffer(1 + sizeof(double) * 4);
  uint8_t* src = buffer.data() + 1;
  float out[4];

  for (int i = 0; i < 4; ++i) std::memcpy(src + 4 * i, &values[i], 4);
  convert_to_f32(src, DType::kF32, 4, out);
  for (int i = 0; i < 4; ++i) EXPECT_EQ(out[i], values[i]);

  for (int i = 0; i < 4; ++i) {
    double d = values[i];
    std::memcpy(src + 8 * i, &d, 8);
  }
  convert_to_f32(src, DType::kF64, 4, out);
  for (int i = 0; i < 4; ++i) EXPECT_EQ(out[i], values[i]);

  for (int i = 0; i < 4; ++i) {
    uint16_t h = f32_to_f16(values[i]);
    std::memcpy(src + 2 * i, &h, 2);
  }
  convert_to_f32(src, DType::kF16, 4, out);
  for (int i = 0; i < 4; ++i) EXPECT_EQ(out[i], values[i]);

  for (int i = 0; i < 4; ++i) {
    uint16_t b = f32_to_bf16(values[i]);
    std::memcpy(src + 2 * i, &b, 2);
  }
  convert_to_f32(src, DType::kBF16, 4, out);
  for (int i = 0; i < 4; ++i) EXPECT_EQ(out[i], values[i]);

  for (int i = 0; i < 4; ++i) src[i] = f32_to_f8e4m3(values[i]);
  convert_to_f32(src, DType::kF8_E4M3, 4, out);
  for (int i = 0; i < 4; ++i) EXPECT_EQ(out[i], values[i]);
}

TEST(DType, ConvertToF32RejectsIntegers) {
  int64_t ints[2] = {1, 2};
  float out[2];
  EXPECT_THROW(convert_to_f32(ints, DType::kI64, 2, out), Error);
  EXPECT_THROW(convert_to_f32(ints, DType::kBool, 2, out), Error);
  try {
    convert_to_f32(ints, DType::kI32, 2, out);
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("I32"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace dsmoe
