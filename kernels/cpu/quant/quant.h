// Kernels over ggml block-quantized weights (GGUF): Q8_0, Q4_0, Q4_1, Q4_K, Q5_K and Q6_K.
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

#include <cstdint>

#include "kernels/dtype.h"

namespace shardlm::quant {

// The instruction sets the kernels have code for. The build targets baseline x86-64, so the wide
// ones are chosen at run time; every entry point takes one so that tests can run each path.
enum class Isa : uint8_t {
  kScalar,  // plain C++: the reference, and the fallback for older CPUs
  kAvx2,    // AVX2 + FMA + F16C
  kAvx512,  // AVX-512F (+ the AVX2 set)
};
const char* IsaName(Isa isa);
bool IsaSupported(Isa isa);  // by this CPU and OS (and compiled in)
Isa BestIsa();               // the widest supported, detected once

// True for the six types above.
bool IsQuantType(DType t);

// dst[0, n) = the n elements of the quantized row `src`; n must be a multiple of the block size.
// Isa::kScalar is the reference implementation, written plainly from the block definitions; the
// SIMD ones agree with it to within float rounding (they may fuse multiply-adds). An unsupported
// isa falls back to the best supported one below it.
void DequantizeRow(DType t, const void* src, float* dst, int64_t n, Isa isa = BestIsa());

// dst [rows, end - begin] = columns [begin, end) of the dequantized row-major matrix w
// [rows, cols] (a tensor-parallel slice that cuts through blocks).
void DequantizeColumns(DType t, const void* w, int64_t rows, int64_t cols, int64_t begin,
                       int64_t end, float* dst);

// y[r] = dot(dequantized row r of w, x) for the row-major quantized matrix w [rows, cols]; x has
// cols elements. Rows are split across `threads` OpenMP threads (0: omp_get_max_threads()); small
// products run on the calling thread. f32 accumulation, in a different order per ISA: results
// agree with a double-precision dot of the dequantized row to about 1e-5 of sum |w_i x_i|.
void QuantGemv(DType t, const void* w, int64_t rows, int64_t cols, const float* x, float* y,
               int threads = 0, Isa isa = BestIsa());

// y[i, r] = dot(dequantized row r of w, x[i, :]) for i < n: x is [n, cols] row-major (dense), y is
// [n, rows] with leading dimension ldy >= rows. n == 1 is QuantGemv. Small batches (decode with
// several sequences: 1 < n <= 32 on the SIMD paths) split the rows across threads as QuantGemv
// does and dequantize each stretch of a few rows once into an L1-resident buffer that every
// activation row is multiplied with, so that the whole batch costs a little more than one
// matrix-vector product per activation rather than a dequantization of the matrix. Larger n
// (prefill) dequantizes blocks of rows into a per-thread f32 buffer and multiplies each with a
// single-threaded sgemm. Both agree with a double-precision dot to QuantGemv's tolerance.
void QuantMatmul(DType t, const void* w, int64_t rows, int64_t cols, const float* x, int64_t n,
                 float* y, int64_t ldy, int threads = 0, Isa isa = BestIsa());

// Quantizes n elements (a multiple of the block size) of `src` into DTypeBytes(t, n) bytes at
// `dst`: a plain reference quantizer choosing scales by round-to-nearest, for tests and for
// writing GGUF files. Scales are chosen from the f16-rounded values that are stored, so that
// dequantizing gives back, per element x of a block (or sub-block) with absolute maximum A:
//   Q8_0: |error| <= d / 2,  d = A / 127
//   Q4_0: |error| <= d,      d = A / 8    (d / 2 except at the clamped end of the range)
//   Q4_1: |error| <= d / 2,  d = (max - min) / 15
//   Q4_K, Q5_K, Q6_K: a few units of the sub-block step; see quant_test.cpp for the bounds.
// Non-finite inputs are not supported.
void QuantizeRow(DType t, const float* src, void* dst, int64_t n);

}  // namespace shardlm::quant
