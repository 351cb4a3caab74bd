// The memory-bound ops: norms, activations, gathers and reductions over rows.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <stdexcept>
#include <string>

#include "kernels/cpu/cpu_ops.h"
#include "kernels/cpu/quant/quant.h"

namespace shardlm::cpu {
namespace {

// y[k] = x[k] / rms(x) * w[k] over one row of d (y may be x). The same order of operations as
// HF: (x * rsqrt(mean + eps)) * w, all in f32.
inline void NormRow(const float* x, const float* w, float eps, int64_t d, float* y) {
  float sum_sq = 0.0f;
#pragma omp simd reduction(+ : sum_sq)
  for (int64_t k = 0; k < d; ++k) sum_sq += x[k] * x[k];
  const float inv_rms = 1.0f / std::sqrt(sum_sq / static_cast<float>(d) + eps);
#pragma omp simd
  for (int64_t k = 0; k < d; ++k) y[k] = (x[k] * inv_rms) * w[k];
}

}  // namespace

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
  for (int64_t r = 0; r < rows; ++r) NormRow(xp + r * d, wp, eps, d, yp + r * d);
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
// HF's gelu_pytorch_tanh, in f32.
inline float GeluTanhTimes(float g, float u) {
  constexpr float kSqrt2OverPi = 0.7978845608028654f;
  return 0.5f * g * (1.0f + std::tanh(kSqrt2OverPi * (g + 0.044715f * g * g * g))) * u;
}

// y[i] = act(g[i]) * u[i] for i < n: the activation chosen once, outside the loop.
template <typename F>
void GluRow(const float* g, const float* u, float* y, int64_t n, F f) {
  for (int64_t i = 0; i < n; ++i) y[i] = f(g[i], u[i]);
}
void GluRow(Activation act, const float* g, const float* u, float* y, int64_t n) {
  switch (act) {
    case Activation::kSilu:
      return GluRow(g, u, y, n, SiluTimes);
    case Activation::kGeluTanh:
      return GluRow(g, u, y, n, GeluTanhTimes);
  }
}

}  // namespace

void GluMul(const Tensor& gate, const Tensor& up, Activation act, Tensor& y, int threads) {
  RequireHostF32("GluMul", {{"gate", &gate}, {"up", &up}, {"y", &y}});
  Require(gate.numel() == up.numel() && gate.numel() == y.numel(), "GluMul",
          "expects gate, up and y of one size", {{"gate", &gate}, {"up", &up}, {"y", &y}});
  const int64_t n = gate.numel();
  const float* gp = gate.data<float>();
  const float* up_p = up.data<float>();
  float* yp = y.data<float>();
  // Chunks of whole cache lines, so that threads never share one.
  constexpr int64_t kChunk = 4096;
  const int64_t chunks = (n + kChunk - 1) / kChunk;
#pragma omp parallel for num_threads(threads) schedule(static) if (n >= kMinParallelWork)
  for (int64_t c = 0; c < chunks; ++c) {
    const int64_t begin = c * kChunk, len = std::min(kChunk, n - begin);
    GluRow(act, gp + begin, up_p + begin, yp + begin, len);
  }
}

void GluMulPacked(const Tensor& gate_up, Activation act, Tensor& y, int threads) {
  RequireHostF32("GluMulPacked", {{"gate_up", &gate_up}, {"y", &y}});
  const int64_t inter = y.rank() >= 1 ? y.dim(-1) : 0;
  const int64_t n = inter > 0 ? y.numel() / inter : 0;
  Require(y.rank() >= 1 && gate_up.rank() >= 1 && gate_up.dim(-1) == 2 * inter &&
              gate_up.numel() == 2 * y.numel() && gate_up.raw() != y.raw(),
          "GluMulPacked", "expects gate_up [n, 2 * inter] and y [n, inter], not aliased",
          {{"gate_up", &gate_up}, {"y", &y}});
  const float* gp = gate_up.data<float>();
  float* yp = y.data<float>();
#pragma omp parallel for num_threads(threads) \
    schedule(static) if (n > 1 && n * inter >= kMinParallelWork)
  for (int64_t i = 0; i < n; ++i) {
    const float* g = gp + i * 2 * inter;
    GluRow(act, g, g + inter, yp + i * inter, inter);
  }
}

void Scale(Tensor& x, float s, int threads) {
  RequireHostF32("Scale", {{"x", &x}});
  const int64_t n = x.numel();
  float* xp = x.data<float>();
#pragma omp parallel for simd num_threads(threads) schedule(static) if (n >= kMinParallelWork)
  for (int64_t i = 0; i < n; ++i) xp[i] *= s;
}

void HeadRmsNorm(Tensor& qkv, int heads, int kv_heads, const Tensor& q_w, const Tensor& k_w,
                 float eps, int threads) {
  RequireHostF32("HeadRmsNorm", {{"qkv", &qkv}, {"q_w", &q_w}, {"k_w", &k_w}});
  const int64_t d = q_w.numel();
  const int64_t width = static_cast<int64_t>(heads + 2 * kv_heads) * d;
  Require(heads > 0 && kv_heads > 0 && d > 0 && q_w.rank() == 1 && k_w.rank() == 1 &&
              k_w.numel() == d && qkv.rank() == 2 && qkv.dim(1) == width,
          "HeadRmsNorm",
          "expects qkv [n, (heads + 2 * kv_heads) * head_dim], q_w and k_w [head_dim]",
          {{"qkv", &qkv}, {"q_w", &q_w}, {"k_w", &k_w}});
  const int64_t n = qkv.dim(0), normed = heads + kv_heads;
  float* base = qkv.data<float>();
  const float* qw = q_w.data<float>();
  const float* kw = k_w.data<float>();
#pragma omp parallel for num_threads(threads) if (n > 1 && n * width >= kMinParallelWork)
  for (int64_t i = 0; i < n; ++i) {
    for (int64_t h = 0; h < normed; ++h) {
      float* x = base + i * width + h * d;
      NormRow(x, h < heads ? qw : kw, eps, d, x);
    }
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
