// dtype.h: the element types a checkpoint may hold, and their conversions to float32.
#pragma once
#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

namespace dsmoe {

enum class DType { kF64, kF32, kF16, kBF16, kF8_E4M3, kI64, kI32, kI16, kI8, kU8, kBool };

// Bytes per element.
size_t dtype_size(DType dtype);
// The safetensors spelling ("F32", "BF16", "F8_E4M3", ...).
const char* dtype_name(DType dtype);
// Parses the safetensors spelling; nullopt when unknown.
std::optional<DType> parse_dtype(std::string_view name);
bool dtype_is_float(DType dtype);

// Scalar conversions. bf16/f16 from float32 round to nearest even; f8 e4m3fn has no inf,
// NaN is S.1111.111, max finite 448.
float bf16_to_f32(uint16_t bits);
uint16_t f32_to_bf16(float value);
float f16_to_f32(uint16_t bits);
uint16_t f32_to_f16(float value);
float f8e4m3_to_f32(uint8_t bits);
uint8_t f32_to_f8e4m3(float value);

// Converts n elements of a floating dtype (F64, F32, F16, BF16, F8_E4M3) to float32.
// src may be unaligned.
void convert_to_f32(const void* src, DType dtype, size_t n, float* dst);

}  // namespace dsmoe
