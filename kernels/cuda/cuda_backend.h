// The CUDA implementation of shardlm::Backend: f32 activations in device memory, f32 or
// bf16 / f16 weight matrices (kept 16-bit on the device), cuBLAS for Linear and plain CUDA
// kernels (cuda_kernels.cu) for the rest. Quantized weights are not supported yet.
#pragma once

#include <memory>

#include "kernels/backend.h"

namespace shardlm {

// Number of CUDA devices visible to this process; 0 when there are none or the driver / runtime
// reports an error (no driver, no device).
int CudaDeviceCount();

// A backend on CUDA device `device`. Throws std::runtime_error with a message naming the reason
// when that device does not exist (no device at all, no driver, or an index out of range).
std::unique_ptr<Backend> CreateCudaBackend(int device = 0);

}  // namespace shardlm
