// Element types of tensors and the exact conversions between them.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string_view>

#include "absl/status/statusor.h"

namespace shardlm {

// Float types, then the ggml block-quantized types (GGUF). A quantized tensor stores blocks of
// DTypeBlockElements(t) consecutive elements of a row in DTypeBlockBytes(t) bytes each; rows are
// whole blocks. Block layouts are ggml's (see kernels/cpu/quant.h for their definitions).
// kI32 is for index arrays (token ids, positions, block tables) in backend memory.
enum class DType : uint8_t {
  kF32,
  kF16,
  kBF16,
  kQ8_0,
  kQ4_0,
  kQ4_1,
  kQ5_0,
  kQ5_1,
  kQ4_K,
  kQ5_K,
  kQ6_K,
  kI32
};

bool IsQuantized(DType dtype);
// Elements per block: 1 for float types, 32 for Q8_0/Q4_0/Q4_1/Q5_0/Q5_1, 256 for the K types.
int64_t DTypeBlockElements(DType dtype);
// Bytes per block: 4/2/2 for F32/F16/BF16; 34, 18, 20, 22, 24, 144, 176, 210 for the quantized
// types.
size_t DTypeBlockBytes(DType dtype);
// Bytes of n elements (n must be a multiple of the block size for quantized types).
size_t DTypeBytes(DType dtype, int64_t n);
// Element size of a float or integer type; 0 for quantized types (use DTypeBytes).
size_t DTypeSize(DType dtype);
// Safetensors / ggml spelling: "F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1",
// "Q4_K", "Q5_K", "Q6_K".
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
