// The memory-bound ops: norms, activations, gathers and reductions over rows.
#include <cmath>
#include <cstring>
#include <limits>
#include <stdexcept>
#include <string>

#include "kernels/cpu/cpu_ops.h"
#include "kernels/cpu/quant/quant.h"

namespace shardlm::cpu {

void RmsNorm(const Tensor& x, const Tensor& w, float eps, Tensor& y, int threads) {
  RequireHostF32("RmsNorm", {{"x", &x}, {"w", &w}, {"y", &y}});
  const int64_t d = w.numel();
  Require(w.rank() == 1 && d > 0 && x.rank() >= 1 && x.dim(-1) == d && y.rank() >= 1 &&
              y.dim(-1) == d && y.numel() == x.numel(),
          "RmsNorm", "expects x [n, d], w [d], y [n, d]", {{"x", &x}, {"w", &w}, {"y", &y}});
  const int64_t rows = x.numel() / d;
  const float* xp = x.data<float>();
  const float* wp = w.data<float>();
  float* yp = y.data<float>();
#pragma omp parallel for num_threads(threads) if (rows > 1 && rows * d >= kMinParallelWork)
  for (int64_t r = 0; r < rows; ++r) {
    const float* xr = xp + r * d;
    float* yr = yp + r * d;
    float sum_sq = 0.0f;
#pragma omp simd reduction(+ : sum_sq)
    for (int64_t k = 0; k < d; ++k) sum_sq += xr[k] * xr[k];
    // Same order of operations as HF: (x * rsqrt(mean + eps)) * w, all in f32.
    const float inv_rms = 1.0f / std::sqrt(sum_sq / static_cast<float>(d) + eps);
#pragma omp simd
    for (int64_t k = 0; k < d; ++k) yr[k] = (xr[k] * inv_rms) * wp[k];
  }
}

void Embedding(const Tensor& table, std::span<const int32_t> ids, Tensor& y, int threads,
               Simd simd) {
  RequireHostF32("Embedding", {{"y", &y}});
  const DType dtype = table.dtype();
  const bool half = dtype == DType::kBF16 || dtype == DType::kF16;
  const bool quantized = IsQuantized(dtype);
  if (!half && !quantized) RequireHostF32("Embedding", {{"table", &table}});
  Require(table.device() == Device::kCpu && table.defined() && table.rank() == 2 && y.rank() >= 1 &&
              y.dim(-1) == table.dim(1) &&
              y.numel() == static_cast<int64_t>(ids.size()) * table.dim(1),
          "Embedding", "expects table [vocab, d], y [n, d] with n == ids.size()",
          {{"table", &table}, {"y", &y}});
  const int64_t vocab = table.dim(0);
  const int64_t d = table.dim(1);
  for (int32_t id : ids) {
    if (id < -1 || id >= vocab) {
      throw std::out_of_range("Embedding: token id " + std::to_string(id) + " outside [0, " +
                              std::to_string(vocab) + ") (or -1 for a zero row)");
    }
  }
  const int64_t n = static_cast<int64_t>(ids.size());
  float* yp = y.data<float>();
#pragma omp parallel for num_threads(threads) if (n > 1 && n * d >= kMinParallelWork)
  for (int64_t i = 0; i < n; ++i) {
    const int64_t offset = static_cast<int64_t>(ids[i]) * d;
    if (ids[i] < 0) {  // owned by another vocabulary shard
      std::memset(yp + i * d, 0, d * sizeof(float));
    } else if (quantized) {  // so is a quantized one, block by block
      quant::DequantizeRow(dtype, static_cast<const char*>(table.raw()) + DTypeBytes(dtype, offset),
                           yp + i * d, d);
    } else if (half) {  // a 16-bit table is converted row by row as it is gathered
      ConvertHalf(dtype, table.data<uint16_t>() + offset, yp + i * d, d, simd);
    } else {
      std::memcpy(yp + i * d, table.data<float>() + offset, d * sizeof(float));
    }
  }
}

namespace {

inline float SiluTimes(float g, float u) { return g / (1.0f + std::exp(-g)) * u; }

}  // namespace

void SiluMul(const Tensor& gate, const Tensor& up, Tensor& y, int threads) {
  RequireHostF32("SiluMul", {{"gate", &gate}, {"up", &up}, {"y", &y}});
  Require(gate.numel() == up.numel() && gate.numel() == y.numel(), "SiluMul",
          "expects gate, up and y of one size", {{"gate", &gate}, {"up", &up}, {"y", &y}});
  const int64_t n = gate.numel();
  const float* gp = gate.data<float>();
  const float* up_p = up.data<float>();
  float* yp = y.data<float>();
#pragma omp parallel for num_threads(threads) schedule(static) if (n >= kMinParallelWork)
  for (int64_t i = 0; i < n; ++i) yp[i] = SiluTimes(gp[i], up_p[i]);
}

void SiluMulPacked(const Tensor& gate_up, Tensor& y, int threads) {
  RequireHostF32("SiluMulPacked", {{"gate_up", &gate_up}, {"y", &y}});
  const int64_t inter = y.rank() >= 1 ? y.dim(-1) : 0;
  const int64_t n = inter > 0 ? y.numel() / inter : 0;
  Require(y.rank() >= 1 && gate_up.rank() >= 1 && gate_up.dim(-1) == 2 * inter &&
              gate_up.numel() == 2 * y.numel() && gate_up.raw() != y.raw(),
          "SiluMulPacked", "expects gate_up [n, 2 * inter] and y [n, inter], not aliased",
          {{"gate_up", &gate_up}, {"y", &y}});
  const float* gp = gate_up.data<float>();
  float* yp = y.data<float>();
#pragma omp parallel for num_threads(threads) \
    schedule(static) if (n > 1 && n * inter >= kMinParallelWork)
  for (int64_t i = 0; i < n; ++i) {
    const float* g = gp + i * 2 * inter;
    const float* u = g + inter;
    float* out = yp + i * inter;
    for (int64_t j = 0; j < inter; ++j) out[j] = SiluTimes(g[j], u[j]);
  }
}

void Add(Tensor& x, const Tensor& y, int threads) {
  RequireHostF32("Add", {{"x", &x}, {"y", &y}});
  Require(x.numel() == y.numel(), "Add", "expects x and y of one size", {{"x", &x}, {"y", &y}});
  const int64_t n = x.numel();
  float* xp = x.data<float>();
  const float* yp = y.data<float>();
#pragma omp parallel for simd num_threads(threads) schedule(static) if (n >= kMinParallelWork)
  for (int64_t i = 0; i < n; ++i) xp[i] += yp[i];
}

void Argmax(const Tensor& logits, std::span<int32_t> out, std::span<float> values, int threads) {
  RequireHostF32("Argmax", {{"logits", &logits}});
  Require(logits.rank() >= 1 && logits.dim(-1) > 0 && logits.dim(-1) <= INT32_MAX &&
              logits.numel() / logits.dim(-1) == static_cast<int64_t>(out.size()) &&
              (values.empty() || values.size() == out.size()),
          "Argmax", "expects logits [n, vocab] with n == out.size() (== values.size() if given)",
          {{"logits", &logits}});
  const int64_t vocab = logits.dim(-1);
  const int64_t rows = static_cast<int64_t>(out.size());
  const float* lp = logits.data<float>();
#pragma omp parallel for num_threads(threads) if (rows > 1 && rows * vocab >= kMinParallelWork)
  for (int64_t r = 0; r < rows; ++r) {
    const float* row = lp + r * vocab;
    // Two passes: a vectorised max, then the first index holding it (first wins on ties).
    float best = -std::numeric_limits<float>::infinity();
#pragma omp simd reduction(max : best)
    for (int64_t j = 0; j < vocab; ++j) best = row[j] > best ? row[j] : best;
    int32_t index = 0;  // stays 0 for an all-NaN row
    for (int64_t j = 0; j < vocab; ++j) {
      if (row[j] == best) {
        index = static_cast<int32_t>(j);
        break;
      }
    }
    out[r] = index;
    if (!values.empty()) values[r] = row[index];
  }
}

}  // namespace shardlm::cpu
