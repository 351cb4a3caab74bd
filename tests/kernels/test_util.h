// Helpers shared by the kernel tests: random tensors and element-wise comparisons against
// double-precision references.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>
#include <random>
#include <span>
#include <sstream>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "base/tensor.h"

namespace shardlm::testutil {

inline std::vector<float> RandomVector(size_t n, uint32_t seed, float lo = -1.0f, float hi = 1.0f) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> dist(lo, hi);
  std::vector<float> v(n);
  for (float& x : v) x = dist(rng);
  return v;
}

// An owned host f32 tensor holding `values`.
inline Tensor FromVector(std::vector<int64_t> shape, const std::vector<float>& values) {
  Tensor t = Tensor::Empty(std::move(shape), DType::kF32);
  EXPECT_EQ(static_cast<size_t>(t.numel()), values.size());
  std::memcpy(t.raw(), values.data(), values.size() * sizeof(float));
  return t;
}

inline Tensor RandomTensor(std::vector<int64_t> shape, uint32_t seed) {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return FromVector(std::move(shape), RandomVector(static_cast<size_t>(n), seed));
}

inline std::vector<float> ToVector(const Tensor& t) {
  const float* p = t.data<float>();
  return std::vector<float>(p, p + t.numel());
}

// |got - want| <= atol + rtol * |want| everywhere; reports the first mismatch and the count.
inline ::testing::AssertionResult AllClose(std::span<const float> got, std::span<const double> want,
                                           double atol, double rtol = 1e-5) {
  if (got.size() != want.size()) {
    return ::testing::AssertionFailure()
           << "size mismatch: got " << got.size() << ", want " << want.size();
  }
  size_t bad = 0;
  std::ostringstream first;
  for (size_t i = 0; i < got.size(); ++i) {
    const double diff = std::abs(static_cast<double>(got[i]) - want[i]);
    if (!(diff <= atol + rtol * std::abs(want[i]))) {  // NaN fails too
      if (bad == 0) {
        first.precision(9);
        first << "first mismatch at " << i << ": want " << want[i] << ", got " << got[i]
              << " (diff " << diff << ")";
      }
      ++bad;
    }
  }
  if (bad == 0) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure()
         << bad << " of " << got.size() << " elements differ; " << first.str();
}

inline ::testing::AssertionResult AllClose(const Tensor& got, std::span<const double> want,
                                           double atol, double rtol = 1e-5) {
  return AllClose(std::span<const float>(got.data<float>(), static_cast<size_t>(got.numel())), want,
                  atol, rtol);
}

inline ::testing::AssertionResult AllClose(const Tensor& got, const Tensor& want, double atol,
                                           double rtol = 1e-5) {
  std::vector<float> w = ToVector(want);
  return AllClose(got, std::vector<double>(w.begin(), w.end()), atol, rtol);
}

}  // namespace shardlm::testutil
