// The fixture of tests that check a CUDA op against the CPU backend's: skips without a device,
// and holds a CUDA backend, the CPU backend (the reference) and a seeded generator.
#pragma once

#include <cstdint>
#include <memory>
#include <random>
#include <utility>
#include <vector>

#include <gtest/gtest.h>

#include "base/tensor.h"
#include "kernels/backend.h"
#include "kernels/cpu/cpu_backend.h"
#include "kernels/cuda/cuda_backend.h"

namespace shardlm {

class CudaVsCpuTest : public ::testing::Test {
 protected:
  explicit CudaVsCpuTest(uint32_t seed) : rng_(seed) {}

  void SetUp() override {
    if (CudaDeviceCount() == 0) {
      GTEST_SKIP() << "no CUDA device (cudaGetDeviceCount gives 0 or an error)";
    }
    cuda_ = CreateCudaBackend(0);
    cpu_ = CreateCpuBackend(2);
  }

  // A host f32 tensor of values uniform in [lo, hi).
  Tensor Random(std::vector<int64_t> shape, float lo = -1.0f, float hi = 1.0f) {
    Tensor t = Tensor::Empty(std::move(shape), DType::kF32);
    std::uniform_real_distribution<float> dist(lo, hi);
    for (int64_t i = 0; i < t.numel(); ++i) t.data<float>()[i] = dist(rng_);
    return t;
  }

  std::unique_ptr<Backend> cuda_;
  std::unique_ptr<Backend> cpu_;
  std::mt19937 rng_;
};

}  // namespace shardlm
