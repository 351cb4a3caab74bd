// Internal to the quantized kernels: block constants, the packed K-scale format, and the per-ISA
// kernel tables that quant.cpp dispatches to (and that the tests call directly).
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>

#include "kernels/cpu/quant/quant.h"
#include "kernels/quant/codec.h"
#include "base/dtype.h"

namespace shardlm::quant::internal {

// Sums of x over each 16 and each 32 elements, computed once per product: the kernels fold the
// offsets of the formats (Q4_0's - 8, Q5_0's - 16, Q6_K's - 32, the mins of Q4_1 / Q5_1 / Q4_K /
// Q5_K) in through them instead of applying them per element.
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
