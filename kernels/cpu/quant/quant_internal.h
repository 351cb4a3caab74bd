// Internal to the quantized kernels: block constants, the packed K-scale format, and the per-ISA
// kernel tables that quant.cpp dispatches to (and that the tests call directly).
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>

#include "kernels/cpu/quant/quant.h"
#include "kernels/dtype.h"

namespace shardlm::quant::internal {

// The six types, in one dense index for the kernel tables.
enum QuantIndex : int { kIdxQ8_0, kIdxQ4_0, kIdxQ4_1, kIdxQ4_K, kIdxQ5_K, kIdxQ6_K, kNumQuant };
// -1 for a type without quantized kernels.
int QuantIndexOf(DType t);

// Byte offsets of the fields, as documented in quant.h.
inline constexpr int kQ8_0Bytes = 34, kQ4_0Bytes = 18, kQ4_1Bytes = 20;
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

// Sums of x over each 16 and each 32 elements, computed once per product: the kernels fold the
// offsets of the formats (Q4_0's - 8, Q6_K's - 32, the mins of Q4_1 / Q4_K / Q5_K) in through
// them instead of applying them per element.
struct XSums {
  const float* s16;
  const float* s32;
};

// y[r] = dot(row r, x) for r < rows (1 <= rows <= kGemvRows), rows `ld` bytes apart, `blocks`
// blocks each.
inline constexpr int kGemvRows = 4;
using RowsFn = void (*)(const uint8_t* w, size_t ld, int rows, int64_t blocks, const float* x,
                        const XSums& xs, float* y);
// dst[0, blocks * block elements) = the dequantized blocks at src.
using DequantFn = void (*)(const uint8_t* src, float* dst, int64_t blocks);

// The small-batch product (QuantMatmul for 1 < n <= SmallBatchLimit): each row is walked in
// equal chunks of at most kBatchChunk elements (two K super-blocks, sixteen small blocks). A
// group of rows (Kernels::batch_rows) has each chunk dequantized together into an L1-resident
// f32 buffer, which is then multiplied with the same chunk of every activation row, the group
// keeping batch_rows x n vector accumulators across the chunks. Every weight is thus read and
// dequantized once per call, however large n is. (The scalar kernel goes block by block.)
inline constexpr int kBatchChunk = 512;
inline constexpr int kMaxSmallBatch = 32;
// y[j * ldy + r] = dot(row r, x[j * ldx, ...]) for r < rows, j < n (1 <= n <= kMaxSmallBatch);
// rows `ld` bytes apart, `blocks` blocks each.
using BatchFn = void (*)(const uint8_t* w, size_t ld, int64_t rows, int64_t blocks,
                         const float* x, int64_t ldx, int n, float* y, int64_t ldy);

struct Kernels {
  RowsFn rows[kNumQuant];
  DequantFn dequant[kNumQuant];
  BatchFn batch[kNumQuant];
  int batch_rows;  // the rows that `batch` dequantizes together: threads take multiples of it
};

// All 65536 f16 values as f32, indexed by their bits: the SIMD kernels read block scales from
// it, which costs a load rather than a conversion and a broadcast on the busy vector ports.
const float* HalfTable();

// Null where the ISA is not compiled in (the caller also checks that the CPU supports it).
const Kernels* ScalarKernels();
const Kernels* Avx2Kernels();
const Kernels* Avx512Kernels();
// The table for `isa`, falling back to the best supported one below it.
const Kernels& KernelsFor(Isa isa);

// The two paths of QuantMatmul for n > 1, for the tests and the benchmark (same arguments and
// checks as QuantMatmul): the small-batch kernels (n <= kMaxSmallBatch), and dequantize + sgemm.
void QuantMatmulSmall(DType t, const void* w, int64_t rows, int64_t cols, const float* x,
                      int64_t n, float* y, int64_t ldy, int threads, Isa isa);
void QuantMatmulSgemm(DType t, const void* w, int64_t rows, int64_t cols, const float* x,
                      int64_t n, float* y, int64_t ldy, int threads, Isa isa);
// The largest n that QuantMatmul gives to the small-batch path.
int64_t SmallBatchLimit(DType t, Isa isa);

}  // namespace shardlm::quant::internal
