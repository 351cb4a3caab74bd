#include <cblas.h>

#include <climits>

#include "kernels/cpu/cpu_ops.h"

namespace shardlm::cpu {

void Linear(const Tensor& x, const Tensor& w, const Tensor* bias, Tensor& y, int threads) {
  RequireHostF32("Linear", {{"x", &x}, {"w", &w}, {"y", &y}});
  if (bias != nullptr) RequireHostF32("Linear", {{"bias", bias}});
  Require(
      w.rank() == 2 && w.dim(0) > 0 && w.dim(1) > 0 && w.dim(0) <= INT_MAX && w.dim(1) <= INT_MAX,
      "Linear", "w must be [out, in] with 0 < out, in < 2^31", {{"w", &w}});
  const int64_t out = w.dim(0);
  const int64_t in = w.dim(1);
  const int64_t n = x.rank() >= 1 ? x.numel() / in : 0;
  Require(x.rank() >= 1 && x.dim(-1) == in && y.rank() >= 1 && y.dim(-1) == out &&
              y.numel() == n * out && n <= INT_MAX && (bias == nullptr || bias->numel() == out),
          "Linear", "expects x [n, in], w [out, in], y [n, out], bias [out]",
          {{"x", &x}, {"w", &w}, {"y", &y}});
  if (n == 0) return;
  const float* xp = x.data<float>();
  const float* wp = w.data<float>();
  float* yp = y.data<float>();
  if (n == 1) {
    // Decode: a matrix-vector product, which sgemv streams through w without packing it.
    cblas_sgemv(CblasRowMajor, CblasNoTrans, static_cast<blasint>(out), static_cast<blasint>(in),
                1.0f, wp, static_cast<blasint>(in), xp, 1, 0.0f, yp, 1);
  } else {
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, static_cast<blasint>(n),
                static_cast<blasint>(out), static_cast<blasint>(in), 1.0f, xp,
                static_cast<blasint>(in), wp, static_cast<blasint>(in), 0.0f, yp,
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
