// Launchers of the CUDA kernels over ggml block-quantized weight matrices (cuda_quant.cu): a
// fused dequantize + dot GEMV for decode (n <= 8), a tiled matmul for small batches (n up to
// kTiledMatmulMaxBatch; it also serves bf16 / f16 weights), a dequantization to f32 / f16 /
// bf16 for the large-batch path (blocks of rows dequantized to f32, then cuBLAS SGEMM), and the
// gather of dequantized rows of a quantized embedding table. The block layouts are ggml's,
// exactly as kernels/cpu/quant/quant.h documents them; a quantized matrix W [rows, cols] is its
// rows back to back, each cols / block-elements blocks (row r starts at byte
// r * DTypeBytes(t, cols)). Activations are f32 everywhere, as on the CPU.
//
// Plain pointers and sizes only (the .cu file sees no C++20 / absl headers); all pointers are
// device pointers. Every launcher enqueues on `stream` and neither synchronizes nor allocates, so
// that it can be captured in a CUDA graph. Bad arguments (cols not a multiple of the block size,
// an odd weight address, sizes past int32) throw std::invalid_argument before anything is
// enqueued; a failed launch throws shardlm::CheckFailure (base/check.h).
#pragma once

#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>

#include "kernels/cuda/cuda_kernels.h"

namespace shardlm::cuda {

// The quantized types that the kernels read (one per ggml type of kernels/cpu/quant).
enum class QuantKind : int { kQ8_0, kQ4_0, kQ4_1, kQ5_0, kQ5_1, kQ4_K, kQ5_K, kQ6_K };

// y[j, r] = dot(dequantized row r of W, x[j, :]) for j < n, r < rows: x [n, cols] and y [n, rows]
// dense row-major f32, W [rows, cols] quantized. f32 accumulation. Each launch of the kernel reads
// every weight byte once for up to 8 activation rows (larger n runs in chunks of 8, which
// re-reads the weights per chunk: see QuantGemvMaxBatch). Any alignment of x and y works
// (16-byte aligned x is faster); w must be 2-byte aligned (16-byte for the fast path of Q4_K /
// Q5_K; cudaMalloc gives 256).
void LaunchQuantGemv(QuantKind kind, const void* w, int64_t rows, int64_t cols, const float* x,
                     int64_t n, float* y, cudaStream_t stream);

// out [rows, cols] (row-major; f32, f16 or bf16 by out_kind) = dequantized W, each element
// computed in f32 exactly as the CPU reference dequantizer does (and for 16 bits then rounded to
// nearest even). out must be aligned to its element size (16-byte aligned is faster for f32,
// 8-byte for 16 bits). Rows r0 .. r0 + m of a matrix are the m-row matrix at byte
// r0 * DTypeBytes(t, cols) of it.
void LaunchDequantize(QuantKind kind, const void* w, int64_t rows, int64_t cols, void* out,
                      HalfKind out_kind, cudaStream_t stream);

// y [n, cols] (row-major f32) = rows ids[0..n) of the quantized table W [vocab, cols] (a
// quantized embedding lookup, ids a device array), each element computed in f32 exactly as the
// CPU reference dequantizer does. An id of -1 (a token another vocabulary shard owns) gives a row
// of zeros, and so does any id outside [0, vocab), which a caller that checked its ids never
// passes. y needs 4-byte alignment (16-byte aligned is faster).
void LaunchQuantEmbedding(QuantKind kind, const void* table, int64_t vocab, int64_t cols,
                          const int32_t* ids, int64_t n, float* y, cudaStream_t stream);

// The largest n for which LaunchQuantGemv is the better path; above it the backend runs
// LaunchQuantMatmul. A design estimate (see cuda_quant.cu), to be tuned with measurements on a GPU.
int64_t QuantGemvMaxBatch(QuantKind kind);

// y[j, r] = dot(dequantized row r of W, x[j, :]) (+ bias[r]) for j < n, r < rows, like
// LaunchQuantGemv, for batches: each block dequantizes a tile of weight rows once per step into
// registers and applies it to up to 32 activation rows staged in shared memory as f32 (no copy
// of W is ever made; n > 32 runs one tile of 32 activation rows per grid row, each re-reading the
// weights). f32 accumulation. bias may be nullptr. Any alignment of x works (16-byte is faster);
// w as for LaunchQuantGemv; n < 65535 * 32.
void LaunchQuantMatmul(QuantKind kind, const void* w, int64_t rows, int64_t cols, const float* x,
                       int64_t n, const float* bias, float* y, cudaStream_t stream);

// The same tiled matmul over a bf16 / f16 (kind) matrix W [rows, cols]; needs
// HalfRowsAligned(cols, w) (cuda_kernels.h). The 16-bit values become f32 exactly: x is never
// rounded, so the results agree with LaunchHalfGemv's to f32 rounding.
void LaunchHalfMatmul(HalfKind kind, const void* w, int64_t rows, int64_t cols, const float* x,
                      int64_t n, const float* bias, float* y, cudaStream_t stream);

// The largest n for which the backend runs the tiled matmul (quantized weights above
// QuantGemvMaxBatch, 16-bit weights above kGemvMaxBatch). Its f32 FMAs make it compute-bound
// from about n = 8 on (quantized) or 20 (16-bit), and above it every further 32 activation rows
// re-read and re-dequantize the weights: larger batches dequantize blocks of rows to f32 and run
// cuBLAS SGEMM instead (a bounded temporary; x still f32). A design estimate, to be tuned on a GPU.
constexpr int64_t kTiledMatmulMaxBatch = 64;

}  // namespace shardlm::cuda
