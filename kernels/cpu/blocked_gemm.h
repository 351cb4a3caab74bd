// Prefill matmul for weights held in a compact form (bf16 / f16, ggml quantized blocks):
// y[n, rows] (leading dimension ldy) = x[n, cols] * W^T, W converted to f32 block by block.
// Shared by kernels/cpu/linear.cpp and kernels/cpu/quant/quant.cpp.
#pragma once

#include <cblas.h>

#include <algorithm>
#include <cstdint>
#include <vector>

namespace shardlm::cpu {

// Rows of W converted per block. Bigger blocks amortise sgemm's per-call packing of x: on the
// 2-core bench (hidden 2048, intermediate 5632, 128-token prompt) 128-256 rows gave 135-143
// tok/s, 64 rows 120 and 512 rows 127. The f32 buffer is capped at 8 MiB per thread for very
// wide inputs, and blocks shrink so that every thread gets one.
inline int64_t BlockedGemmRows(int64_t rows, int64_t cols, int threads) {
  constexpr int64_t kMaxRows = 256;
  constexpr int64_t kMaxBytes = int64_t{8} << 20;
  const int64_t by_bytes = kMaxBytes / (cols * static_cast<int64_t>(sizeof(float)));
  const int64_t per_thread = (rows + threads - 1) / threads;
  const int64_t block = std::min({kMaxRows, by_bytes, (per_thread + 15) / 16 * 16});
  return std::max<int64_t>(block / 16 * 16, 16);
}

// Each thread takes whole blocks of rows of W, converts one into its own f32 buffer with
// `to_f32(begin, count, dst)` and multiplies it by x with a single-threaded sgemm, writing the
// block's columns of y. Threads thus convert and multiply at once, and each converted block is
// consumed from cache right after it is written. The alternative, converting each block with all
// threads and then one multithreaded sgemm per block, ran at 30-88 tok/s on the bench above
// (OpenMP and OpenBLAS's own pool hand the cores back and forth per block) against 140 for this.
// Work below `min_parallel_work` multiply-adds runs on the calling thread.
template <typename ToF32>
void BlockedGemm(int64_t n, int64_t rows, int64_t cols, const float* x, float* y, int64_t ldy,
                 int threads, int64_t min_parallel_work, const ToF32& to_f32) {
  const int64_t block = BlockedGemmRows(rows, cols, threads);
  const int64_t blocks = (rows + block - 1) / block;
  const bool parallel = threads > 1 && blocks > 1 && n * rows * cols >= min_parallel_work;
  // OpenBLAS (the pthreads build) has one process-wide thread count and would otherwise have
  // every caller of this region fan out to its own pool; the count is restored after.
  const int blas_threads = openblas_get_num_threads();
  if (parallel && blas_threads != 1) openblas_set_num_threads(1);
#pragma omp parallel num_threads(threads) if (parallel)
  {
    // Reused across calls: a fresh multi-MiB buffer per call would page-fault every time.
    thread_local std::vector<float> buffer;
    buffer.resize(static_cast<size_t>(std::min(block, rows) * cols));
#pragma omp for schedule(static)
    for (int64_t b = 0; b < blocks; ++b) {
      const int64_t begin = b * block;
      const int64_t count = std::min(block, rows - begin);
      to_f32(begin, count, buffer.data());
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, static_cast<blasint>(n),
                  static_cast<blasint>(count), static_cast<blasint>(cols), 1.0f, x,
                  static_cast<blasint>(cols), buffer.data(), static_cast<blasint>(cols), 0.0f,
                  y + begin, static_cast<blasint>(ldy));
    }
  }
  if (parallel && blas_threads != 1) openblas_set_num_threads(blas_threads);
}

}  // namespace shardlm::cpu
