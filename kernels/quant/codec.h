// The GGML block codec: the byte layouts of the quantized types of GGUF files (Q8_0, Q4_0, Q4_1,
// Q5_0, Q5_1, Q4_K, Q5_K, Q6_K), a plain reference decoder and encoder, and the tensor-parallel
// column slice. Backend-neutral: the CPU kernels (kernels/cpu/quant), the CUDA kernels
// (kernels/cuda) and the GGUF exporter (formats/) all read the layouts from here.
//
//
// A quantized row of n elements is n / DTypeBlockElements(t) consecutive blocks of
// DTypeBlockBytes(t) bytes; a quantized matrix [rows, cols] is its rows back to back (row r starts
// at byte r * DTypeBytes(t, cols)). The block layouts are ggml's. Every f16 field is IEEE binary16
// and every multi-byte field little-endian; offsets are in bytes.
//
//   Q8_0 (32 elements, 34 bytes):  d f16 @0, qs int8[32] @2.
//        x[i] = d * qs[i].
//   Q4_0 (32 elements, 18 bytes):  d f16 @0, qs u8[16] @2.
//        x[i] = d * (q - 8), q = low nibble of qs[i] for i < 16, high nibble of qs[i - 16] after.
//   Q4_1 (32 elements, 20 bytes):  d f16 @0, m f16 @2, qs u8[16] @4.
//        x[i] = d * q + m, q as for Q4_0.
//   Q5_0 (32 elements, 22 bytes):  d f16 @0, qh u8[4] @2, qs u8[16] @6.
//        x[i] = d * (q - 16), q = the nibble of Q4_0 plus 16 * bit i of qh (read as one
//        little-endian u32: elements 0..15 in bits 0..15, elements 16..31 in bits 16..31).
//   Q5_1 (32 elements, 24 bytes):  d f16 @0, m f16 @2, qh u8[4] @4, qs u8[16] @8.
//        x[i] = d * q + m, q as for Q5_0.
//   Q4_K (256 elements, 144 bytes): d f16 @0, dmin f16 @2, scales u8[12] @4, qs u8[128] @16.
//        Eight sub-blocks of 32 elements with a 6-bit scale sc[j] and a 6-bit min mn[j] each,
//        packed into scales[12] (see KScaleMin in quant_internal.h). Elements 64c .. 64c+31
//        (c = 0..3) are the low nibbles of qs[32c .. 32c+31] and belong to sub-block 2c;
//        elements 64c+32 .. 64c+63 are the high nibbles of the same bytes, sub-block 2c+1.
//        x = d * sc[j] * q - dmin * mn[j].
//   Q5_K (256 elements, 176 bytes): d f16 @0, dmin f16 @2, scales u8[12] @4, qh u8[32] @16,
//        qs u8[128] @48. As Q4_K with a fifth bit: element 32j + l (sub-block j, l < 32) adds
//        16 * bit j of qh[l] to its nibble.
//   Q6_K (256 elements, 210 bytes): ql u8[128] @0, qh u8[64] @128, scales int8[16] @192,
//        d f16 @208. Two halves of 128 elements; in half h, with L = ql + 64h and H = qh + 32h,
//        for l < 32:
//          element 128h + l      = (low nibble of L[l]       | bits 0-1 of H[l] << 4) - 32
//          element 128h + l + 32 = (low nibble of L[l + 32]  | bits 2-3 of H[l] << 4) - 32
//          element 128h + l + 64 = (high nibble of L[l]      | bits 4-5 of H[l] << 4) - 32
//          element 128h + l + 96 = (high nibble of L[l + 32] | bits 6-7 of H[l] << 4) - 32
//        each times d * scales[e / 16] for element e (signed 8-bit scales, one per 16 elements).
//
// Activations stay f32: the matrix-vector product dequantizes in registers on the way to the FMA
// (no quantization of x), the small-batch product dequantizes a few rows at a time into L1, and
// the prefill product dequantizes blocks of rows for sgemm.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>

#include "base/dtype.h"

namespace shardlm::quant {

// True for the eight types above.
bool IsQuantType(DType t);

// dst[0, n) = the n elements of the quantized row `src` (n a multiple of the block size), decoded
// plainly from the block definitions: the reference every faster decoder is tested against.
void DequantizeRowReference(DType t, const void* src, float* dst, int64_t n);

// A decoder of one row, as DequantizeRowReference.
using RowDecoder = void (*)(DType t, const void* src, float* dst, int64_t n);

// dst [rows, end - begin] = columns [begin, end) of the dequantized row-major matrix w
// [rows, cols] (a tensor-parallel slice that cuts through blocks), each row decoded by `decode`.
void DequantizeColumns(DType t, const void* w, int64_t rows, int64_t cols, int64_t begin,
                       int64_t end, float* dst, RowDecoder decode = DequantizeRowReference);

// Quantizes n elements (a multiple of the block size) of `src` into DTypeBytes(t, n) bytes at
// `dst`: a plain reference quantizer choosing scales by round-to-nearest, for tests and for
// writing GGUF files. Scales are chosen from the f16-rounded values that are stored, so that
// dequantizing gives back, per element x of a block (or sub-block) with absolute maximum A:
//   Q8_0: |error| <= d / 2,  d = A / 127
//   Q4_0: |error| <= d,      d = A / 8    (d / 2 except at the clamped end of the range)
//   Q4_1: |error| <= d / 2,  d = (max - min) / 15
//   Q5_0: |error| <= d,      d = A / 16   (d / 2 except at the clamped end of the range)
//   Q5_1: |error| <= d / 2,  d = (max - min) / 31
//   Q4_K, Q5_K, Q6_K: a few units of the sub-block step; see quant_test.cpp for the bounds.
// Non-finite inputs are not supported.
void QuantizeRow(DType t, const float* src, void* dst, int64_t n);

}  // namespace shardlm::quant

namespace shardlm::quant::internal {

// The eight types, in one dense index for the kernel tables.
enum QuantIndex : int {
  kIdxQ8_0,
  kIdxQ4_0,
  kIdxQ4_1,
  kIdxQ5_0,
  kIdxQ5_1,
  kIdxQ4_K,
  kIdxQ5_K,
  kIdxQ6_K,
  kNumQuant
};
// -1 for a type without quantized kernels.
int QuantIndexOf(DType t);

// Byte offsets of the fields, as documented in quant.h.
inline constexpr int kQ8_0Bytes = 34, kQ4_0Bytes = 18, kQ4_1Bytes = 20;
inline constexpr int kQ5_0Bytes = 22, kQ5_1Bytes = 24;
inline constexpr int kQ5_0Qh = 2, kQ5_0Qs = 6;        // Q5_0: qh[4], qs[16]
inline constexpr int kQ5_1Qh = 4, kQ5_1Qs = 8;        // Q5_1: qh[4], qs[16]
inline constexpr int kQ4_KBytes = 144, kQ5_KBytes = 176, kQ6_KBytes = 210;
inline constexpr int kKScales = 4;                    // Q4_K / Q5_K: scales[12]
inline constexpr int kQ4_KQs = 16;                    // Q4_K: qs[128]
inline constexpr int kQ5_KQh = 16, kQ5_KQs = 48;      // Q5_K: qh[32], qs[128]
inline constexpr int kQ6_KQh = 128, kQ6_KScales = 192, kQ6_KD = 208;

inline uint16_t LoadU16(const uint8_t* p) {
  uint16_t v;
  std::memcpy(&v, p, sizeof v);
  return v;
}
inline void StoreU16(uint8_t* p, uint16_t v) { std::memcpy(p, &v, sizeof v); }
inline uint32_t LoadU32(const uint8_t* p) {
  uint32_t v;
  std::memcpy(&v, p, sizeof v);
  return v;
}

// The 6-bit scale and min of sub-block j (0..7) of a Q4_K / Q5_K block from its scales[12].
// Sub-blocks 0..3 hold theirs in the low 6 bits of bytes j (scale) and 4 + j (min). Sub-blocks
// 4..7 hold their low 4 bits in byte 4 + j (scale in the low nibble, min in the high one) and
// their top 2 bits in the top 2 bits of bytes j - 4 (scale) and j (min).
inline void KScaleMin(const uint8_t* s, int j, int& scale, int& min) {
  if (j < 4) {
    scale = s[j] & 0x3f;
    min = s[j + 4] & 0x3f;
  } else {
    scale = (s[j + 4] & 0x0f) | ((s[j - 4] >> 6) << 4);
    min = (s[j + 4] >> 4) | ((s[j] >> 6) << 4);
  }
}
// The inverse: packs 8 scales and 8 mins (each 0..63) into scales[12].
inline void KPackScaleMin(const int* scale, const int* min, uint8_t* s) {
  for (int j = 0; j < 4; ++j) {
    s[j] = static_cast<uint8_t>((scale[j] & 0x3f) | ((scale[j + 4] >> 4) << 6));
    s[j + 4] = static_cast<uint8_t>((min[j] & 0x3f) | ((min[j + 4] >> 4) << 6));
    s[j + 8] = static_cast<uint8_t>((scale[j + 4] & 0x0f) | ((min[j + 4] & 0x0f) << 4));
  }
}

// One block of each type decoded into its 32 or 256 floats (the reference definitions).
void DequantQ8_0(const uint8_t* b, float* y);
void DequantQ4_0(const uint8_t* b, float* y);
void DequantQ4_1(const uint8_t* b, float* y);
void DequantQ5_0(const uint8_t* b, float* y);
void DequantQ5_1(const uint8_t* b, float* y);
void DequantQ4_K(const uint8_t* b, float* y);
void DequantQ5_K(const uint8_t* b, float* y);
void DequantQ6_K(const uint8_t* b, float* y);

}  // namespace shardlm::quant::internal
