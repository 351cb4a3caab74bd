// The reference GGML block codec (kernels/quant/codec.h): each block decoded and encoded plainly
// from its definition.
#include "kernels/quant/codec.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <stdexcept>
#include <string>
#include <vector>

namespace shardlm::quant::internal {
namespace {
float Half(const uint8_t* p) { return F16ToF32(LoadU16(p)); }
}  // namespace


// ---- Dequantization of one block. ----

void DequantQ8_0(const uint8_t* b, float* y) {
  const float d = Half(b);
  for (int i = 0; i < 32; ++i) y[i] = d * static_cast<float>(static_cast<int8_t>(b[2 + i]));
}

// Nibble q of element i (0..31) of a Q4_0 / Q4_1 block whose qs start at `qs`.
int Nibble32(const uint8_t* qs, int i) { return i < 16 ? qs[i] & 0x0f : qs[i - 16] >> 4; }

void DequantQ4_0(const uint8_t* b, float* y) {
  const float d = Half(b);
  for (int i = 0; i < 32; ++i) y[i] = d * static_cast<float>(Nibble32(b + 2, i) - 8);
}

void DequantQ4_1(const uint8_t* b, float* y) {
  const float d = Half(b);
  const float m = Half(b + 2);
  for (int i = 0; i < 32; ++i) y[i] = d * static_cast<float>(Nibble32(b + 4, i)) + m;
}

// The 5-bit q (0..31) of element i of a Q5_0 / Q5_1 block: the Q4 nibble of qs, and bit i of the
// little-endian u32 at qh as bit 4.
int Q5Value(const uint8_t* qh, const uint8_t* qs, int i) {
  return Nibble32(qs, i) | static_cast<int>(((LoadU32(qh) >> i) & 1u) << 4);
}

void DequantQ5_0(const uint8_t* b, float* y) {
  const float d = Half(b);
  for (int i = 0; i < 32; ++i) {
    y[i] = d * static_cast<float>(Q5Value(b + kQ5_0Qh, b + kQ5_0Qs, i) - 16);
  }
}

void DequantQ5_1(const uint8_t* b, float* y) {
  const float d = Half(b);
  const float m = Half(b + 2);
  for (int i = 0; i < 32; ++i) {
    y[i] = d * static_cast<float>(Q5Value(b + kQ5_1Qh, b + kQ5_1Qs, i)) + m;
  }
}

// Element 32j + l of a Q4_K / Q5_K block: its 4-bit part sits in byte 32 * (j / 2) + l of qs,
// in the low nibble for even j and the high nibble for odd j.
int KNibble(const uint8_t* qs, int j, int l) {
  return (qs[32 * (j / 2) + l] >> (4 * (j % 2))) & 0x0f;
}

void DequantQ4_K(const uint8_t* b, float* y) {
  const float d = Half(b);
  const float dmin = Half(b + 2);
  for (int j = 0; j < 8; ++j) {
    int scale, min;
    KScaleMin(b + kKScales, j, scale, min);
    const float dj = d * static_cast<float>(scale);
    const float mj = dmin * static_cast<float>(min);
    for (int l = 0; l < 32; ++l) {
      y[32 * j + l] = dj * static_cast<float>(KNibble(b + kQ4_KQs, j, l)) - mj;
    }
  }
}

void DequantQ5_K(const uint8_t* b, float* y) {
  const float d = Half(b);
  const float dmin = Half(b + 2);
  const uint8_t* qh = b + kQ5_KQh;
  for (int j = 0; j < 8; ++j) {
    int scale, min;
    KScaleMin(b + kKScales, j, scale, min);
    const float dj = d * static_cast<float>(scale);
    const float mj = dmin * static_cast<float>(min);
    for (int l = 0; l < 32; ++l) {
      const int q = KNibble(b + kQ5_KQs, j, l) | (((qh[l] >> j) & 1) << 4);
      y[32 * j + l] = dj * static_cast<float>(q) - mj;
    }
  }
}

// The 6-bit value (0..63, before subtracting 32) of element e of a Q6_K block.
int Q6Value(const uint8_t* b, int e) {
  const int h = e / 128;  // half
  const int k = (e % 128) / 32;  // quarter of the half
  const int l = e % 32;
  const uint8_t low = b[64 * h + 32 * (k % 2) + l];
  const uint8_t high = b[kQ6_KQh + 32 * h + l];
  return ((low >> (4 * (k / 2))) & 0x0f) | (((high >> (2 * k)) & 3) << 4);
}

void DequantQ6_K(const uint8_t* b, float* y) {
  const float d = Half(b + kQ6_KD);
  for (int e = 0; e < 256; ++e) {
    const int scale = static_cast<int8_t>(b[kQ6_KScales + e / 16]);
    y[e] = d * static_cast<float>(scale) * static_cast<float>(Q6Value(b, e) - 32);
  }
}

namespace {

// ---- Reference quantizers. ----

// f32 -> stored f16 -> f32: scales are chosen against the values that dequantization will see.
float RoundToHalf(float f, uint16_t& bits) {
  bits = F32ToF16(f);
  return F16ToF32(bits);
}

int RoundClamp(float v, int lo, int hi) {
  return std::clamp(static_cast<int>(std::nearbyint(std::clamp(v, -1e6f, 1e6f))), lo, hi);
}

// The element with the largest magnitude, keeping its sign.
float SignedMax(const float* x, int n) {
  float amax = 0.0f, v = 0.0f;
  for (int i = 0; i < n; ++i) {
    if (std::fabs(x[i]) > amax) {
      amax = std::fabs(x[i]);
      v = x[i];
    }
  }
  return v;
}

void QuantizeQ8_0(const float* x, uint8_t* b) {
  float amax = 0.0f;
  for (int i = 0; i < 32; ++i) amax = std::max(amax, std::fabs(x[i]));
  uint16_t bits;
  const float d = RoundToHalf(amax / 127.0f, bits);
  const float id = d != 0.0f ? 1.0f / d : 0.0f;
  StoreU16(b, bits);
  for (int i = 0; i < 32; ++i) {
    b[2 + i] = static_cast<uint8_t>(static_cast<int8_t>(RoundClamp(x[i] * id, -127, 127)));
  }
}

void QuantizeQ4_0(const float* x, uint8_t* b) {
  // The extreme element maps to -8, the end of the asymmetric range -8..7 with more room.
  uint16_t bits;
  const float d = RoundToHalf(SignedMax(x, 32) / -8.0f, bits);
  const float id = d != 0.0f ? 1.0f / d : 0.0f;
  StoreU16(b, bits);
  for (int i = 0; i < 16; ++i) {
    const int lo = RoundClamp(x[i] * id + 8.0f, 0, 15);
    const int hi = RoundClamp(x[i + 16] * id + 8.0f, 0, 15);
    b[2 + i] = static_cast<uint8_t>(lo | (hi << 4));
  }
}

void QuantizeQ4_1(const float* x, uint8_t* b) {
  const auto [mn, mx] = std::minmax_element(x, x + 32);
  uint16_t dbits, mbits;
  const float d = RoundToHalf((*mx - *mn) / 15.0f, dbits);
  const float m = RoundToHalf(*mn, mbits);
  const float id = d != 0.0f ? 1.0f / d : 0.0f;
  StoreU16(b, dbits);
  StoreU16(b + 2, mbits);
  for (int i = 0; i < 16; ++i) {
    const int lo = RoundClamp((x[i] - m) * id, 0, 15);
    const int hi = RoundClamp((x[i + 16] - m) * id, 0, 15);
    b[4 + i] = static_cast<uint8_t>(lo | (hi << 4));
  }
}

// Stores the 5-bit values q[32] of a Q5_0 / Q5_1 block: the low nibbles as Q4_0 does, bit 4 of
// element i as bit i of the little-endian u32 qh.
void PackQ5(const int* q, uint8_t* qh, uint8_t* qs) {
  uint32_t bits = 0;
  for (int i = 0; i < 32; ++i) bits |= static_cast<uint32_t>((q[i] >> 4) & 1) << i;
  std::memcpy(qh, &bits, sizeof bits);
  for (int i = 0; i < 16; ++i) {
    qs[i] = static_cast<uint8_t>((q[i] & 0x0f) | ((q[i + 16] & 0x0f) << 4));
  }
}

void QuantizeQ5_0(const float* x, uint8_t* b) {
  // As Q4_0: the extreme element maps to -16, the end of -16..15 with more room.
  uint16_t bits;
  const float d = RoundToHalf(SignedMax(x, 32) / -16.0f, bits);
  const float id = d != 0.0f ? 1.0f / d : 0.0f;
  StoreU16(b, bits);
  int q[32];
  for (int i = 0; i < 32; ++i) q[i] = RoundClamp(x[i] * id + 16.0f, 0, 31);
  PackQ5(q, b + kQ5_0Qh, b + kQ5_0Qs);
}

void QuantizeQ5_1(const float* x, uint8_t* b) {
  const auto [mn, mx] = std::minmax_element(x, x + 32);
  uint16_t dbits, mbits;
  const float d = RoundToHalf((*mx - *mn) / 31.0f, dbits);
  const float m = RoundToHalf(*mn, mbits);
  const float id = d != 0.0f ? 1.0f / d : 0.0f;
  StoreU16(b, dbits);
  StoreU16(b + 2, mbits);
  int q[32];
  for (int i = 0; i < 32; ++i) q[i] = RoundClamp((x[i] - m) * id, 0, 31);
  PackQ5(q, b + kQ5_1Qh, b + kQ5_1Qs);
}

// Q4_K (kMax 15) and Q5_K (kMax 31): per sub-block of 32 an offset -dmin * min (<= 0, so the range
// always includes 0) and a step d * scale. The 6-bit mins round to nearest; each scale is then
// rounded up from the step that the stored offset needs, so the sub-block's maximum stays in
// range. q[256] receives the quantized values 0..kMax.
template <int kMax>
void QuantizeKCommon(const float* x, uint8_t* b, int* q) {
  float lo[8], step[8];
  float max_step = 0.0f, max_neg = 0.0f;
  for (int j = 0; j < 8; ++j) {
    const auto [mn, mx] = std::minmax_element(x + 32 * j, x + 32 * j + 32);
    lo[j] = std::min(0.0f, *mn);
    step[j] = (*mx - lo[j]) / kMax;
    max_step = std::max(max_step, step[j]);
    max_neg = std::max(max_neg, -lo[j]);
  }
  uint16_t dbits, mbits;
  const float d = RoundToHalf(max_step / 63.0f, dbits);
  const float dmin = RoundToHalf(max_neg / 63.0f, mbits);
  StoreU16(b, dbits);
  StoreU16(b + 2, mbits);
  int scale[8], min[8];
  for (int j = 0; j < 8; ++j) {
    min[j] = dmin != 0.0f ? RoundClamp(-lo[j] / dmin, 0, 63) : 0;
    const float offset = -dmin * static_cast<float>(min[j]);
    const float* xj = x + 32 * j;
    const float hi = *std::max_element(xj, xj + 32);
    const float need = (hi - offset) / kMax;
    scale[j] = d != 0.0f && need > 0.0f
                   ? std::clamp(static_cast<int>(std::ceil(need / d)), 0, 63)
                   : 0;
    const float sd = d * static_cast<float>(scale[j]);
    const float id = sd != 0.0f ? 1.0f / sd : 0.0f;
    for (int l = 0; l < 32; ++l) q[32 * j + l] = RoundClamp((xj[l] - offset) * id, 0, kMax);
  }
  KPackScaleMin(scale, min, b + kKScales);
}

// Stores the low 4 bits of q (element 32j + l) as ggml's K layout does.
void PackKNibbles(const int* q, uint8_t* qs) {
  for (int c = 0; c < 4; ++c) {
    for (int l = 0; l < 32; ++l) {
      qs[32 * c + l] =
          static_cast<uint8_t>((q[64 * c + l] & 0x0f) | ((q[64 * c + 32 + l] & 0x0f) << 4));
    }
  }
}

void QuantizeQ4_K(const float* x, uint8_t* b) {
  int q[256];
  QuantizeKCommon<15>(x, b, q);
  PackKNibbles(q, b + kQ4_KQs);
}

void QuantizeQ5_K(const float* x, uint8_t* b) {
  int q[256];
  QuantizeKCommon<31>(x, b, q);
  PackKNibbles(q, b + kQ5_KQs);
  uint8_t* qh = b + kQ5_KQh;
  for (int l = 0; l < 32; ++l) {
    int bits = 0;
    for (int j = 0; j < 8; ++j) bits |= (q[32 * j + l] >> 4) << j;
    qh[l] = static_cast<uint8_t>(bits);
  }
}

// Q6_K: per group of 16 a signed step, chosen so that the group's extreme element maps to -32;
// its 8-bit multiple of d rounds away from zero so the extreme stays in range.
void QuantizeQ6_K(const float* x, uint8_t* b) {
  float step[16];
  float max_abs = 0.0f;
  for (int g = 0; g < 16; ++g) {
    step[g] = SignedMax(x + 16 * g, 16) / -32.0f;
    max_abs = std::max(max_abs, std::fabs(step[g]));
  }
  uint16_t dbits;
  const float d = RoundToHalf(max_abs / 127.0f, dbits);
  StoreU16(b + kQ6_KD, dbits);
  std::memset(b, 0, kQ6_KScales);  // ql and qh are OR-ed into
  for (int g = 0; g < 16; ++g) {
    int scale = 0;
    if (d != 0.0f) {
      const int mag = std::clamp(static_cast<int>(std::ceil(std::fabs(step[g]) / d)), 0, 127);
      scale = step[g] < 0.0f ? -mag : mag;
    }
    b[kQ6_KScales + g] = static_cast<uint8_t>(static_cast<int8_t>(scale));
    const float sd = d * static_cast<float>(scale);
    const float id = sd != 0.0f ? 1.0f / sd : 0.0f;
    for (int i = 0; i < 16; ++i) {
      const int e = 16 * g + i;
      const int v = RoundClamp(x[e] * id, -32, 31) + 32;  // 0..63
      const int h = e / 128, k = (e % 128) / 32, l = e % 32;
      b[64 * h + 32 * (k % 2) + l] |= static_cast<uint8_t>((v & 0x0f) << (4 * (k / 2)));
      b[kQ6_KQh + 32 * h + l] |= static_cast<uint8_t>((v >> 4) << (2 * k));
    }
  }
}

}  // namespace

int QuantIndexOf(DType t) {
  switch (t) {
    case DType::kQ8_0: return kIdxQ8_0;
    case DType::kQ4_0: return kIdxQ4_0;
    case DType::kQ4_1: return kIdxQ4_1;
    case DType::kQ5_0: return kIdxQ5_0;
    case DType::kQ5_1: return kIdxQ5_1;
    case DType::kQ4_K: return kIdxQ4_K;
    case DType::kQ5_K: return kIdxQ5_K;
    case DType::kQ6_K: return kIdxQ6_K;
    default: return -1;
  }
}

}  // namespace shardlm::quant::internal

namespace shardlm::quant {

bool IsQuantType(DType t) { return internal::QuantIndexOf(t) >= 0; }

void DequantizeRowReference(DType t, const void* src, float* dst, int64_t n) {
  using namespace internal;
  const int idx = QuantIndexOf(t);
  if (idx < 0) {
    throw std::invalid_argument(std::string("DequantizeRowReference: not a quantized dtype: ") +
                                DTypeName(t));
  }
  const int64_t elems = DTypeBlockElements(t);
  if (n < 0 || n % elems != 0) {
    throw std::invalid_argument("DequantizeRowReference: n = " + std::to_string(n) +
                                " is not a multiple of the block size of " + DTypeName(t));
  }
  static constexpr void (*kDecode[kNumQuant])(const uint8_t*, float*) = {
      DequantQ8_0, DequantQ4_0, DequantQ4_1, DequantQ5_0,
      DequantQ5_1, DequantQ4_K, DequantQ5_K, DequantQ6_K};
  const size_t bytes = DTypeBlockBytes(t);
  const auto* in = static_cast<const uint8_t*>(src);
  for (int64_t i = 0; i < n / elems; ++i) kDecode[idx](in + i * bytes, dst + i * elems);
}

void DequantizeColumns(DType t, const void* w, int64_t rows, int64_t cols, int64_t begin,
                       int64_t end, float* dst, RowDecoder decode) {
  const size_t row_bytes = DTypeBytes(t, cols);
  const int64_t width = end - begin;
  std::vector<float> buf(static_cast<size_t>(cols));
  for (int64_t r = 0; r < rows; ++r) {
    decode(t, static_cast<const char*>(w) + r * row_bytes, buf.data(), cols);
    std::memcpy(dst + r * width, buf.data() + begin, static_cast<size_t>(width) * sizeof(float));
  }
}

void QuantizeRow(DType t, const float* src, void* dst, int64_t n) {
  using namespace internal;
  const int idx = QuantIndexOf(t);
  if (idx < 0) {
    throw std::invalid_argument(std::string("QuantizeRow: not a quantized dtype: ") +
                                DTypeName(t));
  }
  const int64_t elems = DTypeBlockElements(t);
  if (n < 0 || n % elems != 0) {
    throw std::invalid_argument("QuantizeRow: n = " + std::to_string(n) +
                                " is not a multiple of the block size of " + DTypeName(t));
  }
  static constexpr void (*kQuantize[kNumQuant])(const float*, uint8_t*) = {
      QuantizeQ8_0, QuantizeQ4_0, QuantizeQ4_1, QuantizeQ5_0,
      QuantizeQ5_1, QuantizeQ4_K, QuantizeQ5_K, QuantizeQ6_K};
  const size_t bytes = DTypeBlockBytes(t);
  auto* out = static_cast<uint8_t*>(dst);
  for (int64_t i = 0; i < n / elems; ++i) kQuantize[idx](src + i * elems, out + i * bytes);
}

}  // namespace shardlm::quant
