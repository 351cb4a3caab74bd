#include "base/dtype.h"

#include <iterator>
#include <stdexcept>
#include <string>

#include "absl/strings/str_cat.h"

namespace shardlm {

namespace {
struct DTypeTraits {
  const char* name;
  int64_t block_elements;
  size_t block_bytes;
};
constexpr DTypeTraits kTraits[] = {
    {"F32", 1, 4},     {"F16", 1, 2},     {"BF16", 1, 2},
    {"Q8_0", 32, 34},  {"Q4_0", 32, 18},  {"Q4_1", 32, 20},
    {"Q5_0", 32, 22},  {"Q5_1", 32, 24},
    {"Q4_K", 256, 144}, {"Q5_K", 256, 176}, {"Q6_K", 256, 210},
    {"I32", 1, 4},
};
static_assert(std::size(kTraits) == static_cast<size_t>(DType::kI32) + 1,
              "one DTypeTraits per DType, in enum order");
const DTypeTraits& Traits(DType dtype) { return kTraits[static_cast<int>(dtype)]; }
}  // namespace

bool IsQuantized(DType dtype) { return Traits(dtype).block_elements > 1; }
int64_t DTypeBlockElements(DType dtype) { return Traits(dtype).block_elements; }
size_t DTypeBlockBytes(DType dtype) { return Traits(dtype).block_bytes; }
size_t DTypeBytes(DType dtype, int64_t n) {
  const DTypeTraits& t = Traits(dtype);
  return static_cast<size_t>(n / t.block_elements) * t.block_bytes;
}
size_t DTypeSize(DType dtype) { return IsQuantized(dtype) ? 0 : Traits(dtype).block_bytes; }
const char* DTypeName(DType dtype) { return Traits(dtype).name; }

absl::StatusOr<DType> ParseDType(std::string_view name) {
  if (name == "F32") return DType::kF32;
  if (name == "F16") return DType::kF16;
  if (name == "BF16") return DType::kBF16;
  return absl::InvalidArgumentError(
      absl::StrCat("unsupported dtype '", std::string(name), "' (expected F32, F16 or BF16)"));
}

uint16_t F32ToBf16(float f) {
  uint32_t bits;
  std::memcpy(&bits, &f, sizeof bits);
  if ((bits & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((bits >> 16) | 0x40);  // NaN
  uint32_t rounding = 0x7fffu + ((bits >> 16) & 1u);
  return static_cast<uint16_t>((bits + rounding) >> 16);
}

float F16ToF32(uint16_t h) {
  uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  uint32_t exp = (h >> 10) & 0x1fu;
  uint32_t mant = h & 0x3ffu;
  uint32_t bits;
  if (exp == 0) {
    if (mant == 0) {
      bits = sign;
    } else {  // subnormal: renormalise
      int e = -1;
      do {
        ++e;
        mant <<= 1;
      } while ((mant & 0x400u) == 0);
      bits = sign | (static_cast<uint32_t>(127 - 15 - e) << 23) | ((mant & 0x3ffu) << 13);
    }
  } else if (exp == 0x1f) {
    bits = sign | 0x7f800000u | (mant << 13);
  } else {
    bits = sign | ((exp + 127 - 15) << 23) | (mant << 13);
  }
  float f;
  std::memcpy(&f, &bits, sizeof f);
  return f;
}

uint16_t F32ToF16(float f) {
  uint32_t bits;
  std::memcpy(&bits, &f, sizeof bits);
  uint16_t sign = static_cast<uint16_t>((bits >> 16) & 0x8000u);
  uint32_t abs = bits & 0x7fffffffu;
  if (abs > 0x7f800000u) return static_cast<uint16_t>(sign | 0x7e00u);  // NaN
  if (abs >= 0x477ff000u) return static_cast<uint16_t>(sign | 0x7c00u);  // overflow -> inf
  int32_t exp = static_cast<int32_t>(abs >> 23) - 127 + 15;
  uint32_t mant = abs & 0x7fffffu;
  if (exp <= 0) {  // subnormal or zero in f16
    if (exp < -10) return sign;
    mant |= 0x800000u;
    uint32_t shift = static_cast<uint32_t>(14 - exp);
    uint32_t half = mant >> shift;
    uint32_t rem = mant & ((1u << shift) - 1);
    uint32_t halfway = 1u << (shift - 1);
    if (rem > halfway || (rem == halfway && (half & 1u))) ++half;
    return static_cast<uint16_t>(sign | half);
  }
  uint32_t half = (static_cast<uint32_t>(exp) << 10) | (mant >> 13);
  uint32_t rem = mant & 0x1fffu;
  if (rem > 0x1000u || (rem == 0x1000u && (half & 1u))) ++half;  // may carry into exponent: fine
  return static_cast<uint16_t>(sign | half);
}

void ConvertToF32(DType dtype, const void* src, float* dst, size_t n) {
  switch (dtype) {
    default:  // quantized types are dequantized by the backend's block kernels, not here
      throw std::invalid_argument(std::string("ConvertToF32: not a float dtype: ") + DTypeName(dtype));
    case DType::kF32:
      std::memcpy(dst, src, n * sizeof(float));
      return;
    case DType::kF16: {
      const auto* s = static_cast<const uint16_t*>(src);
      for (size_t i = 0; i < n; ++i) dst[i] = F16ToF32(s[i]);
      return;
    }
    case DType::kBF16: {
      const auto* s = static_cast<const uint16_t*>(src);
      for (size_t i = 0; i < n; ++i) dst[i] = Bf16ToF32(s[i]);
      return;
    }
  }
}

}  // namespace shardlm
