// The CUDA implementation of shardlm::Backend: f32 activations in device memory; f32, bf16 /
// f16 or ggml-quantized weight matrices (kept as they are on the device; cuBLAS GEMMs, a
// 16-bit GEMV and dequantizing GEMVs for decode); CUDA kernels (cuda_kernels.cu) for the rest;
// paged KV caches in bf16 by default. Everything runs on one stream of the backend's own, with
// stream-ordered allocations, so that a decode step can be captured as a CUDA graph.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>
#include <memory>

#include "kernels/backend.h"

namespace shardlm {

// Number of CUDA devices visible to this process; 0 when there are none or the driver / runtime
// reports an error (no driver, no device).
int CudaDeviceCount();

// A backend on CUDA device `device` whose KV caches have `kv_cache_dtype` (F32, BF16 or F16).
// Throws std::runtime_error with a message naming the reason when that device does not exist
// (no device at all, no driver, or an index out of range).
std::unique_ptr<Backend> CreateCudaBackend(int device = 0, DType kv_cache_dtype = DType::kBF16);

// The stream a CUDA backend runs on (for a communicator that must order with it); nullptr for
// another backend.
cudaStream_t CudaBackendStream(Backend& backend);

// Device memory: free (counting what the backend's pool holds unused) and total bytes; zeros
// when the device cannot be asked.
struct CudaMemory {
  uint64_t free = 0;
  uint64_t total = 0;
};
CudaMemory CudaMemoryInfo(int device);

}  // namespace shardlm
