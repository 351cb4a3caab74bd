// The CPU implementation of shardlm::Backend: f32 activations, f32 or bf16 / f16 weight
// matrices (kept in their checkpoint dtype, converted on the fly), OpenBLAS for the matmuls and
// OpenMP for the rest.
#pragma once

#include <memory>
#include <string>

#include "kernels/backend.h"

namespace shardlm {

// num_threads caps the OpenMP regions of this backend and, because OpenBLAS has one global
// setting, the OpenBLAS thread count of the whole process. 0 keeps the OpenMP / OpenBLAS
// defaults (OMP_NUM_THREADS, OPENBLAS_NUM_THREADS or the number of cores).
std::unique_ptr<Backend> CreateCpuBackend(int num_threads = 0);

}  // namespace shardlm

namespace shardlm {

// OpenBLAS 0.3.21 (Debian 12) does not know CPUs newer than it (Sapphire / Emerald Rapids,
// model 0x8f / 0xcf): its dynamic dispatch falls back to the 2004 "Prescott" kernels (SSE3,
// 4-wide), and every prefill GEMM runs about 4x below what the CPU can do. OpenBLAS reads its
// choice from OPENBLAS_CORETYPE once, when the library loads, before main. So, when OpenBLAS
// chose Prescott, OPENBLAS_CORETYPE is unset and the CPU has AVX-512 (or AVX2), this sets it
// to SkylakeX (or Haswell) and re-executes the process (its own binary, same argv and pid);
// an explicit OPENBLAS_CORETYPE is always respected. Call it first in main, before threads and
// MPI. Returns (without re-executing) when nothing needs changing or the exec fails.
void EnsureBlasKernelsMatchCpu(char** argv);

// OpenBLAS's kernel set in use ("SkylakeX", "Prescott", ...), for logs.
std::string BlasCoreName();

}  // namespace shardlm
