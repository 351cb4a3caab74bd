// Element types of tensors and the exact conversions between them.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string_view>

#include "absl/status/statusor.h"

namespace shardlm {

enum class DType : uint8_t { kF32, kF16, kBF16 };

size_t DTypeSize(DType dtype);
// Safetensors spelling: "F32", "F16", "BF16".
const char* DTypeName(DType dtype);
absl::StatusOr<DType> ParseDType(std::string_view name);

// bf16 <-> f32. The f32 -> bf16 direction rounds to nearest even (NaN stays NaN).
inline float Bf16ToF32(uint16_t h) {
  uint32_t bits = static_cast<uint32_t>(h) << 16;
  float f;
  std::memcpy(&f, &bits, sizeof f);
  return f;
}
uint16_t F32ToBf16(float f);

// IEEE binary16 <-> f32. The f32 -> f16 direction rounds to nearest even, saturating to inf.
float F16ToF32(uint16_t h);
uint16_t F32ToF16(float f);

// Converts n elements of `src` (of type `dtype`) to f32.
void ConvertToF32(DType dtype, const void* src, float* dst, size_t n);

}  // namespace shardlm
