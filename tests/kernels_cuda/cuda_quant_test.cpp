// The CUDA kernels over ggml block-quantized weights (kernels/cuda/cuda_quant.h) against the CPU
// reference: random f32 weights quantized with the CPU QuantizeRow, the reference product from
// the CPU scalar DequantizeRow and a double-precision dot. Tolerances: the GEMV to 1e-3 of the
// largest |reference| (f32 accumulation in another order); the 16-bit dequantization to 2e-2 of
// each element (bf16 keeps 8 significant bits). Every test but the host-only one skips without a
// CUDA device.
#include "kernels/cuda/cuda_quant.h"

#include <cuda_runtime_api.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <random>
#include <stdexcept>
#include <string>
#include <vector>

#include "kernels/cpu/quant/quant.h"
#include "base/dtype.h"

namespace shardlm {
namespace {

using cuda::HalfKind;
using cuda::QuantKind;

constexpr double kGemvTol = 1e-3;
constexpr double kHalfTol = 2e-2;

struct Kind {
  QuantKind kind;
  DType dtype;
};
const Kind kKinds[] = {
    {QuantKind::kQ8_0, DType::kQ8_0}, {QuantKind::kQ4_0, DType::kQ4_0},
    {QuantKind::kQ4_1, DType::kQ4_1}, {QuantKind::kQ4_K, DType::kQ4_K},
    {QuantKind::kQ5_K, DType::kQ5_K}, {QuantKind::kQ6_K, DType::kQ6_K},
};

bool HaveCudaDevice() {
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess) {
    cudaGetLastError();  // clear the error
    return false;
  }
  return count > 0;
}

void CudaCheck(cudaError_t err, const char* what) {
  if (err != cudaSuccess) {
    throw std::runtime_error(std::string(what) + ": " + cudaGetErrorString(err));
  }
}

// A device allocation of `bytes` bytes, freed on scope exit.
class DeviceBuffer {
 public:
  explicit DeviceBuffer(size_t bytes) { CudaCheck(cudaMalloc(&ptr_, bytes), "cudaMalloc"); }
  ~DeviceBuffer() { cudaFree(ptr_); }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  uint8_t* get() const { return static_cast<uint8_t*>(ptr_); }

 private:
  void* ptr_ = nullptr;
};

void ToDevice(void* dst, const void* src, size_t bytes) {
  CudaCheck(cudaMemcpy(dst, src, bytes, cudaMemcpyHostToDevice), "cudaMemcpy to device");
}
void ToHost(void* dst, const void* src, size_t bytes) {
  CudaCheck(cudaMemcpy(dst, src, bytes, cudaMemcpyDeviceToHost), "cudaMemcpy to host");
}

// A random [rows, cols] matrix quantized row by row on the CPU, and its CPU dequantization.
struct Quantized {
  int64_t rows = 0, cols = 0;
  size_t row_bytes = 0;
  std::vector<uint8_t> blocks;
  std::vector<float> deq;
};

Quantized MakeQuantized(DType dtype, int64_t rows, int64_t cols, std::mt19937& rng) {
  Quantized q;
  q.rows = rows;
  q.cols = cols;
  q.row_bytes = DTypeBytes(dtype, cols);
  std::vector<float> w(static_cast<size_t>(rows * cols));
  std::uniform_real_distribution<float> dist(-1.0f, 1.0f);
  for (float& v : w) v = dist(rng);
  // Every third row all positive, so that the K types also see zero mins.
  for (int64_t r = 0; r < rows; r += 3) {
    for (int64_t c = 0; c < cols; ++c) w[r * cols + c] = 0.3f * w[r * cols + c] + 0.5f;
  }
  q.blocks.resize(rows * q.row_bytes);
  q.deq.resize(w.size());
  for (int64_t r = 0; r < rows; ++r) {
    quant::QuantizeRow(dtype, w.data() + r * cols, q.blocks.data() + r * q.row_bytes, cols);
    quant::DequantizeRow(dtype, q.blocks.data() + r * q.row_bytes, q.deq.data() + r * cols, cols,
                         quant::Isa::kScalar);
  }
  return q;
}

class CudaQuantTest : public ::testing::TestWithParam<Kind> {
 protected:
  void SetUp() override {
    if (!HaveCudaDevice()) {
      GTEST_SKIP() << "no CUDA device: cudaGetDeviceCount failed or found none";
    }
    CudaCheck(cudaStreamCreate(&stream_), "cudaStreamCreate");
  }
  void TearDown() override {
    if (stream_ != nullptr) cudaStreamDestroy(stream_);
  }

  // LaunchQuantGemv for each n in `ns` against the f64 reference. The weights are uploaded at
  // byte offset w_offset of the allocation and x at float offset x_offset (misaligned pointers
  // take the kernels' slower load paths).
  void CheckGemv(int64_t rows, int64_t cols, const std::vector<int64_t>& ns, size_t w_offset,
                 size_t x_offset) {
    const Kind k = GetParam();
    const Quantized q = MakeQuantized(k.dtype, rows, cols, rng_);
    const int64_t max_n = *std::max_element(ns.begin(), ns.end());
    std::vector<float> x(static_cast<size_t>(max_n * cols));
    std::uniform_real_distribution<float> dist(-1.0f, 1.0f);
    for (float& v : x) v = dist(rng_);

    DeviceBuffer dw(q.blocks.size() + w_offset);
    DeviceBuffer dx((x.size() + x_offset) * sizeof(float));
    DeviceBuffer dy(static_cast<size_t>(max_n * rows) * sizeof(float));
    ToDevice(dw.get() + w_offset, q.blocks.data(), q.blocks.size());
    float* x_dev = reinterpret_cast<float*>(dx.get()) + x_offset;
    ToDevice(x_dev, x.data(), x.size() * sizeof(float));
    float* y_dev = reinterpret_cast<float*>(dy.get());

    for (int64_t n : ns) {
      SCOPED_TRACE("n = " + std::to_string(n) + ", W [" + std::to_string(rows) + ", " +
                   std::to_string(cols) + "], w offset " + std::to_string(w_offset) +
                   ", x offset " + std::to_string(x_offset));
      CudaCheck(cudaMemset(y_dev, 0xff, static_cast<size_t>(n * rows) * sizeof(float)),
                "cudaMemset");  // NaNs: every output must be written
      cuda::LaunchQuantGemv(k.kind, dw.get() + w_offset, rows, cols, x_dev, n, y_dev, stream_);
      CudaCheck(cudaStreamSynchronize(stream_), "cudaStreamSynchronize");
      std::vector<float> y(static_cast<size_t>(n * rows));
      ToHost(y.data(), y_dev, y.size() * sizeof(float));

      std::vector<double> want(y.size());
      double scale = 0.0;
      for (int64_t j = 0; j < n; ++j) {
        for (int64_t r = 0; r < rows; ++r) {
          double s = 0.0;
          for (int64_t c = 0; c < cols; ++c) {
            s += static_cast<double>(q.deq[r * cols + c]) * static_cast<double>(x[j * cols + c]);
          }
          want[j * rows + r] = s;
          scale = std::max(scale, std::abs(s));
        }
      }
      int bad = 0;
      for (size_t i = 0; i < y.size() && bad < 10; ++i) {
        if (!(std::abs(y[i] - want[i]) <= kGemvTol * scale)) {
          ADD_FAILURE() << DTypeName(k.dtype) << " y[" << i / rows << ", " << i % rows
                        << "] is " << y[i] << ", CPU gives " << want[i] << " (tolerance "
                        << kGemvTol * scale << ")";
          ++bad;
        }
      }
    }
  }

  // LaunchDequantize to bf16 and f16 against the CPU f32 dequantization, element by element;
  // out at byte offset out_offset of its allocation.
  void CheckDequantize(int64_t rows, int64_t cols, size_t out_offset) {
    const Kind k = GetParam();
    const Quantized q = MakeQuantized(k.dtype, rows, cols, rng_);
    DeviceBuffer dw(q.blocks.size());
    ToDevice(dw.get(), q.blocks.data(), q.blocks.size());
    const size_t count = static_cast<size_t>(rows * cols);
    DeviceBuffer dout(count * sizeof(uint16_t) + out_offset);
    for (HalfKind kind : {HalfKind::kBF16, HalfKind::kF16}) {
      const bool bf16 = kind == HalfKind::kBF16;
      SCOPED_TRACE(std::string(bf16 ? "bf16" : "f16") + ", W [" + std::to_string(rows) + ", " +
                   std::to_string(cols) + "], out offset " + std::to_string(out_offset));
      CudaCheck(cudaMemset(dout.get(), 0xff, count * sizeof(uint16_t) + out_offset),
                "cudaMemset");  // NaNs in both formats
      cuda::LaunchDequantize(k.kind, dw.get(), rows, cols, dout.get() + out_offset, kind,
                             stream_);
      CudaCheck(cudaStreamSynchronize(stream_), "cudaStreamSynchronize");
      std::vector<uint16_t> out(count);
      ToHost(out.data(), dout.get() + out_offset, count * sizeof(uint16_t));
      int bad = 0;
      for (size_t i = 0; i < count && bad < 10; ++i) {
        const float got = bf16 ? Bf16ToF32(out[i]) : F16ToF32(out[i]);
        const float want = q.deq[i];
        if (!(std::abs(got - want) <= kHalfTol * std::abs(want) + 1e-5)) {
          ADD_FAILURE() << DTypeName(k.dtype) << " element [" << i / cols << ", " << i % cols
                        << "] is " << got << ", CPU gives " << want;
          ++bad;
        }
      }
    }
  }

  cudaStream_t stream_ = nullptr;
  std::mt19937 rng_{20240611};
};

TEST_P(CudaQuantTest, GemvMatchesCpu) {
  CheckGemv(96, 512, {1, 3, 8}, 0, 0);
  CheckGemv(257, 768, {1, 3, 8}, 0, 0);
}

// n above the kernel's batch of 8 runs in chunks.
TEST_P(CudaQuantTest, GemvLargerBatchInChunks) { CheckGemv(40, 512, {11}, 0, 0); }

// A weight matrix that is only 2-byte aligned and an x that is only 4-byte aligned.
TEST_P(CudaQuantTest, GemvMisalignedPointers) { CheckGemv(33, 512, {1, 3}, 2, 1); }

TEST_P(CudaQuantTest, DequantizeMatchesCpu) {
  CheckDequantize(96, 512, 0);
  CheckDequantize(257, 768, 0);
}

TEST_P(CudaQuantTest, DequantizeMisalignedOutput) { CheckDequantize(9, 512, 2); }

INSTANTIATE_TEST_SUITE_P(AllKinds, CudaQuantTest, ::testing::ValuesIn(kKinds),
                         [](const ::testing::TestParamInfo<Kind>& info) {
                           return std::string(DTypeName(info.param.dtype));
                         });

// Host-only: QuantGemvMaxBatch is sane and bad arguments are refused before any launch.
TEST(CudaQuantHost, MaxBatchAndArgumentChecks) {
  for (const Kind& k : kKinds) {
    SCOPED_TRACE(DTypeName(k.dtype));
    EXPECT_GE(cuda::QuantGemvMaxBatch(k.kind), 1);
    EXPECT_LE(cuda::QuantGemvMaxBatch(k.kind), 64);
    // cols not a multiple of the block size.
    EXPECT_THROW(cuda::LaunchQuantGemv(k.kind, nullptr, 4, 16, nullptr, 1, nullptr, nullptr),
                 std::invalid_argument);
    EXPECT_THROW(cuda::LaunchDequantize(k.kind, nullptr, 4, 16, nullptr, HalfKind::kBF16, nullptr),
                 std::invalid_argument);
  }
  const void* odd = reinterpret_cast<const void*>(uintptr_t{1});
  EXPECT_THROW(cuda::LaunchQuantGemv(QuantKind::kQ8_0, odd, 4, 32, nullptr, 1, nullptr, nullptr),
               std::invalid_argument);
  EXPECT_THROW(
      cuda::LaunchDequantize(QuantKind::kQ8_0, nullptr, 4, 32, nullptr, HalfKind::kF32, nullptr),
      std::invalid_argument);
  EXPECT_THROW(cuda::LaunchQuantGemv(QuantKind::kQ8_0, nullptr, 4, 32, nullptr, -1, nullptr,
                                     nullptr),
               std::invalid_argument);
  EXPECT_THROW(cuda::QuantGemvMaxBatch(static_cast<QuantKind>(99)), std::invalid_argument);
}

}  // namespace
}  // namespace shardlm
