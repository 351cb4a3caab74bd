// Launchers of the CUDA kernels of the CUDA backend (cuda_kernels.cu). Plain pointers and sizes
// only, so that the .cu file does not see the C++20 / absl headers of the rest of the backend.
// Every launcher enqueues on the legacy default stream and throws std::runtime_error when the
// launch fails.
#pragma once

#include <cstdint>

namespace shardlm::cuda {

// Element types a launcher reads from a table or writes in a conversion.
enum class HalfKind : int { kF32 = 0, kF16 = 1, kBF16 = 2 };

// Throws std::runtime_error "<call> failed at <file>:<line>: <error string>" when err != 0.
void ThrowCudaError(int err, const char* call, const char* file, int line);

// dst[i] = src[i] rounded to nearest even in f16 or bf16 (kind != kF32).
void LaunchConvertF32ToHalf(const float* src, void* dst, int64_t n, HalfKind kind);
// y[r, c] += bias[c] for y [rows, cols].
void LaunchAddBias(float* y, const float* bias, int64_t rows, int64_t cols);
// y[r] = x[r] / sqrt(mean(x[r]^2) + eps) * w, rows of d; y may alias x.
void LaunchRmsNorm(const float* x, const float* w, float eps, float* y, int64_t rows, int64_t d);
// In place on x [n, heads, head_dim], the first 2 * half features of each head.
void LaunchRope(float* x, const int32_t* positions, const float* inv_freq, int64_t n,
                int64_t heads, int64_t head_dim, int64_t half, bool interleaved);
// y[i] = table[ids[i]] (zeros for id -1), table [vocab, d] of `kind`.
void LaunchEmbedding(const void* table, HalfKind kind, const int32_t* ids, float* y, int64_t n,
                     int64_t d);
void LaunchSiluMul(const float* gate, const float* up, float* y, int64_t n);
void LaunchAdd(float* x, const float* y, int64_t n);
// out[r] = first index of the maximum of row r (0 for an all-NaN row); values[r] = its value.
void LaunchArgmax(const float* logits, int64_t rows, int64_t vocab, int32_t* out, float* values);
// k_cache[positions[i]] = k[i], v_cache likewise; rows of `row` floats.
void LaunchWriteKv(const float* k, const float* v, const int32_t* positions, float* k_cache,
                   float* v_cache, int64_t n, int64_t row);

// Attention of q [n, heads, head_dim] over the cache; out [n, heads * head_dim]. block_size 0:
// a contiguous cache (key position j is cache row j); otherwise a paged one through
// seq_index / table_begin / block_tables (device pointers). max_span: the most keys any query
// sees (sizes the shared memory of a block).
struct AttentionArgs {
  const float* q = nullptr;
  const float* k_cache = nullptr;
  const float* v_cache = nullptr;
  float* out = nullptr;
  const int32_t* positions = nullptr;
  const int32_t* seq_index = nullptr;
  const int32_t* table_begin = nullptr;
  const int32_t* block_tables = nullptr;
  int64_t block_size = 0;
  int64_t n = 0;
  int64_t heads = 0;
  int64_t kv_heads = 0;
  int64_t head_dim = 0;
  float scale = 1.0f;
  int64_t window = 0;
  int64_t max_span = 0;
};
void LaunchAttention(const AttentionArgs& args);

}  // namespace shardlm::cuda
