// The ggml block formats as the CUDA kernels of cuda_quant.cu read them: the loads and exact
// integer-to-float conversions they share, and Piece<K>, the few words of one block that a thread
// loads and decodes together, for every QuantKind (see cuda_quant.cu for how the kernels walk
// them). Included by cuda_quant.cu only.
#pragma once

#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "kernels/cuda/cuda_quant.h"

namespace shardlm::cuda {

// ---- Loads and conversions.

// The f32 value of the f16 in the low 16 bits of `bits`.
__device__ __forceinline__ float HalfBits(uint32_t bits) {
  return __half2float(__ushort_as_half(static_cast<unsigned short>(bits & 0xffffu)));
}

__device__ __forceinline__ uint32_t LoadU16(const uint8_t* p) {
  return __ldg(reinterpret_cast<const unsigned short*>(p));
}

// out[i] = the little-endian u32 at p + 4i, for a 2-byte aligned p: aligned u32 loads, and where
// p is 2 mod 4, a funnel shift of neighbouring words. Reads [p, p + 4W) and, when p is 2 mod 4,
// the two bytes before p: inside the matrix, except for a field at the very start of a matrix
// whose address is 2 mod 4, which is then not the start of an allocation either (those are
// 256-byte aligned), so the bytes are still mapped.
template <int W>
__device__ __forceinline__ void LoadWords(const uint8_t* p, uint32_t (&out)[W]) {
  const uintptr_t a = reinterpret_cast<uintptr_t>(p);
  const uint32_t* base = reinterpret_cast<const uint32_t*>(a & ~static_cast<uintptr_t>(3));
  const unsigned shift = static_cast<unsigned>(a & 3) * 8;  // 0 or 16
  uint32_t v[W + 1];
#pragma unroll
  for (int i = 0; i < W; ++i) v[i] = __ldg(base + i);
  // Only the low half of the last word is used: a 16-bit load stays inside [p, p + 4W).
  v[W] = shift != 0 ? LoadU16(reinterpret_cast<const uint8_t*>(base + W)) : 0u;
#pragma unroll
  for (int i = 0; i < W; ++i) out[i] = __funnelshift_r(v[i], v[i + 1], shift);
}

// 16 bytes at p: one 16-byte load when the caller knows p is 16-byte aligned.
__device__ __forceinline__ uint4 Load16(const uint8_t* p, bool aligned) {
  if (aligned) return __ldg(reinterpret_cast<const uint4*>(p));
  uint32_t v[4];
  LoadWords<4>(p, v);
  return make_uint4(v[0], v[1], v[2], v[3]);
}

__device__ __forceinline__ uint32_t Word(const uint4& v, int i) {
  return i == 0 ? v.x : (i == 1 ? v.y : (i == 2 ? v.z : v.w));
}

// float(byte i of w) - kOffset, exactly: one PRMT puts the byte into the mantissa of 2^23
// (0x4b0000bb), one subtraction of integers below 2^24 (exact) removes the 2^23; cheaper than an
// integer-to-float conversion. The callers first gather the four values of a quad into the four
// bytes of a word with a few word-wide operations.
template <int kOffset>
__device__ __forceinline__ float ByteToFloat(uint32_t w, int i) {
  const uint32_t bits = __byte_perm(w, 0x4b000000u, 0x7540u + static_cast<unsigned>(i));
  return __int_as_float(static_cast<int>(bits)) - (8388608.0f + kOffset);
}

// a * b, a * b + c and a * b - c: with kExact the CPU reference's two roundings, otherwise
// whatever nvcc makes of them (an FMA).
template <bool kExact>
__device__ __forceinline__ float Mul(float a, float b) {
  return kExact ? __fmul_rn(a, b) : a * b;
}
template <bool kExact>
__device__ __forceinline__ float MulAdd(float a, float b, float c) {
  return kExact ? __fadd_rn(__fmul_rn(a, b), c) : a * b + c;
}
template <bool kExact>
__device__ __forceinline__ float MulSub(float a, float b, float c) {
  return kExact ? __fsub_rn(__fmul_rn(a, b), c) : a * b - c;
}

// ---- Block formats.
//
// Piece<K>: kElems elements of a row, decoded by one thread.
//   kPieceElems            elements per piece; a row has cols / kPieceElems pieces
//   kBlockElems, kBlockBytes  the ggml block
//   Raw Load(row, p, aligned16)  loads piece p of the row at `row` (aligned16: row is 16-byte
//                          aligned) and decodes the block's scales
//   QuadElem(p, q)         the column of the first of the 4 contiguous elements of quad q
//   Quad<kExact>(raw, q, v)  v[0..3] = those elements, dequantized

template <QuantKind K>
struct Piece;

// Q8_0: d f16 @0, qs int8[32] @2; x = d * qs[i]. A piece: 8 elements (qs[8s .. 8s+8), s < 4).
template <>
struct Piece<QuantKind::kQ8_0> {
  static constexpr int kBlockElems = 32, kBlockBytes = 34, kPieceElems = 8;
  static constexpr int kPerBlock = kBlockElems / kPieceElems, kQuads = kPieceElems / 4;
  struct Raw {
    uint32_t q[2];
    float d;
  };
  __device__ static Raw Load(const uint8_t* row, int p, bool /*aligned16*/) {
    const uint8_t* b = row + (p / kPerBlock) * kBlockBytes;
    Raw r;
    r.d = HalfBits(LoadU16(b));
    LoadWords<2>(b + 2 + 8 * (p % kPerBlock), r.q);
    return r;
  }
  __device__ static int QuadElem(int p, int quad) {
    return (p / kPerBlock) * kBlockElems + (p % kPerBlock) * kPieceElems + 4 * quad;
  }
  template <bool kExact>
  __device__ static void Quad(const Raw& r, int quad, float (&v)[4]) {
    const uint32_t w = r.q[quad] ^ 0x80808080u;  // each int8 b -> b + 128 in 0..255
#pragma unroll
    for (int i = 0; i < 4; ++i) v[i] = Mul<kExact>(r.d, ByteToFloat<128>(w, i));
  }
};

// Q4_0 / Q4_1: qs[16] after the header; element i < 16 is the low nibble of qs[i], element
// i + 16 the high nibble. A piece: qs[8s .. 8s+8) (s < 2), i.e. elements 8s .. 8s+7 (quads 0, 1:
// low nibbles of its two words) and 16+8s .. 16+8s+7 (quads 2, 3: high nibbles).
__device__ __forceinline__ int Q4QuadElem(int p, int quad) {
  return (p / 2) * 32 + (p % 2) * 8 + (quad & 1) * 4 + (quad >> 1) * 16;
}
// The four nibbles of quad `quad`, one per byte.
__device__ __forceinline__ uint32_t Q4Nibbles(const uint32_t (&q)[2], int quad) {
  return (q[quad & 1] >> (4 * (quad >> 1))) & 0x0f0f0f0fu;
}

// Q4_0: d f16 @0, qs @2; x = d * (q - 8).
template <>
struct Piece<QuantKind::kQ4_0> {
  static constexpr int kBlockElems = 32, kBlockBytes = 18, kPieceElems = 16, kQuads = 4;
  struct Raw {
    uint32_t q[2];
    float d;
  };
  __device__ static Raw Load(const uint8_t* row, int p, bool /*aligned16*/) {
    const uint8_t* b = row + (p / 2) * kBlockBytes;
    Raw r;
    r.d = HalfBits(LoadU16(b));
    LoadWords<2>(b + 2 + 8 * (p % 2), r.q);
    return r;
  }
  __device__ static int QuadElem(int p, int quad) { return Q4QuadElem(p, quad); }
  template <bool kExact>
  __device__ static void Quad(const Raw& r, int quad, float (&v)[4]) {
    const uint32_t q = Q4Nibbles(r.q, quad);
#pragma unroll
    for (int i = 0; i < 4; ++i) v[i] = Mul<kExact>(r.d, ByteToFloat<8>(q, i));
  }
};

// Q4_1: d f16 @0, m f16 @2, qs @4; x = d * q + m.
template <>
struct Piece<QuantKind::kQ4_1> {
  static constexpr int kBlockElems = 32, kBlockBytes = 20, kPieceElems = 16, kQuads = 4;
  struct Raw {
    uint32_t q[2];
    float d, m;
  };
  __device__ static Raw Load(const uint8_t* row, int p, bool /*aligned16*/) {
    const uint8_t* b = row + (p / 2) * kBlockBytes;
    Raw r;
    r.d = HalfBits(LoadU16(b));
    r.m = HalfBits(LoadU16(b + 2));
    LoadWords<2>(b + 4 + 8 * (p % 2), r.q);
    return r;
  }
  __device__ static int QuadElem(int p, int quad) { return Q4QuadElem(p, quad); }
  template <bool kExact>
  __device__ static void Quad(const Raw& r, int quad, float (&v)[4]) {
    const uint32_t q = Q4Nibbles(r.q, quad);
#pragma unroll
    for (int i = 0; i < 4; ++i) v[i] = MulAdd<kExact>(r.d, ByteToFloat<0>(q, i), r.m);
  }
};

// Q5_0 / Q5_1: the qs[16] of Q4_0 / Q4_1 (the same pieces and quads) plus a u32 qh whose bit e
// is the fifth bit of element e. A piece p keeps qh >> 8 (p % 2), so that quad q's four bits are
// bits 4 (q & 1) + 16 (q >> 1) .. + 3 of it (Q4QuadElem's elements, less 8 (p % 2)).
__device__ __forceinline__ uint32_t Q5HighBits(uint32_t qh, int quad) {
  const uint32_t n = (qh >> (4 * (quad & 1) + 16 * (quad >> 1))) & 0x0fu;
  // Bit i of n to bit 8i + 4 (16 in byte i): the copies n, n << 7, n << 14, n << 21 of the
  // product do not overlap, so it carries nothing, and byte i's bit 0 is bit i of n.
  return ((n * 0x00204081u) & 0x01010101u) << 4;
}

// Q5_0: d f16 @0, qh u8[4] @2, qs @6; x = d * (q - 16). Blocks are 22 bytes: 2-byte aligned.
template <>
struct Piece<QuantKind::kQ5_0> {
  static constexpr int kBlockElems = 32, kBlockBytes = 22, kPieceElems = 16, kQuads = 4;
  struct Raw {
    uint32_t q[2];
    uint32_t qh;
    float d;
  };
  __device__ static Raw Load(const uint8_t* row, int p, bool /*aligned16*/) {
    const uint8_t* b = row + (p / 2) * kBlockBytes;
    Raw r;
    r.d = HalfBits(LoadU16(b));
    uint32_t qh[1];
    LoadWords<1>(b + 2, qh);
    r.qh = qh[0] >> (8 * (p % 2));
    LoadWords<2>(b + 6 + 8 * (p % 2), r.q);
    return r;
  }
  __device__ static int QuadElem(int p, int quad) { return Q4QuadElem(p, quad); }
  template <bool kExact>
  __device__ static void Quad(const Raw& r, int quad, float (&v)[4]) {
    const uint32_t q = Q4Nibbles(r.q, quad) | Q5HighBits(r.qh, quad);
#pragma unroll
    for (int i = 0; i < 4; ++i) v[i] = Mul<kExact>(r.d, ByteToFloat<16>(q, i));
  }
};

// Q5_1: d f16 @0, m f16 @2, qh u8[4] @4, qs @8; x = d * q + m.
template <>
struct Piece<QuantKind::kQ5_1> {
  static constexpr int kBlockElems = 32, kBlockBytes = 24, kPieceElems = 16, kQuads = 4;
  struct Raw {
    uint32_t q[2];
    uint32_t qh;
    float d, m;
  };
  __device__ static Raw Load(const uint8_t* row, int p, bool /*aligned16*/) {
    const uint8_t* b = row + (p / 2) * kBlockBytes;
    Raw r;
    r.d = HalfBits(LoadU16(b));
    r.m = HalfBits(LoadU16(b + 2));
    uint32_t qh[1];
    LoadWords<1>(b + 4, qh);
    r.qh = qh[0] >> (8 * (p % 2));
    LoadWords<2>(b + 8 + 8 * (p % 2), r.q);
    return r;
  }
  __device__ static int QuadElem(int p, int quad) { return Q4QuadElem(p, quad); }
  template <bool kExact>
  __device__ static void Quad(const Raw& r, int quad, float (&v)[4]) {
    const uint32_t q = Q4Nibbles(r.q, quad) | Q5HighBits(r.qh, quad);
#pragma unroll
    for (int i = 0; i < 4; ++i) v[i] = MulAdd<kExact>(r.d, ByteToFloat<0>(q, i), r.m);
  }
};

// The 6-bit scale and min of sub-block j (0..7) of a Q4_K / Q5_K super-block whose first 16
// bytes (d, dmin, scales[12]) are `h`: scales[0..3] in h.y, [4..7] in h.z, [8..11] in h.w. As
// KScaleMin in kernels/cpu/quant/quant_internal.h: sub-blocks 0..3 in the low 6 bits of scales[j]
// and scales[j + 4]; sub-blocks 4..7 in the nibbles of scales[j + 4] with their top 2 bits in the
// top bits of scales[j - 4] (scale) and scales[j] (min).
__device__ __forceinline__ void KScaleMin(const uint4& h, int j, float d, float dmin, float& dj,
                                          float& mj) {
  const int shift = 8 * (j & 3);
  const uint32_t by = (h.y >> shift) & 0xffu;  // scales[j & 3]
  const uint32_t bz = (h.z >> shift) & 0xffu;  // scales[4 + (j & 3)]
  const uint32_t bw = (h.w >> shift) & 0xffu;  // scales[8 + (j & 3)]
  const uint32_t scale = j < 4 ? by & 0x3fu : (bw & 0x0fu) | ((by >> 6) << 4);
  const uint32_t min = j < 4 ? bz & 0x3fu : (bw >> 4) | ((bz >> 6) << 4);
  dj = d * static_cast<float>(scale);  // exact small integers: the plain products of the CPU
  mj = dmin * static_cast<float>(min);
}

// Q4_K / Q5_K pieces: k = p % 8 = 2c + s takes qs[16k .. 16k+16) = qs[32c + 16s + l] (l < 16),
// whose low nibbles are elements 64c + 16s + l (sub-block 2c: quads 0..3, one per word) and whose
// high nibbles are elements 64c + 32 + 16s + l (sub-block 2c + 1: quads 4..7).
__device__ __forceinline__ int KQuadElem(int p, int quad) {
  const int k = p % 8;
  return (p / 8) * 256 + (k >> 1) * 64 + (k & 1) * 16 + (quad >> 2) * 32 + (quad & 3) * 4;
}

// Q4_K: d f16 @0, dmin f16 @2, scales[12] @4, qs[128] @16; x = d * sc[j] * q - dmin * mn[j].
template <>
struct Piece<QuantKind::kQ4_K> {
  static constexpr int kBlockElems = 256, kBlockBytes = 144, kPieceElems = 32, kQuads = 8;
  struct Raw {
    uint4 qs;
    float d0, m0, d1, m1;  // sub-blocks 2c and 2c + 1
  };
  __device__ static Raw Load(const uint8_t* row, int p, bool aligned16) {
    const uint8_t* b = row + (p / 8) * kBlockBytes;
    const int k = p % 8;
    const uint4 h = Load16(b, aligned16);
    Raw r;
    r.qs = Load16(b + 16 + 16 * k, aligned16);
    const float d = HalfBits(h.x), dmin = HalfBits(h.x >> 16);
    KScaleMin(h, k & ~1, d, dmin, r.d0, r.m0);
    KScaleMin(h, k | 1, d, dmin, r.d1, r.m1);
    return r;
  }
  __device__ static int QuadElem(int p, int quad) { return KQuadElem(p, quad); }
  template <bool kExact>
  __device__ static void Quad(const Raw& r, int quad, float (&v)[4]) {
    const int hi = quad >> 2;
    const uint32_t q = (Word(r.qs, quad & 3) >> (4 * hi)) & 0x0f0f0f0fu;
    const float dj = hi ? r.d1 : r.d0, mj = hi ? r.m1 : r.m0;
#pragma unroll
    for (int i = 0; i < 4; ++i) v[i] = MulSub<kExact>(dj, ByteToFloat<0>(q, i), mj);
  }
};

// Q5_K: d f16 @0, dmin f16 @2, scales[12] @4, qh[32] @16, qs[128] @48; as Q4_K with bit j of
// qh[l] as the fifth bit of element 32j + l. Piece k = 2c + s reads qh[16s .. 16s+16).
template <>
struct Piece<QuantKind::kQ5_K> {
  static constexpr int kBlockElems = 256, kBlockBytes = 176, kPieceElems = 32, kQuads = 8;
  struct Raw {
    uint4 qs, qh;
    float d0, m0, d1, m1;
    int j0;  // 2c: the qh bit of the low-nibble sub-block
  };
  __device__ static Raw Load(const uint8_t* row, int p, bool aligned16) {
    const uint8_t* b = row + (p / 8) * kBlockBytes;
    const int k = p % 8;
    const uint4 h = Load16(b, aligned16);
    Raw r;
    r.qh = Load16(b + 16 + 16 * (k & 1), aligned16);
    r.qs = Load16(b + 48 + 16 * k, aligned16);
    const float d = HalfBits(h.x), dmin = HalfBits(h.x >> 16);
    r.j0 = k & ~1;
    KScaleMin(h, k & ~1, d, dmin, r.d0, r.m0);
    KScaleMin(h, k | 1, d, dmin, r.d1, r.m1);
    return r;
  }
  __device__ static int QuadElem(int p, int quad) { return KQuadElem(p, quad); }
  template <bool kExact>
  __device__ static void Quad(const Raw& r, int quad, float (&v)[4]) {
    const int hi = quad >> 2;
    const int j = r.j0 + hi;  // the sub-block, and its bit in each qh byte
    const uint32_t q = ((Word(r.qs, quad & 3) >> (4 * hi)) & 0x0f0f0f0fu) |
                       (((Word(r.qh, quad & 3) >> j) & 0x01010101u) << 4);
    const float dj = hi ? r.d1 : r.d0, mj = hi ? r.m1 : r.m0;
#pragma unroll
    for (int i = 0; i < 4; ++i) v[i] = MulSub<kExact>(dj, ByteToFloat<0>(q, i), mj);
  }
};

// Q6_K: ql[128] @0, qh[64] @128, scales int8[16] @192, d f16 @208. Half t (0, 1) of the block
// has L = ql + 64t, H = qh + 32t; for l < 32, element 128t + 32m + l (m < 4) is
// ((L[l + 32 (m & 1)] >> 4 (m >> 1)) & 15 | ((H[l] >> 2m) & 3) << 4) - 32, times
// d * scales[(128t + 32m + l) / 16]. Piece k = p % 8 = 4t + g takes l = 8g .. 8g+7: the words
// A = L[8g .. 8g+8), B = L[32+8g .. 32+8g+8), H[8g .. 8g+8); quad q = 2m + u covers
// l = 8g + 4u .. 8g + 4u + 3 of group m, whose scale is scales[8t + 2m + g / 2].
template <>
struct Piece<QuantKind::kQ6_K> {
  static constexpr int kBlockElems = 256, kBlockBytes = 210, kPieceElems = 32, kQuads = 8;
  struct Raw {
    uint32_t a[2], b[2], h[2];
    float s[4];  // d * scale of group m
  };
  __device__ static Raw Load(const uint8_t* row, int p, bool /*aligned16*/) {
    const uint8_t* blk = row + (p / 8) * kBlockBytes;
    const int k = p % 8, t = k >> 2, g = k & 3;
    Raw r;
    LoadWords<2>(blk + 64 * t + 8 * g, r.a);
    LoadWords<2>(blk + 64 * t + 32 + 8 * g, r.b);
    LoadWords<2>(blk + 128 + 32 * t + 8 * g, r.h);
    uint32_t sc[2];  // scales[8t .. 8t+8)
    LoadWords<2>(blk + 192 + 8 * t, sc);
    const float d = HalfBits(LoadU16(blk + 208));
#pragma unroll
    for (int m = 0; m < 4; ++m) {
      const int byte = 2 * (m & 1) + (g >> 1);  // scales[8t + 2m + g/2] in word m / 2
      const auto scale = static_cast<int8_t>((sc[m >> 1] >> (8 * byte)) & 0xffu);
      r.s[m] = d * static_cast<float>(scale);
    }
    return r;
  }
  __device__ static int QuadElem(int p, int quad) {
    const int k = p % 8;
    return (p / 8) * 256 + (k >> 2) * 128 + (quad >> 1) * 32 + (k & 3) * 8 + (quad & 1) * 4;
  }
  template <bool kExact>
  __device__ static void Quad(const Raw& r, int quad, float (&v)[4]) {
    const int m = quad >> 1, u = quad & 1;
    const uint32_t low = (m & 1) ? r.b[u] : r.a[u];
    const uint32_t q = ((low >> (4 * (m >> 1))) & 0x0f0f0f0fu) |
                       (((r.h[u] >> (2 * m)) & 0x03030303u) << 4);
#pragma unroll
    for (int i = 0; i < 4; ++i) v[i] = Mul<kExact>(r.s[m], ByteToFloat<32>(q, i));
  }
};

}  // namespace shardlm::cuda
