// The CPU kernels over GGML block-quantized weights: SIMD dequantization, the decode
// matrix-vector product and the small-batch and prefill products. The block layouts and the
// reference codec are in kernels/quant/codec.h.
//
// Activations stay f32: the matrix-vector product dequantizes in registers on the way to the FMA
// (no quantization of x), the small-batch product dequantizes a few rows at a time into L1, and
// the prefill product dequantizes blocks of rows for sgemm.
#pragma once

#include <cstdint>

#include "base/dtype.h"
#include "kernels/quant/codec.h"

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

bool IsQuantType(DType t);

// dst[0, n) = the n elements of the quantized row `src`; n must be a multiple of the block size.
// Isa::kScalar is the reference implementation, written plainly from the block definitions; the
// SIMD ones agree with it to within float rounding (they may fuse multiply-adds). An unsupported
// isa falls back to the best supported one below it.
void DequantizeRow(DType t, const void* src, float* dst, int64_t n, Isa isa = BestIsa());

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

}  // namespace shardlm::quant
