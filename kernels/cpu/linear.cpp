// y = x * w^T (+ bias): OpenBLAS for f32 weights; for bf16 / f16 weights a fused converting
// GEMV in decode and, in prefill, sgemm over blocks of rows converted to f32 on the fly.
#include <cblas.h>

#include <algorithm>
#include <climits>
#include <vector>

#include "kernels/cpu/cpu_ops.h"
#include "kernels/cpu/quant/quant.h"

namespace shardlm::cpu {
namespace {

// Rows of a 16-bit weight converted per block in prefill. Bigger blocks amortise sgemm's
// per-call packing of x: on the 2-core bench (hidden 2048, intermediate 5632, 128-token prompt)
// 128-256 rows gave 135-143 tok/s, 64 rows 120 and 512 rows 127. The f32 buffer is capped at
// 8 MiB per thread for very wide inputs, and blocks shrink so that every thread gets one.
int64_t BlockRows(int64_t out, int64_t in, int threads) {
  constexpr int64_t kMaxRows = 256;
  constexpr int64_t kMaxBytes = int64_t{8} << 20;
  const int64_t by_bytes = kMaxBytes / (in * static_cast<int64_t>(sizeof(float)));
  const int64_t per_thread = (out + threads - 1) / threads;
  const int64_t rows = std::min({kMaxRows, by_bytes, (per_thread + 15) / 16 * 16});
  return std::max<int64_t>(rows / 16 * 16, 16);
}

// y[n, out] = x[n, in] * w[out, in]^T for a bf16 / f16 w with n > 1. Each thread takes whole
// blocks of rows of w, converts one into its own f32 buffer and multiplies it by x with a
// single-threaded sgemm, writing the block's columns of y (ldc = out). Threads thus convert and
// multiply at once, and each converted block is consumed from cache right after it is written.
// The alternative, converting each block with all threads and then one multithreaded sgemm per
// block, ran at 30-88 tok/s on the bench above (OpenMP and OpenBLAS's own pool hand the cores
// back and forth per block) against 140 for this one and 90 for f32 weights.
void GemmHalf(DType dtype, const float* x, const uint16_t* w, int64_t n, int64_t out, int64_t in,
              float* y, int threads, Simd simd) {
  const int64_t block = BlockRows(out, in, threads);
  const int64_t blocks = (out + block - 1) / block;
  const bool parallel = threads > 1 && blocks > 1 && n * out * in >= kMinParallelWork;
  // OpenBLAS (the pthreads build) has one process-wide thread count and would otherwise have
  // every caller of this region fan out to its own pool; the count is restored after.
  const int blas_threads = openblas_get_num_threads();
  if (parallel && blas_threads != 1) openblas_set_num_threads(1);
#pragma omp parallel num_threads(threads) if (parallel)
  {
    // Reused across calls: a fresh multi-MiB buffer per call would page-fault every time.
    thread_local std::vector<float> buffer;
    buffer.resize(static_cast<size_t>(std::min(block, out) * in));
#pragma omp for schedule(static)
    for (int64_t b = 0; b < blocks; ++b) {
      const int64_t begin = b * block;
      const int64_t rows = std::min(block, out - begin);
      ConvertHalf(dtype, w + begin * in, buffer.data(), rows * in, simd);
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, static_cast<blasint>(n),
                  static_cast<blasint>(rows), static_cast<blasint>(in), 1.0f, x,
                  static_cast<blasint>(in), buffer.data(), static_cast<blasint>(in), 0.0f,
                  y + begin, static_cast<blasint>(out));
    }
  }
  if (parallel && blas_threads != 1) openblas_set_num_threads(blas_threads);
}

}  // namespace

void Linear(const Tensor& x, const Tensor& w, const Tensor* bias, Tensor& y, int threads,
            Simd simd) {
  RequireHostF32("Linear", {{"x", &x}, {"y", &y}});
  if (bias != nullptr) RequireHostF32("Linear", {{"bias", bias}});
  const bool half = w.dtype() == DType::kBF16 || w.dtype() == DType::kF16;
  const bool quantized = IsQuantized(w.dtype());
  if (!half && !quantized) RequireHostF32("Linear", {{"w", &w}});
  Require(w.device() == Device::kCpu && w.defined() && w.rank() == 2 && w.dim(0) > 0 &&
              w.dim(1) > 0 && w.dim(0) <= INT_MAX && w.dim(1) <= INT_MAX,
          "Linear", "w must be a host [out, in] with 0 < out, in < 2^31", {{"w", &w}});
  const int64_t out = w.dim(0);
  const int64_t in = w.dim(1);
  const int64_t n = x.rank() >= 1 ? x.numel() / in : 0;
  Require(x.rank() >= 1 && x.dim(-1) == in && y.rank() >= 1 && y.dim(-1) == out &&
              y.numel() == n * out && n <= INT_MAX && (bias == nullptr || bias->numel() == out),
          "Linear", "expects x [n, in], w [out, in], y [n, out], bias [out]",
          {{"x", &x}, {"w", &w}, {"y", &y}});
  if (n == 0) return;
  const float* xp = x.data<float>();
  float* yp = y.data<float>();
  if (quantized) {
    // ggml blocks stay quantized in memory; they are dequantized block by block inside the
    // kernels (f32 activations).
    if (n == 1) {
      quant::QuantGemv(w.dtype(), w.raw(), out, in, xp, yp, threads);
    } else {
      quant::QuantMatmul(w.dtype(), w.raw(), out, in, xp, n, yp, out, threads);
    }
  } else if (half) {
    const auto* wp = w.data<uint16_t>();
    if (n == 1) {
      GemvHalf(w.dtype(), wp, out, in, xp, yp, threads, simd);
    } else {
      GemmHalf(w.dtype(), xp, wp, n, out, in, yp, threads, simd);
    }
  } else if (n == 1) {
    // Decode: a matrix-vector product, which sgemv streams through w without packing it.
    cblas_sgemv(CblasRowMajor, CblasNoTrans, static_cast<blasint>(out), static_cast<blasint>(in),
                1.0f, w.data<float>(), static_cast<blasint>(in), xp, 1, 0.0f, yp, 1);
  } else {
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, static_cast<blasint>(n),
                static_cast<blasint>(out), static_cast<blasint>(in), 1.0f, xp,
                static_cast<blasint>(in), w.data<float>(), static_cast<blasint>(in), 0.0f, yp,
                static_cast<blasint>(out));
  }
  if (bias == nullptr) return;
  const float* bp = bias->data<float>();
#pragma omp parallel for num_threads(threads) if (n * out >= kMinParallelWork && n > 1)
  for (int64_t r = 0; r < n; ++r) {
    float* row = yp + r * out;
#pragma omp simd
    for (int64_t o = 0; o < out; ++o) row[o] += bp[o];
  }
}

}  // namespace shardlm::cpu
