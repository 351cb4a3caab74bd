// The CUDA kernels over ggml block-quantized weights (kernels/cuda/cuda_quant.h) against the CPU
// reference: random f32 weights quantized with the CPU QuantizeRow, the reference product from
// the CPU scalar DequantizeRow and a double-precision dot. Tolerances: the GEMV and the tiled
// matmul to 1e-3 of the largest |reference| (f32 accumulation in another order); the 16-bit
// dequantization to 2e-2 of each element (bf16 keeps 8 significant bits); the f32 dequantization
// exactly. Every test but the host-only one skips without a CUDA device.
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
    {QuantKind::kQ4_1, DType::kQ4_1}, {QuantKind::kQ5_0, DType::kQ5_0},
    {QuantKind::kQ5_1, DType::kQ5_1}, {QuantKind::kQ4_K, DType::kQ4_K},
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

  // LaunchQuantGemv (or with `tiled` LaunchQuantMatmul, with a bias) for each n in `ns` against
  // the f64 reference. The weights are uploaded at byte offset w_offset of the allocation and x
  // at float offset x_offset (misaligned pointers take the kernels' slower load paths).
  void CheckGemv(int64_t rows, int64_t cols, const std::vector<int64_t>& ns, size_t w_offset,
                 size_t x_offset, bool tiled = false) {
    const Kind k = GetParam();
    const Quantized q = MakeQuantized(k.dtype, rows, cols, rng_);
    const int64_t max_n = *std::max_element(ns.begin(), ns.end());
    std::vector<float> x(static_cast<size_t>(max_n * cols));
    std::uniform_real_distribution<float> dist(-1.0f, 1.0f);
    for (float& v : x) v = dist(rng_);
    std::vector<float> bias(static_cast<size_t>(rows));
    for (float& v : bias) v = tiled ? dist(rng_) : 0.0f;

    DeviceBuffer dw(q.blocks.size() + w_offset);
    DeviceBuffer dx((x.size() + x_offset) * sizeof(float));
    DeviceBuffer dy(static_cast<size_t>(max_n * rows) * sizeof(float));
    ToDevice(dw.get() + w_offset, q.blocks.data(), q.blocks.size());
    float* x_dev = reinterpret_cast<float*>(dx.get()) + x_offset;
    ToDevice(x_dev, x.data(), x.size() * sizeof(float));
    float* y_dev = reinterpret_cast<float*>(dy.get());
    DeviceBuffer dbias(bias.size() * sizeof(float));
    ToDevice(dbias.get(), bias.data(), bias.size() * sizeof(float));

    for (int64_t n : ns) {
      SCOPED_TRACE(std::string(tiled ? "LaunchQuantMatmul" : "LaunchQuantGemv") +
                   " n = " + std::to_string(n) + ", W [" + std::to_string(rows) + ", " +
                   std::to_string(cols) + "], w offset " + std::to_string(w_offset) +
                   ", x offset " + std::to_string(x_offset));
      CudaCheck(cudaMemset(y_dev, 0xff, static_cast<size_t>(n * rows) * sizeof(float)),
                "cudaMemset");  // NaNs: every output must be written
      if (tiled) {
        cuda::LaunchQuantMatmul(k.kind, dw.get() + w_offset, rows, cols, x_dev, n,
                                reinterpret_cast<const float*>(dbias.get()), y_dev, stream_);
      } else {
        cuda::LaunchQuantGemv(k.kind, dw.get() + w_offset, rows, cols, x_dev, n, y_dev, stream_);
      }
      CudaCheck(cudaStreamSynchronize(stream_), "cudaStreamSynchronize");
      std::vector<float> y(static_cast<size_t>(n * rows));
      ToHost(y.data(), y_dev, y.size() * sizeof(float));

      std::vector<double> want(y.size());
      double scale = 0.0;
      for (int64_t j = 0; j < n; ++j) {
        for (int64_t r = 0; r < rows; ++r) {
          double s = bias[r];
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

  // LaunchDequantize to bf16 and f16 against the CPU f32 dequantization, element by element, and
  // to f32 bit for bit; out at byte offset out_offset of its allocation (twice that for f32).
  void CheckDequantize(int64_t rows, int64_t cols, size_t out_offset) {
    const Kind k = GetParam();
    const Quantized q = MakeQuantized(k.dtype, rows, cols, rng_);
    DeviceBuffer dw(q.blocks.size());
    ToDevice(dw.get(), q.blocks.data(), q.blocks.size());
    const size_t count = static_cast<size_t>(rows * cols);
    DeviceBuffer dout(count * sizeof(float) + 2 * out_offset);
    for (HalfKind kind : {HalfKind::kBF16, HalfKind::kF16, HalfKind::kF32}) {
      const bool bf16 = kind == HalfKind::kBF16, f32 = kind == HalfKind::kF32;
      const size_t offset = f32 ? 2 * out_offset : out_offset;
      const size_t bytes = count * (f32 ? sizeof(float) : sizeof(uint16_t));
      SCOPED_TRACE(std::string(f32 ? "f32" : (bf16 ? "bf16" : "f16")) + ", W [" +
                   std::to_string(rows) + ", " + std::to_string(cols) + "], out offset " +
                   std::to_string(offset));
      CudaCheck(cudaMemset(dout.get(), 0xff, bytes + offset), "cudaMemset");  // NaNs in all
      cuda::LaunchDequantize(k.kind, dw.get(), rows, cols, dout.get() + offset, kind, stream_);
      CudaCheck(cudaStreamSynchronize(stream_), "cudaStreamSynchronize");
      std::vector<float> got(count);
      if (f32) {
        ToHost(got.data(), dout.get() + offset, bytes);
      } else {
        std::vector<uint16_t> out(count);
        ToHost(out.data(), dout.get() + offset, bytes);
        for (size_t i = 0; i < count; ++i) got[i] = bf16 ? Bf16ToF32(out[i]) : F16ToF32(out[i]);
      }
      int bad = 0;
      for (size_t i = 0; i < count && bad < 10; ++i) {
        const float want = q.deq[i];
        const bool ok =
            f32 ? got[i] == want : std::abs(got[i] - want) <= kHalfTol * std::abs(want) + 1e-5;
        if (!ok) {
          ADD_FAILURE() << DTypeName(k.dtype) << " element [" << i / cols << ", " << i % cols
                        << "] is " << got[i] << ", CPU gives " << want;
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

// The tiled matmul of batches: one tile of 16 (n <= 16) or tiles of 32 with a partial last
// one; rows not a multiple of its 32; cols with a short last step of 256 where the block allows
// (the 32-element blocks: 800 = 3 * 256 + 32).
TEST_P(CudaQuantTest, MatmulMatchesCpu) {
  const int64_t cols = DTypeBlockElements(GetParam().dtype) == 256 ? 768 : 800;
  CheckGemv(96, cols, {9, 16, 17, 33, 64}, 0, 0, /*tiled=*/true);
  CheckGemv(257, cols, {12, 65}, 0, 0, /*tiled=*/true);
}

// The tiled matmul's slower load paths: 2-byte aligned weights, 4-byte aligned x.
TEST_P(CudaQuantTest, MatmulMisalignedPointers) {
  CheckGemv(33, 512, {9, 40}, 2, 1, /*tiled=*/true);
}

TEST_P(CudaQuantTest, DequantizeMatchesCpu) {
  CheckDequantize(96, 512, 0);
  CheckDequantize(257, 768, 0);
}

TEST_P(CudaQuantTest, DequantizeMisalignedOutput) { CheckDequantize(9, 512, 2); }

INSTANTIATE_TEST_SUITE_P(AllKinds, CudaQuantTest, ::testing::ValuesIn(kKinds),
                         [](const ::testing::TestParamInfo<Kind>& info) {
                           return std::string(DTypeName(info.param.dtype));
                         });

// Host-only: QuantGemvMaxBatch is sane and bad arguments are refused before any launch (the
// 16-bit kernels of cuda_kernels.h included).
TEST(CudaQuantHost, MaxBatchAndArgumentChecks) {
  for (const Kind& k : kKinds) {
    SCOPED_TRACE(DTypeName(k.dtype));
    EXPECT_GE(cuda::QuantGemvMaxBatch(k.kind), 1);
    EXPECT_LE(cuda::QuantGemvMaxBatch(k.kind), cuda::kTiledMatmulMaxBatch);
    // cols not a multiple of the block size.
    EXPECT_THROW(cuda::LaunchQuantGemv(k.kind, nullptr, 4, 16, nullptr, 1, nullptr, nullptr),
                 std::invalid_argument);
    EXPECT_THROW(cuda::LaunchDequantize(k.kind, nullptr, 4, 16, nullptr, HalfKind::kBF16, nullptr),
                 std::invalid_argument);
    EXPECT_THROW(
        cuda::LaunchQuantMatmul(k.kind, nullptr, 4, 16, nullptr, 9, nullptr, nullptr, nullptr),
        std::invalid_argument);
  }
  // The tiled matmul's batch range (grid.y holds tiles of 32) and the 16-bit kernels' rows.
  EXPECT_THROW(cuda::LaunchQuantMatmul(QuantKind::kQ8_0, nullptr, 4, 32, nullptr, -1, nullptr,
                                       nullptr, nullptr),
               std::invalid_argument);
  EXPECT_THROW(cuda::LaunchQuantMatmul(QuantKind::kQ8_0, nullptr, 4, 32, nullptr,
                                       int64_t{65535} * 32 + 1, nullptr, nullptr, nullptr),
               std::invalid_argument);
  const void* aligned = reinterpret_cast<const void*>(uintptr_t{256});
  const void* aligned8 = reinterpret_cast<const void*>(uintptr_t{264});
  EXPECT_TRUE(cuda::HalfRowsAligned(64, aligned));
  EXPECT_FALSE(cuda::HalfRowsAligned(60, aligned));
  EXPECT_FALSE(cuda::HalfRowsAligned(64, aligned8));
  EXPECT_THROW(cuda::LaunchHalfMatmul(HalfKind::kBF16, aligned, 4, 60, nullptr, 9, nullptr, nullptr,
                                      nullptr),
               std::invalid_argument);
  EXPECT_THROW(cuda::LaunchHalfMatmul(HalfKind::kF16, aligned8, 4, 64, nullptr, 9, nullptr, nullptr,
                                      nullptr),
               std::invalid_argument);
  EXPECT_THROW(
      cuda::LaunchHalfMatmul(HalfKind::kF32, aligned, 4, 64, nullptr, 9, nullptr, nullptr, nullptr),
      std::invalid_argument);
  EXPECT_THROW(cuda::LaunchHalfGemv(aligned, HalfKind::kBF16, 4, 64, nullptr,
                                    cuda::kGemvMaxBatch + 1, nullptr, nullptr, nullptr),
               std::invalid_argument);
  EXPECT_THROW(
      cuda::LaunchHalfGemv(aligned, HalfKind::kBF16, 4, 60, nullptr, 1, nullptr, nullptr, nullptr),
      std::invalid_argument);
  EXPECT_THROW(cuda::LaunchConvertHalfToF32(nullptr, HalfKind::kF32, nullptr, 4, nullptr),
               std::invalid_argument);
  const void* odd = reinterpret_cast<const void*>(uintptr_t{1});
  EXPECT_THROW(cuda::LaunchQuantGemv(QuantKind::kQ8_0, odd, 4, 32, nullptr, 1, nullptr, nullptr),
               std::invalid_argument);
  EXPECT_THROW(cuda::LaunchDequantize(QuantKind::kQ8_0, nullptr, 4, 32, nullptr,
                                      static_cast<HalfKind>(7), nullptr),
               std::invalid_argument);
  // f32 output must be 4-byte aligned.
  EXPECT_THROW(
      cuda::LaunchDequantize(QuantKind::kQ8_0, nullptr, 4, 32,
                             reinterpret_cast<void*>(uintptr_t{2}), HalfKind::kF32, nullptr),
      std::invalid_argument);
  EXPECT_THROW(cuda::LaunchQuantGemv(QuantKind::kQ8_0, nullptr, 4, 32, nullptr, -1, nullptr,
                                     nullptr),
               std::invalid_argument);
  EXPECT_THROW(cuda::QuantGemvMaxBatch(static_cast<QuantKind>(99)), std::invalid_argument);
}

}  // namespace
}  // namespace shardlm
