// The CPU implementation of shardlm::Backend: f32 activations, f32 or bf16 / f16 weight
// matrices (kept in their checkpoint dtype, converted on the fly), OpenBLAS for the matmuls and
// OpenMP for the rest.
#pragma once

#include <memory>

#include "kernels/backend.h"

namespace shardlm {

// num_threads caps the OpenMP regions of this backend and, because OpenBLAS has one global
// setting, the OpenBLAS thread count of the whole process. 0 keeps the OpenMP / OpenBLAS
// defaults (OMP_NUM_THREADS, OPENBLAS_NUM_THREADS or the number of cores).
std::unique_ptr<Backend> CreateCpuBackend(int num_threads = 0);

}  // namespace shardlm
