// Dispatch and the parallel drivers: ISA detection, the matrix-vector product (decode), the
// small-batch product (batched decode) and the dequantize-then-sgemm product (prefill).
#include "kernels/cpu/blocked_gemm.h"
#include "kernels/cpu/quant/quant.h"

#include <cblas.h>
#include <omp.h>

#include <algorithm>
#include <climits>
#include <cstring>
#include <stdexcept>
#include <string>
#include <vector>

#include "kernels/cpu/quant/quant_internal.h"

#if defined(__x86_64__) && defined(__GNUC__)
#include <cpuid.h>
#define SHARDLM_QUANT_X86 1
#else
#define SHARDLM_QUANT_X86 0
#endif

namespace shardlm::quant {
namespace {

using internal::Kernels;

// Below this many weight elements a product runs on the calling thread: waking the OpenMP team
// costs more.
constexpr int64_t kMinParallelElements = int64_t{1} << 15;

Isa DetectIsa() {
#if SHARDLM_QUANT_X86
  __builtin_cpu_init();
  // libgcc's checks include the OS enabling the wider register state (XGETBV). F16C straight from
  // CPUID: it needs no OS support beyond the AVX state that the avx2 check covers.
  unsigned eax = 0, ebx = 0, ecx = 0, edx = 0;
  const bool f16c = __get_cpuid(1, &eax, &ebx, &ecx, &edx) && (ecx & bit_F16C) != 0;
  const bool avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && f16c;
  if (avx2 && __builtin_cpu_supports("avx512f") && internal::Avx512Kernels() != nullptr) {
    return Isa::kAvx512;
  }
  if (avx2 && internal::Avx2Kernels() != nullptr) return Isa::kAvx2;
#endif
  return Isa::kScalar;
}

int Resolve(int threads) { return threads > 0 ? threads : std::max(1, omp_get_max_threads()); }

// The type's kernel index, after checking that `t` is quantized and `cols` whole blocks.
int CheckType(const char* op, DType t, int64_t cols) {
  const int idx = internal::QuantIndexOf(t);
  if (idx < 0) {
    throw std::invalid_argument(std::string(op) + ": not a quantized dtype: " + DTypeName(t));
  }
  if (cols < 0 || cols % DTypeBlockElements(t) != 0) {
    throw std::invalid_argument(std::string(op) + ": " + std::to_string(cols) +
                                " elements are not whole blocks of " + DTypeName(t));
  }
  return idx;
}

// Sums of x over each 16 and 32 elements (see internal::XSums), in a buffer reused per thread.
internal::XSums SumsOf(const float* x, int64_t cols) {
  thread_local std::vector<float> sums;
  const int64_t n16 = cols / 16;
  sums.resize(static_cast<size_t>(n16 + n16 / 2));
  float* s16 = sums.data();
  float* s32 = s16 + n16;
  for (int64_t k = 0; k < n16; ++k) {
    float s = 0.0f;
    for (int i = 0; i < 16; ++i) s += x[16 * k + i];
    s16[k] = s;
  }
  for (int64_t k = 0; k < n16 / 2; ++k) s32[k] = s16[2 * k] + s16[2 * k + 1];
  return {s16, s32};
}


}  // namespace

namespace internal {

const Kernels& KernelsFor(Isa isa) {
  if (isa == Isa::kAvx512 && IsaSupported(Isa::kAvx512)) return *Avx512Kernels();
  if ((isa == Isa::kAvx512 || isa == Isa::kAvx2) && IsaSupported(Isa::kAvx2)) return *Avx2Kernels();
  return *ScalarKernels();
}

}  // namespace internal

const char* IsaName(Isa isa) {
  switch (isa) {
    case Isa::kScalar: return "scalar";
    case Isa::kAvx2: return "avx2";
    case Isa::kAvx512: return "avx512";
  }
  return "?";
}

bool IsaSupported(Isa isa) { return static_cast<int>(isa) <= static_cast<int>(BestIsa()); }

Isa BestIsa() {
  static const Isa best = DetectIsa();
  return best;
}

void DequantizeRow(DType t, const void* src, float* dst, int64_t n, Isa isa) {
  const int idx = CheckType("DequantizeRow", t, n);
  internal::KernelsFor(isa).dequant[idx](static_cast<const uint8_t*>(src), dst,
                                        n / DTypeBlockElements(t));
}

void QuantGemv(DType t, const void* w, int64_t rows, int64_t cols, const float* x, float* y,
               int threads, Isa isa) {
  const int idx = CheckType("QuantGemv", t, cols);
  if (rows < 0) throw std::invalid_argument("QuantGemv: negative rows");
  if (rows == 0) return;
  if (cols == 0) {
    std::fill(y, y + rows, 0.0f);
    return;
  }
  threads = Resolve(threads);
  const internal::RowsFn kernel = internal::KernelsFor(isa).rows[idx];
  const auto* wp = static_cast<const uint8_t*>(w);
  const size_t ld = DTypeBytes(t, cols);
  const int64_t blocks = cols / DTypeBlockElements(t);
  const internal::XSums xs = SumsOf(x, cols);
  constexpr int kRows = internal::kGemvRows;
  const int64_t groups = (rows + kRows - 1) / kRows;
  const bool parallel = threads > 1 && groups > 1 && rows * cols >= kMinParallelElements;
  // Static schedule: each thread streams one contiguous range of rows, which the hardware
  // prefetchers follow best.
#pragma omp parallel for num_threads(threads) schedule(static) if (parallel)
  for (int64_t g = 0; g < groups; ++g) {
    const int64_t r0 = g * kRows;
    const int n = static_cast<int>(std::min<int64_t>(kRows, rows - r0));
    kernel(wp + static_cast<size_t>(r0) * ld, ld, n, blocks, x, xs, y + r0);
  }
}

namespace {

// Checks QuantMatmul's arguments and handles the products with nothing to compute; returns the
// type's kernel index, or -1 when y is done.
int MatmulPrologue(const char* op, DType t, int64_t rows, int64_t cols, int64_t n, float* y,
                   int64_t ldy) {
  const int idx = CheckType(op, t, cols);
  if (rows < 0 || n < 0 || ldy < rows) {
    throw std::invalid_argument(std::string(op) + ": expects rows, n >= 0 and ldy >= rows");
  }
  if (rows > INT_MAX || cols > INT_MAX || n > INT_MAX || ldy > INT_MAX) {
    throw std::invalid_argument(std::string(op) + ": dimensions must be below 2^31");
  }
  if (n == 0 || rows == 0) return -1;
  if (cols == 0) {
    for (int64_t i = 0; i < n; ++i) std::fill(y + i * ldy, y + i * ldy + rows, 0.0f);
    return -1;
  }
  return idx;
}

}  // namespace

namespace internal {

// Measured with quant_bench's "paths" section on the 2-core AVX-512 dev machine (576 x 1536,
// 1536 x 576 and 4096 x 4096, all six types). One core each: the AVX-512 kernels beat
// dequantize + sgemm at every n up to 32, by 1.4-7x at n = 2..8 and 1.25-2.1x at n = 32; the
// AVX2 kernels against OpenBLAS's Haswell sgemm (OPENBLAS_CORETYPE=Haswell, what an AVX2
// machine runs) by 2-6x at n = 2..8 and 1.05-1.5x at n = 32. Both cores: AVX-512 by 1.25x
// (1536 x 576) to 3x (576 x 1536) at n = 32. The crossover lies past 32 for every type and
// shape, so one limit serves all. The scalar kernels lose to sgemm (after the same scalar
// dequantization) at every n, 1.3x at n = 2 to 7.5x at n = 32, so they are never picked; they
// stay as the reference for the SIMD ones.
int64_t SmallBatchLimit(DType /*t*/, Isa isa) {
  return &KernelsFor(isa) == ScalarKernels() ? 1 : kMaxSmallBatch;
}

// Threads take contiguous ranges of whole groups of the kernel's rows, as QuantGemv's static
// schedule does, and run the kernel over them.
void QuantMatmulSmall(DType t, const void* w, int64_t rows, int64_t cols, const float* x,
                      int64_t n, float* y, int64_t ldy, int threads, Isa isa) {
  const int idx = MatmulPrologue("QuantMatmul", t, rows, cols, n, y, ldy);
  if (idx < 0) return;
  if (n > kMaxSmallBatch) {
    throw std::invalid_argument("QuantMatmul: the small-batch path takes n <= " +
                                std::to_string(kMaxSmallBatch));
  }
  threads = Resolve(threads);
  const Kernels& kernels = KernelsFor(isa);
  const BatchFn kernel = kernels.batch[idx];
  const auto* wp = static_cast<const uint8_t*>(w);
  const size_t ld = DTypeBytes(t, cols);
  const int64_t blocks = cols / DTypeBlockElements(t);
  const int64_t group = kernels.batch_rows;
  const int64_t groups = (rows + group - 1) / group;
  const bool parallel = threads > 1 && groups > 1 && n * rows * cols >= kMinParallelElements;
#pragma omp parallel num_threads(threads) if (parallel)
  {
    const int64_t team = omp_get_num_threads(), me = omp_get_thread_num();
    const int64_t g0 = groups * me / team, g1 = groups * (me + 1) / team;
    if (g1 > g0) {
      const int64_t r0 = g0 * group, r1 = std::min(rows, g1 * group);
      kernel(wp + static_cast<size_t>(r0) * ld, ld, r1 - r0, blocks, x, cols,
             static_cast<int>(n), y + r0, ldy);
    }
  }
}

// Each thread takes whole blocks of rows, dequantizes one into its own f32 buffer and multiplies
// it by x with a single-threaded sgemm, writing the block's columns of y. Threads thus dequantize
// and multiply at once, and each dequantized block is consumed from cache right after it is
// written (the scheme linear.cpp uses for bf16 / f16 weights, measured there against one
// multithreaded sgemm per block).
void QuantMatmulSgemm(DType t, const void* w, int64_t rows, int64_t cols, const float* x,
                      int64_t n, float* y, int64_t ldy, int threads, Isa isa) {
  const int idx = MatmulPrologue("QuantMatmul", t, rows, cols, n, y, ldy);
  if (idx < 0) return;
  threads = Resolve(threads);
  const DequantFn dequant = KernelsFor(isa).dequant[idx];
  const auto* wp = static_cast<const uint8_t*>(w);
  const size_t ld = DTypeBytes(t, cols);
  const int64_t row_blocks = cols / DTypeBlockElements(t);
  cpu::BlockedGemm(n, rows, cols, x, y, ldy, threads, kMinParallelElements,
                   [&](int64_t begin, int64_t count, float* dst) {
                     dequant(wp + static_cast<size_t>(begin) * ld, dst, count * row_blocks);
                   });
}

}  // namespace internal

void QuantMatmul(DType t, const void* w, int64_t rows, int64_t cols, const float* x, int64_t n,
                 float* y, int64_t ldy, int threads, Isa isa) {
  if (MatmulPrologue("QuantMatmul", t, rows, cols, n, y, ldy) < 0) return;
  if (n == 1) return QuantGemv(t, w, rows, cols, x, y, threads, isa);
  if (n <= internal::SmallBatchLimit(t, isa)) {
    return internal::QuantMatmulSmall(t, w, rows, cols, x, n, y, ldy, threads, isa);
  }
  internal::QuantMatmulSgemm(t, w, rows, cols, x, n, y, ldy, threads, isa);
}

}  // namespace shardlm::quant
