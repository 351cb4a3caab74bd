// The CUDA kernels of the CUDA backend. Straightforward ones: one thread per element for the
// elementwise ops, one block per row for the reductions, one block per (token, head) for
// attention. Numerics follow the CPU backend (kernels/cpu): f32 throughout, the same order of
// operations where it matters (RmsNorm, Rope, softmax with the maximum subtracted).
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cfloat>
#include <climits>
#include <stdexcept>
#include <string>

#include "kernels/cuda/cuda_kernels.h"

namespace shardlm::cuda {

void ThrowCudaError(int err, const char* call, const char* file, int line) {
  if (err == 0) return;
  throw std::runtime_error(std::string(call) + " failed at " + file + ":" + std::to_string(line) +
                           ": " + cudaGetErrorName(static_cast<cudaError_t>(err)) + " (" +
                           cudaGetErrorString(static_cast<cudaError_t>(err)) + ")");
}

namespace {

constexpr int kThreads = 256;

#define SHARDLM_CUDA_LAUNCH_CHECK(name) \
  ThrowCudaError(static_cast<int>(cudaGetLastError()), name, __FILE__, __LINE__)

unsigned Blocks(int64_t n) {
  const int64_t b = (n + kThreads - 1) / kThreads;
  return static_cast<unsigned>(b < 1 ? 1 : (b > INT_MAX ? INT_MAX : b));
}

// Grid-stride loop over [0, n).
#define SHARDLM_GRID_LOOP(i, n)                                                       \
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < (n); \
       i += static_cast<int64_t>(blockDim.x) * gridDim.x)

__device__ float WarpSum(float v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}
__device__ float WarpMax(float v) {
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}

// Sum (or max) of v over the block; every thread gets the result. `red` holds 32 floats.
template <bool kMax>
__device__ float BlockReduce(float v, float* red) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int warps = (blockDim.x + 31) >> 5;
  v = kMax ? WarpMax(v) : WarpSum(v);
  __syncthreads();  // `red` may still be read from a previous reduction
  if (lane == 0) red[warp] = v;
  __syncthreads();
  float r = lane < warps ? red[lane] : (kMax ? -INFINITY : 0.0f);
  r = kMax ? WarpMax(r) : WarpSum(r);
  return r;
}

__global__ void ConvertF32ToBf16Kernel(const float* src, __nv_bfloat16* dst, int64_t n) {
  SHARDLM_GRID_LOOP(i, n) dst[i] = __float2bfloat16_rn(src[i]);
}
__global__ void ConvertF32ToF16Kernel(const float* src, __half* dst, int64_t n) {
  SHARDLM_GRID_LOOP(i, n) dst[i] = __float2half_rn(src[i]);
}

__global__ void AddBiasKernel(float* y, const float* bias, int64_t rows, int64_t cols) {
  SHARDLM_GRID_LOOP(i, rows * cols) y[i] += bias[i % cols];
}

__global__ void RmsNormKernel(const float* x, const float* w, float eps, float* y, int64_t d) {
  __shared__ float red[32];
  const float* xr = x + static_cast<int64_t>(blockIdx.x) * d;
  float* yr = y + static_cast<int64_t>(blockIdx.x) * d;
  float sum_sq = 0.0f;
  for (int64_t k = threadIdx.x; k < d; k += blockDim.x) sum_sq += xr[k] * xr[k];
  sum_sq = BlockReduce<false>(sum_sq, red);
  const float inv_rms = 1.0f / sqrtf(sum_sq / static_cast<float>(d) + eps);
  // Each thread writes only the elements it read, so y may alias x.
  for (int64_t k = threadIdx.x; k < d; k += blockDim.x) yr[k] = (xr[k] * inv_rms) * w[k];
}

__global__ void RopeKernel(float* x, const int32_t* positions, const float* inv_freq, int64_t n,
                           int64_t heads, int64_t head_dim, int64_t half, bool interleaved) {
  SHARDLM_GRID_LOOP(t, n * heads * half) {
    const int64_t k = t % half;
    const int64_t row = t / half;  // i * heads + h
    const int64_t i = row / heads;
    const float angle = static_cast<float>(positions[i]) * inv_freq[k];
    const float c = cosf(angle), s = sinf(angle);
    float* v = x + row * head_dim;
    float* a = interleaved ? v + 2 * k : v + k;
    float* b = interleaved ? v + 2 * k + 1 : v + k + half;
    const float x0 = *a, x1 = *b;
    *a = x0 * c - x1 * s;
    *b = x1 * c + x0 * s;
  }
}

__global__ void EmbeddingKernel(const void* table, int kind, const int32_t* ids, float* y,
                                int64_t n, int64_t d) {
  SHARDLM_GRID_LOOP(t, n * d) {
    const int64_t i = t / d, c = t % d;
    const int32_t id = ids[i];
    float v = 0.0f;
    if (id >= 0) {
      const int64_t at = static_cast<int64_t>(id) * d + c;
      if (kind == static_cast<int>(HalfKind::kBF16)) {
        v = __bfloat162float(static_cast<const __nv_bfloat16*>(table)[at]);
      } else if (kind == static_cast<int>(HalfKind::kF16)) {
        v = __half2float(static_cast<const __half*>(table)[at]);
      } else {
        v = static_cast<const float*>(table)[at];
      }
    }
    y[t] = v;
  }
}

__global__ void SiluMulKernel(const float* gate, const float* up, float* y, int64_t n) {
  SHARDLM_GRID_LOOP(i, n) {
    const float g = gate[i];
    y[i] = g / (1.0f + expf(-g)) * up[i];
  }
}

__global__ void AddKernel(float* x, const float* y, int64_t n) {
  SHARDLM_GRID_LOOP(i, n) x[i] += y[i];
}

// One block per row: the largest value, the first index on ties; NaNs never win.
__global__ void ArgmaxKernel(const float* logits, int64_t vocab, int32_t* out, float* values) {
  __shared__ float best_v[kThreads];
  __shared__ int64_t best_i[kThreads];
  const float* row = logits + static_cast<int64_t>(blockIdx.x) * vocab;
  float bv = -INFINITY;
  int64_t bi = INT64_MAX;
  for (int64_t j = threadIdx.x; j < vocab; j += blockDim.x) {
    const float v = row[j];
    if (v > bv || (v == bv && j < bi)) {
      bv = v;
      bi = j;
    }
  }
  best_v[threadIdx.x] = bv;
  best_i[threadIdx.x] = bi;
  __syncthreads();
  for (unsigned s = blockDim.x / 2; s > 0; s >>= 1) {
    if (threadIdx.x < s) {
      const float ov = best_v[threadIdx.x + s];
      const int64_t oi = best_i[threadIdx.x + s];
      if (ov > best_v[threadIdx.x] || (ov == best_v[threadIdx.x] && oi < best_i[threadIdx.x])) {
        best_v[threadIdx.x] = ov;
        best_i[threadIdx.x] = oi;
      }
    }
    __syncthreads();
  }
  if (threadIdx.x == 0) {
    const int64_t index = best_i[0] == INT64_MAX ? 0 : best_i[0];  // all-NaN row: 0
    out[blockIdx.x] = static_cast<int32_t>(index);
    if (values != nullptr) values[blockIdx.x] = row[index];
  }
}

__global__ void WriteKvKernel(const float* k, const float* v, const int32_t* positions,
                              float* k_cache, float* v_cache, int64_t n, int64_t row) {
  SHARDLM_GRID_LOOP(t, n * row) {
    const int64_t i = t / row, e = t % row;
    const int64_t dst = static_cast<int64_t>(positions[i]) * row + e;
    k_cache[dst] = k[t];
    v_cache[dst] = v[t];
  }
}

// Cache row of key position j of query token i.
__device__ int64_t KeyRow(const AttentionArgs& a, int64_t i, int64_t j) {
  if (a.block_size == 0) return j;
  const int32_t* table = a.block_tables + a.table_begin[a.seq_index[i]];
  return static_cast<int64_t>(table[j / a.block_size]) * a.block_size + j % a.block_size;
}

// One block per (token i, query head h). Shared memory: q (head_dim) then the scores of the
// token's keys (max_span). Warps take keys in turn, the lanes of a warp split one dot product;
// then a block-wide softmax; then each thread sums the values of a few features.
__global__ void AttentionKernel(AttentionArgs a) {
  extern __shared__ float smem[];
  __shared__ float red[32];
  const int64_t i = blockIdx.x / a.heads;
  const int64_t h = blockIdx.x % a.heads;
  const int64_t group = a.heads / a.kv_heads;
  const int64_t kv_width = a.kv_heads * a.head_dim;
  const int64_t kv_offset = (h / group) * a.head_dim;
  const int64_t p = a.positions[i];
  const int64_t first = a.window > 0 ? (p - a.window + 1 > 0 ? p - a.window + 1 : 0) : 0;
  const int64_t span = p - first + 1;
  float* q = smem;
  float* scores = smem + a.head_dim;
  const float* qg = a.q + (i * a.heads + h) * a.head_dim;
  for (int64_t d = threadIdx.x; d < a.head_dim; d += blockDim.x) q[d] = qg[d];
  __syncthreads();

  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int warps = blockDim.x >> 5;
  for (int64_t j = warp; j < span; j += warps) {
    const float* k = a.k_cache + KeyRow(a, i, first + j) * kv_width + kv_offset;
    float acc = 0.0f;
    for (int64_t d = lane; d < a.head_dim; d += 32) acc += q[d] * k[d];
    acc = WarpSum(acc);
    if (lane == 0) scores[j] = acc * a.scale;
  }
  __syncthreads();

  float m = -INFINITY;
  for (int64_t j = threadIdx.x; j < span; j += blockDim.x) m = fmaxf(m, scores[j]);
  m = BlockReduce<true>(m, red);
  float sum = 0.0f;
  for (int64_t j = threadIdx.x; j < span; j += blockDim.x) {
    const float e = expf(scores[j] - m);
    scores[j] = e;
    sum += e;
  }
  sum = BlockReduce<false>(sum, red);  // its barriers also publish the exponentials
  const float inv_sum = 1.0f / sum;

  float* out = a.out + (i * a.heads + h) * a.head_dim;
  for (int64_t d = threadIdx.x; d < a.head_dim; d += blockDim.x) {
    float acc = 0.0f;
    for (int64_t j = 0; j < span; ++j) {
      acc += scores[j] * inv_sum * a.v_cache[KeyRow(a, i, first + j) * kv_width + kv_offset + d];
    }
    out[d] = acc;
  }
}

}  // namespace

void LaunchConvertF32ToHalf(const float* src, void* dst, int64_t n, HalfKind kind) {
  if (n == 0) return;
  if (kind == HalfKind::kBF16) {
    ConvertF32ToBf16Kernel<<<Blocks(n), kThreads>>>(src, static_cast<__nv_bfloat16*>(dst), n);
  } else {
    ConvertF32ToF16Kernel<<<Blocks(n), kThreads>>>(src, static_cast<__half*>(dst), n);
  }
  SHARDLM_CUDA_LAUNCH_CHECK("ConvertF32ToHalfKernel<<<>>>");
}

void LaunchAddBias(float* y, const float* bias, int64_t rows, int64_t cols) {
  if (rows * cols == 0) return;
  AddBiasKernel<<<Blocks(rows * cols), kThreads>>>(y, bias, rows, cols);
  SHARDLM_CUDA_LAUNCH_CHECK("AddBiasKernel<<<>>>");
}

void LaunchRmsNorm(const float* x, const float* w, float eps, float* y, int64_t rows, int64_t d) {
  if (rows == 0) return;
  RmsNormKernel<<<static_cast<unsigned>(rows), kThreads>>>(x, w, eps, y, d);
  SHARDLM_CUDA_LAUNCH_CHECK("RmsNormKernel<<<>>>");
}

void LaunchRope(float* x, const int32_t* positions, const float* inv_freq, int64_t n,
                int64_t heads, int64_t head_dim, int64_t half, bool interleaved) {
  const int64_t total = n * heads * half;
  if (total == 0) return;
  RopeKernel<<<Blocks(total), kThreads>>>(x, positions, inv_freq, n, heads, head_dim, half,
                                          interleaved);
  SHARDLM_CUDA_LAUNCH_CHECK("RopeKernel<<<>>>");
}

void LaunchEmbedding(const void* table, HalfKind kind, const int32_t* ids, float* y, int64_t n,
                     int64_t d) {
  if (n * d == 0) return;
  EmbeddingKernel<<<Blocks(n * d), kThreads>>>(table, static_cast<int>(kind), ids, y, n, d);
  SHARDLM_CUDA_LAUNCH_CHECK("EmbeddingKernel<<<>>>");
}

void LaunchSiluMul(const float* gate, const float* up, float* y, int64_t n) {
  if (n == 0) return;
  SiluMulKernel<<<Blocks(n), kThreads>>>(gate, up, y, n);
  SHARDLM_CUDA_LAUNCH_CHECK("SiluMulKernel<<<>>>");
}

void LaunchAdd(float* x, const float* y, int64_t n) {
  if (n == 0) return;
  AddKernel<<<Blocks(n), kThreads>>>(x, y, n);
  SHARDLM_CUDA_LAUNCH_CHECK("AddKernel<<<>>>");
}

void LaunchArgmax(const float* logits, int64_t rows, int64_t vocab, int32_t* out, float* values) {
  if (rows == 0) return;
  ArgmaxKernel<<<static_cast<unsigned>(rows), kThreads>>>(logits, vocab, out, values);
  SHARDLM_CUDA_LAUNCH_CHECK("ArgmaxKernel<<<>>>");
}

void LaunchWriteKv(const float* k, const float* v, const int32_t* positions, float* k_cache,
                   float* v_cache, int64_t n, int64_t row) {
  if (n * row == 0) return;
  WriteKvKernel<<<Blocks(n * row), kThreads>>>(k, v, positions, k_cache, v_cache, n, row);
  SHARDLM_CUDA_LAUNCH_CHECK("WriteKvKernel<<<>>>");
}

void LaunchAttention(const AttentionArgs& args) {
  const int64_t blocks = args.n * args.heads;
  if (blocks == 0) return;
  const size_t smem = static_cast<size_t>(args.head_dim + args.max_span) * sizeof(float);
  // Past the default 48 KiB per block (static `red` included), the kernel must opt in.
  if (smem + 32 * sizeof(float) > 48 * 1024) {
    int device = 0, max_smem = 0;
    ThrowCudaError(static_cast<int>(cudaGetDevice(&device)), "cudaGetDevice", __FILE__, __LINE__);
    ThrowCudaError(static_cast<int>(cudaDeviceGetAttribute(
                       &max_smem, cudaDevAttrMaxSharedMemoryPerBlockOptin, device)),
                   "cudaDeviceGetAttribute", __FILE__, __LINE__);
    if (smem + 32 * sizeof(float) > static_cast<size_t>(max_smem)) {
      throw std::runtime_error("Attention: " + std::to_string(args.max_span) +
                               " keys do not fit the shared memory of one block (" +
                               std::to_string(max_smem) + " bytes) in the CUDA backend yet");
    }
    ThrowCudaError(static_cast<int>(cudaFuncSetAttribute(
                       AttentionKernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                       static_cast<int>(smem))),
                   "cudaFuncSetAttribute", __FILE__, __LINE__);
  }
  AttentionKernel<<<static_cast<unsigned>(blocks), 128, smem>>>(args);
  SHARDLM_CUDA_LAUNCH_CHECK("AttentionKernel<<<>>>");
}

}  // namespace shardlm::cuda
