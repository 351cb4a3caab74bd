// Linear of the CUDA backend alone: device time per call and GB/s of weight bytes read, for a
// quantized and a 16-bit weight matrix at a few batch sizes (which pick the GEMVs, the tiled
// matmul or the f32-converted SGEMM; see CudaBackend::Linear).
//   build/bin/gpu_linear [--rows 4096] [--cols 4096] [--batches 1,8,16,64] [--dtypes q4_k,bf16]
//       [--calls 50] [--reps 5]
// Each figure is the best of --reps replays of a CUDA graph of --calls Linear calls (so launch
// overhead is not counted), timed with CUDA events. GB/s is the weight matrix's bytes over the
// time of one call: the rate at which the call streams the weights, whether or not it is
// memory-bound (GFLOP/s, 2 * n * rows * cols per call, is printed beside it). Exits 77 without a
// CUDA device; 1 on any error.
#include <cuda_runtime_api.h>

#include <algorithm>
#include <cctype>
#include <cstdio>
#include <exception>
#include <iterator>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "CLI/CLI.hpp"
#include "base/check.h"
#include "base/dtype.h"
#include "base/tensor.h"
#include "kernels/cuda/cuda_backend.h"
#include "kernels/quant/codec.h"

using namespace shardlm;

namespace {

// A host [rows, cols] matrix of `dtype` from uniform values in +-1 (quantized with the CPU codec,
// or rounded to 16 bits).
Tensor RandomMatrix(DType dtype, int64_t rows, int64_t cols, uint64_t seed) {
  std::mt19937 rng(static_cast<uint32_t>(seed));
  std::uniform_real_distribution<float> dist(-1.0f, 1.0f);
  std::vector<float> row(static_cast<size_t>(cols));
  Tensor w = Tensor::Empty({rows, cols}, dtype);
  const size_t row_bytes = DTypeBytes(dtype, cols);
  auto* bytes = static_cast<uint8_t*>(w.raw());
  for (int64_t r = 0; r < rows; ++r) {
    for (float& v : row) v = dist(rng);
    uint8_t* dst = bytes + r * row_bytes;
    if (IsQuantized(dtype)) {
      quant::QuantizeRow(dtype, row.data(), dst, cols);
    } else {
      auto* h = reinterpret_cast<uint16_t*>(dst);
      for (int64_t c = 0; c < cols; ++c) {
        h[c] = dtype == DType::kBF16 ? F32ToBf16(row[c]) : F32ToF16(row[c]);
      }
    }
  }
  return w;
}

// Device milliseconds of one replay of `graph` (or, when the backend cannot capture, of `calls`
// eager calls of `run`), best of `reps`.
template <typename Run>
float BestMs(Backend& backend, cudaStream_t stream, int calls, int reps, const Run& run) {
  run();  // warm-up (pool allocations, cuBLAS heuristics)
  backend.Synchronize();
  std::unique_ptr<BackendGraph> graph;
  if (backend.BeginCapture()) {
    for (int i = 0; i < calls; ++i) run();
    graph = backend.EndCapture();
  }
  cudaEvent_t start = nullptr, stop = nullptr;
  SHARDLM_CUDA_CHECK(cudaEventCreate(&start));
  SHARDLM_CUDA_CHECK(cudaEventCreate(&stop));
  float best = 1e30f;
  for (int rep = 0; rep < reps; ++rep) {
    SHARDLM_CUDA_CHECK(cudaEventRecord(start, stream));
    if (graph != nullptr) {
      graph->Replay();
    } else {
      for (int i = 0; i < calls; ++i) run();
    }
    SHARDLM_CUDA_CHECK(cudaEventRecord(stop, stream));
    SHARDLM_CUDA_CHECK(cudaEventSynchronize(stop));
    float ms = 0.0f;
    SHARDLM_CUDA_CHECK(cudaEventElapsedTime(&ms, start, stop));
    best = std::min(best, ms);
  }
  SHARDLM_CUDA_CHECK(cudaEventDestroy(start));
  SHARDLM_CUDA_CHECK(cudaEventDestroy(stop));
  return best;
}

const DType kWeightTypes[] = {DType::kQ8_0, DType::kQ4_0, DType::kQ4_1, DType::kQ5_0, DType::kQ5_1,
                              DType::kQ4_K, DType::kQ5_K, DType::kQ6_K, DType::kBF16, DType::kF16};

int Main(int argc, char** argv) {
  CLI::App app{"gpu_linear: device time and weight GB/s of the CUDA backend's Linear"};
  int64_t rows = 4096, cols = 4096;
  int calls = 50, reps = 5;
  std::vector<int64_t> batches = {1, 8, 16, 64};
  std::vector<std::string> dtypes = {"q4_k", "bf16"};
  const CLI::Range kPositive(1, 1 << 30);
  app.add_option("--rows", rows, "Output rows of the weight matrix")->check(kPositive);
  app.add_option("--cols", cols, "Input columns (a multiple of 256 for the K types)")
      ->check(kPositive);
  app.add_option("--batches", batches, "Activation rows n per call")
      ->delimiter(',')
      ->check(kPositive);
  app.add_option("--dtypes", dtypes,
                 "Weight types (q8_0, q4_0, q4_1, q5_0, q5_1, q4_k, q5_k, q6_k, bf16, f16)")
      ->delimiter(',');
  app.add_option("--calls", calls, "Linear calls per timed graph")->check(kPositive);
  app.add_option("--reps", reps, "Timed replays (the best counts)")->check(kPositive);
  CLI11_PARSE(app, argc, argv);

  std::vector<DType> types;
  for (const std::string& name : dtypes) {
    std::string upper = name;
    for (char& c : upper) c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
    const auto it = std::find_if(std::begin(kWeightTypes), std::end(kWeightTypes),
                                 [&](DType t) { return upper == DTypeName(t); });
    if (it == std::end(kWeightTypes)) {
      std::fprintf(stderr, "gpu_linear: --dtypes: '%s' is not a quantized, bf16 or f16 type\n",
                   name.c_str());
      return 1;
    }
    if (cols % DTypeBlockElements(*it) != 0) {
      std::fprintf(stderr, "gpu_linear: --cols %lld is not a multiple of %s's block of %lld\n",
                   static_cast<long long>(cols), name.c_str(),
                   static_cast<long long>(DTypeBlockElements(*it)));
      return 1;
    }
    types.push_back(*it);
  }
  if (CudaDeviceCount() == 0) {
    std::fprintf(stderr, "gpu_linear: no CUDA device (or no driver): nothing to measure\n");
    return 77;
  }
  std::unique_ptr<Backend> backend = CreateCudaBackend(0);
  cudaStream_t stream = CudaBackendStream(*backend);
  cudaDeviceProp prop{};
  SHARDLM_CUDA_CHECK(cudaGetDeviceProperties(&prop, 0));
  std::printf("device: %s; W [%lld, %lld]; best of %d replays of %d calls\n", prop.name,
              static_cast<long long>(rows), static_cast<long long>(cols), reps, calls);
  std::printf("%-6s %5s %10s %10s %10s\n", "dtype", "n", "us/call", "weight GB/s", "GFLOP/s");
  for (DType t : types) {
    const Tensor host = RandomMatrix(t, rows, cols, 1);
    const double weight_bytes = static_cast<double>(host.nbytes());
    Tensor w = backend->PrepareWeight(host);
    for (int64_t n : batches) {
      std::mt19937 rng(2);
      std::uniform_real_distribution<float> dist(-1.0f, 1.0f);
      Tensor xh = Tensor::Empty({n, cols}, DType::kF32);
      for (int64_t i = 0; i < xh.numel(); ++i) xh.data<float>()[i] = dist(rng);
      Tensor x = backend->ToDevice(xh);
      Tensor y = backend->AllocateUninitialized({n, rows}, DType::kF32);
      const float ms =
          BestMs(*backend, stream, calls, reps, [&] { backend->Linear(x, w, nullptr, y); });
      const double s = ms * 1e-3 / calls;
      std::printf("%-6s %5lld %10.2f %10.1f %10.1f\n", DTypeName(t), static_cast<long long>(n),
                  s * 1e6, weight_bytes / s * 1e-9,
                  2.0 * static_cast<double>(n) * rows * cols / s * 1e-9);
    }
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    return Main(argc, argv);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "gpu_linear: %s\n", e.what());
    return 1;
  }
}
