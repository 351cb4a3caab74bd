// y = x * w^T (+ bias): OpenBLAS for f32 weights; for bf16 / f16 weights a fused converting
// GEMV in decode and, in prefill, sgemm over blocks of rows converted to f32 on the fly.
#include <cblas.h>

#include <algorithm>
#include <climits>
#include <vector>

#include "kernels/cpu/blocked_gemm.h"
#include "kernels/cpu/cpu_ops.h"
#include "kernels/cpu/quant/quant.h"

namespace shardlm::cpu {
namespace {

// y[n, out] = x[n, in] * w[out, in]^T for a bf16 / f16 w with n > 1 (see blocked_gemm.h).
void GemmHalf(DType dtype, const float* x, const uint16_t* w, int64_t n, int64_t out, int64_t in,
              float* y, int threads, Simd simd) {
  BlockedGemm(n, out, in, x, y, out, threads, kMinParallelWork,
              [&](int64_t begin, int64_t count, float* dst) {
                ConvertHalf(dtype, w + begin * in, dst, count * in, simd);
              });
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
