// Launchers of the CUDA kernels of the CUDA backend (cuda_kernels.cu). Plain pointers and sizes
// only, so that the .cu file does not see the C++20 / absl headers of the rest of the backend.
// Every launcher enqueues on `stream`, never synchronizes (so that it can be captured in a CUDA
// graph) and throws shardlm::CheckFailure (base/check.h) when the launch fails.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

namespace shardlm::cuda {

// Element types a launcher reads from a table or writes in a conversion.
enum class HalfKind : int { kF32 = 0, kF16 = 1, kBF16 = 2 };

// The activation of a gated MLP (shardlm::Activation, which this header cannot see).
enum class GluKind : int {
  kSilu = 0,      // g / (1 + exp(-g))
  kGeluTanh = 1,  // 0.5 g (1 + tanh(sqrt(2 / pi) (g + 0.044715 g^3)))
};

// y[r, c] += bias[c] for y [rows, cols].
void LaunchAddBias(float* y, const float* bias, int64_t rows, int64_t cols, cudaStream_t stream);
// y[r] = x[r] / sqrt(mean(x[r]^2) + eps) * w, rows of d; y may alias x.
void LaunchRmsNorm(const float* x, const float* w, float eps, float* y, int64_t rows, int64_t d,
                   cudaStream_t stream);
// x += delta, then y = RmsNorm(x) as above; y may alias delta.
void LaunchAddRmsNorm(float* x, const float* delta, const float* w, float eps, float* y,
                      int64_t rows, int64_t d, cudaStream_t stream);
// In place on x [n, heads, head_dim], the first 2 * half features of each head (the rest kept),
// with cos and sin times `attention_factor`.
void LaunchRope(float* x, const int32_t* positions, const float* inv_freq, int64_t n, int64_t heads,
                int64_t head_dim, int64_t half, bool interleaved, float attention_factor,
                cudaStream_t stream);
// y[i] = table[ids[i]] (zeros for id -1), table [vocab, d] of `kind`.
void LaunchEmbedding(const void* table, HalfKind kind, const int32_t* ids, float* y, int64_t n,
                     int64_t d, cudaStream_t stream);
// y[i] = act(gate[i]) * up[i]; y may alias gate.
void LaunchGluMul(const float* gate, const float* up, float* y, int64_t n, GluKind act,
                  cudaStream_t stream);
void LaunchAdd(float* x, const float* y, int64_t n, cudaStream_t stream);
// x[i] *= s.
void LaunchScale(float* x, float s, int64_t n, cudaStream_t stream);
// In place on qkv [n, (heads + 2 * kv_heads) * head_dim]: each Q head RMS-normed over its
// head_dim features with q_w [head_dim], each K head with k_w; V untouched.
void LaunchHeadRmsNorm(float* qkv, const float* q_w, const float* k_w, float eps, int64_t n,
                       int64_t heads, int64_t kv_heads, int64_t head_dim, cudaStream_t stream);
// out[r] = first index of the maximum of row r (0 for an all-NaN row); values[r] = its value.
void LaunchArgmax(const float* logits, int64_t rows, int64_t vocab, int32_t* out, float* values,
                  cudaStream_t stream);
// k_cache[rows[i]] = k[i], v_cache likewise (rounded to the cache's kind); rows of `row`
// elements.
void LaunchWriteKv(const float* k, const float* v, const int32_t* rows, void* k_cache,
                   void* v_cache, HalfKind cache_kind, int64_t n, int64_t row,
                   cudaStream_t stream);

// dst [*, d] += the sources of a plan from PlanScatterAddRows (scatter_plan.h, uploaded as
// `plan`, `groups` groups of `m` sources): for each group j, dst[row_j, :] += w * src[i, :] for
// its sources i in order, each product and sum rounded on its own (no FMA), as the CPU does.
// src [m, d] must not overlap dst.
void LaunchScatterAddRows(const float* src, const int32_t* plan, int64_t groups, int64_t m,
                          int64_t d, float* dst, cudaStream_t stream);

// The 16-bit weight kernels (LaunchHalfGemv here, LaunchHalfMatmul in cuda_quant.h) read each
// row of w [out, in] 16 bytes at a time: they need in % 8 == 0 and a 16-byte aligned w. The
// backend converts blocks of rows to f32 for cuBLAS SGEMM otherwise.
bool HalfRowsAligned(int64_t in, const void* w);

// Decode GEMV over 16-bit weights w [out, in] of `kind` (bf16 / f16): y[r] = w x[r] (+ bias) for
// 1 <= n <= kGemvMaxBatch rows, x staged in shared memory as f32 (never rounded), f32
// accumulation. Needs HalfRowsAligned(in, w); any alignment of x (16-byte is faster).
constexpr int64_t kGemvMaxBatch = 4;
void LaunchHalfGemv(const void* w, HalfKind kind, int64_t out, int64_t in, const float* x,
                    int64_t n, const float* bias, float* y, cudaStream_t stream);

// dst[i] = src[i] (bf16 / f16 by kind) as f32, exactly; for the large-batch path of Linear.
void LaunchConvertHalfToF32(const void* src, HalfKind kind, float* dst, int64_t n,
                            cudaStream_t stream);

// Backend::RopeWriteKv in one launch: qkv [n, (heads + 2 * kv_heads) * head_dim] -> q [n, heads,
// head_dim] rotated (the first 2 * half features of each head), K rotated and V into the caches
// [rows, kv_heads, head_dim] of `cache_kind` at rows[i]; cos and sin times `attention_factor`.
void LaunchRopeWriteKv(const float* qkv, const int32_t* positions, const float* inv_freq,
                       const int32_t* rows, float* q, void* k_cache, void* v_cache,
                       HalfKind cache_kind, int64_t n, int64_t heads, int64_t kv_heads,
                       int64_t head_dim, int64_t half, bool interleaved, float attention_factor,
                       cudaStream_t stream);
// y[i, j] = act(gate_up[i, j]) * gate_up[i, inter + j] for gate_up [n, 2 * inter], y [n, inter].
void LaunchGluMulPacked(const float* gate_up, float* y, int64_t n, int64_t inter, GluKind act,
                        cudaStream_t stream);

}  // namespace shardlm::cuda
