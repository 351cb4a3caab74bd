// The CUDA kernels of the CUDA backend: one thread per element for the elementwise ops, one
// block per row for the reductions (attention is in cuda_attention.cu). Numerics follow the
// CPU backend (kernels/cpu): f32 arithmetic, the same order of operations where it matters
// (RmsNorm, Rope). KV caches may be f32, bf16 or f16. Every launcher takes the stream to enqueue
// on and never synchronizes, so that a step can be captured as a CUDA graph.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cfloat>
#include <climits>
#include <stdexcept>
#include <string>

#include "base/check.h"
#include "kernels/cuda/cuda_kernels.h"

namespace shardlm::cuda {
namespace {

constexpr int kThreads = 256;

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

// x += delta, then y = RmsNorm(x), one row per block; y may alias delta (each thread reads its
// own elements of delta before writing them in y).
__global__ void AddRmsNormKernel(float* x, const float* delta, const float* w, float eps,
                                 float* y, int64_t d) {
  __shared__ float red[32];
  float* xr = x + static_cast<int64_t>(blockIdx.x) * d;
  const float* dr = delta + static_cast<int64_t>(blockIdx.x) * d;
  float* yr = y + static_cast<int64_t>(blockIdx.x) * d;
  float sum_sq = 0.0f;
  for (int64_t k = threadIdx.x; k < d; k += blockDim.x) {
    const float v = xr[k] + dr[k];
    xr[k] = v;
    sum_sq += v * v;
  }
  sum_sq = BlockReduce<false>(sum_sq, red);
  const float inv_rms = 1.0f / sqrtf(sum_sq / static_cast<float>(d) + eps);
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

__device__ __forceinline__ void Store(float* p, float v) { *p = v; }
__device__ __forceinline__ void Store(__nv_bfloat16* p, float v) { *p = __float2bfloat16_rn(v); }
__device__ __forceinline__ void Store(__half* p, float v) { *p = __float2half_rn(v); }

template <typename CacheT>
__global__ void WriteKvKernel(const float* k, const float* v, const int32_t* rows,
                              CacheT* k_cache, CacheT* v_cache, int64_t n, int64_t row) {
  SHARDLM_GRID_LOOP(t, n * row) {
    const int64_t i = t / row, e = t % row;
    const int64_t dst = static_cast<int64_t>(rows[i]) * row + e;
    Store(k_cache + dst, k[t]);
    Store(v_cache + dst, v[t]);
  }
}

// 16-bit weight GEMV for decode (n <= kGemvMaxBatch rows of x): y[r, o] = x[r] . w[o] (+ bias[o]).
// One warp per output row o; each lane reads 8 weights (16 bytes) at a time, so a warp streams
// 512 contiguous bytes of the row per step, and keeps n f32 partial sums. Memory-bound: the
// point is to read every weight byte once at full bandwidth. Needs in % 8 == 0.
constexpr int kGemvWarps = 8;

__device__ __forceinline__ void Unpack8(const uint4& raw, const __nv_bfloat16*, float* f) {
  const auto* h = reinterpret_cast<const __nv_bfloat162*>(&raw);
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const float2 v = __bfloat1622float2(h[i]);
    f[2 * i] = v.x;
    f[2 * i + 1] = v.y;
  }
}
__device__ __forceinline__ void Unpack8(const uint4& raw, const __half*, float* f) {
  const auto* h = reinterpret_cast<const __half2*>(&raw);
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const float2 v = __half22float2(h[i]);
    f[2 * i] = v.x;
    f[2 * i + 1] = v.y;
  }
}

template <typename T, int kN>
__global__ void __launch_bounds__(kGemvWarps * 32)
    HalfGemvKernel(const T* w, int64_t out, int64_t in, const float* x, const float* bias,
                   float* y) {
  const int lane = threadIdx.x & 31;
  const int64_t o = static_cast<int64_t>(blockIdx.x) * kGemvWarps + (threadIdx.x >> 5);
  if (o >= out) return;
  const uint4* row = reinterpret_cast<const uint4*>(w + o * in);
  const int64_t chunks = in / 8;
  float acc[kN];
#pragma unroll
  for (int r = 0; r < kN; ++r) acc[r] = 0.0f;
  // Unrolled so that each lane keeps several 16-byte loads in flight.
#pragma unroll 4
  for (int64_t c = lane; c < chunks; c += 32) {
    const uint4 raw = __ldg(row + c);  // read once: the weights do not stay in cache
    float wf[8];
    Unpack8(raw, static_cast<const T*>(nullptr), wf);
#pragma unroll
    for (int r = 0; r < kN; ++r) {
      const float4* xr = reinterpret_cast<const float4*>(x + r * in + c * 8);
      const float4 a = xr[0], b = xr[1];
      acc[r] += wf[0] * a.x + wf[1] * a.y + wf[2] * a.z + wf[3] * a.w + wf[4] * b.x +
                wf[5] * b.y + wf[6] * b.z + wf[7] * b.w;
    }
  }
#pragma unroll
  for (int r = 0; r < kN; ++r) {
    const float v = WarpSum(acc[r]);
    if (lane == 0) y[r * out + o] = v + (bias != nullptr ? bias[o] : 0.0f);
  }
}

template <typename T>
void LaunchHalfGemvFor(const void* w, int64_t out, int64_t in, const float* x, int64_t n,
                       const float* bias, float* y, cudaStream_t stream) {
  const unsigned blocks = static_cast<unsigned>((out + kGemvWarps - 1) / kGemvWarps);
  const auto* wt = static_cast<const T*>(w);
  constexpr unsigned kBlock = kGemvWarps * 32;
  switch (n) {
    case 1: HalfGemvKernel<T, 1><<<blocks, kBlock, 0, stream>>>(wt, out, in, x, bias, y); break;
    case 2: HalfGemvKernel<T, 2><<<blocks, kBlock, 0, stream>>>(wt, out, in, x, bias, y); break;
    case 3: HalfGemvKernel<T, 3><<<blocks, kBlock, 0, stream>>>(wt, out, in, x, bias, y); break;
    default: HalfGemvKernel<T, 4><<<blocks, kBlock, 0, stream>>>(wt, out, in, x, bias, y); break;
  }
}

}  // namespace

void LaunchConvertF32ToHalf(const float* src, void* dst, int64_t n, HalfKind kind,
                            cudaStream_t stream) {
  if (n == 0) return;
  if (kind == HalfKind::kBF16) {
    ConvertF32ToBf16Kernel<<<Blocks(n), kThreads, 0, stream>>>(
        src, static_cast<__nv_bfloat16*>(dst), n);
  } else {
    ConvertF32ToF16Kernel<<<Blocks(n), kThreads, 0, stream>>>(src, static_cast<__half*>(dst), n);
  }
  SHARDLM_CUDA_LAUNCH_CHECK("ConvertF32ToHalfKernel<<<>>>");
}

void LaunchAddBias(float* y, const float* bias, int64_t rows, int64_t cols, cudaStream_t stream) {
  if (rows * cols == 0) return;
  AddBiasKernel<<<Blocks(rows * cols), kThreads, 0, stream>>>(y, bias, rows, cols);
  SHARDLM_CUDA_LAUNCH_CHECK("AddBiasKernel<<<>>>");
}

void LaunchRmsNorm(const float* x, const float* w, float eps, float* y, int64_t rows, int64_t d,
                   cudaStream_t stream) {
  if (rows == 0) return;
  RmsNormKernel<<<static_cast<unsigned>(rows), kThreads, 0, stream>>>(x, w, eps, y, d);
  SHARDLM_CUDA_LAUNCH_CHECK("RmsNormKernel<<<>>>");
}

void LaunchAddRmsNorm(float* x, const float* delta, const float* w, float eps, float* y,
                      int64_t rows, int64_t d, cudaStream_t stream) {
  if (rows == 0) return;
  AddRmsNormKernel<<<static_cast<unsigned>(rows), kThreads, 0, stream>>>(x, delta, w, eps, y, d);
  SHARDLM_CUDA_LAUNCH_CHECK("AddRmsNormKernel<<<>>>");
}

void LaunchRope(float* x, const int32_t* positions, const float* inv_freq, int64_t n,
                int64_t heads, int64_t head_dim, int64_t half, bool interleaved,
                cudaStream_t stream) {
  const int64_t total = n * heads * half;
  if (total == 0) return;
  RopeKernel<<<Blocks(total), kThreads, 0, stream>>>(x, positions, inv_freq, n, heads, head_dim,
                                                     half, interleaved);
  SHARDLM_CUDA_LAUNCH_CHECK("RopeKernel<<<>>>");
}

void LaunchEmbedding(const void* table, HalfKind kind, const int32_t* ids, float* y, int64_t n,
                     int64_t d, cudaStream_t stream) {
  if (n * d == 0) return;
  EmbeddingKernel<<<Blocks(n * d), kThreads, 0, stream>>>(table, static_cast<int>(kind), ids, y,
                                                          n, d);
  SHARDLM_CUDA_LAUNCH_CHECK("EmbeddingKernel<<<>>>");
}

void LaunchSiluMul(const float* gate, const float* up, float* y, int64_t n, cudaStream_t stream) {
  if (n == 0) return;
  SiluMulKernel<<<Blocks(n), kThreads, 0, stream>>>(gate, up, y, n);
  SHARDLM_CUDA_LAUNCH_CHECK("SiluMulKernel<<<>>>");
}

void LaunchAdd(float* x, const float* y, int64_t n, cudaStream_t stream) {
  if (n == 0) return;
  AddKernel<<<Blocks(n), kThreads, 0, stream>>>(x, y, n);
  SHARDLM_CUDA_LAUNCH_CHECK("AddKernel<<<>>>");
}

void LaunchArgmax(const float* logits, int64_t rows, int64_t vocab, int32_t* out, float* values,
                  cudaStream_t stream) {
  if (rows == 0) return;
  ArgmaxKernel<<<static_cast<unsigned>(rows), kThreads, 0, stream>>>(logits, vocab, out, values);
  SHARDLM_CUDA_LAUNCH_CHECK("ArgmaxKernel<<<>>>");
}

void LaunchWriteKv(const float* k, const float* v, const int32_t* rows, void* k_cache,
                   void* v_cache, HalfKind cache_kind, int64_t n, int64_t row,
                   cudaStream_t stream) {
  if (n * row == 0) return;
  const unsigned blocks = Blocks(n * row);
  switch (cache_kind) {
    case HalfKind::kBF16:
      WriteKvKernel<<<blocks, kThreads, 0, stream>>>(k, v, rows,
                                                     static_cast<__nv_bfloat16*>(k_cache),
                                                     static_cast<__nv_bfloat16*>(v_cache), n, row);
      break;
    case HalfKind::kF16:
      WriteKvKernel<<<blocks, kThreads, 0, stream>>>(k, v, rows, static_cast<__half*>(k_cache),
                                                     static_cast<__half*>(v_cache), n, row);
      break;
    default:
      WriteKvKernel<<<blocks, kThreads, 0, stream>>>(k, v, rows, static_cast<float*>(k_cache),
                                                     static_cast<float*>(v_cache), n, row);
      break;
  }
  SHARDLM_CUDA_LAUNCH_CHECK("WriteKvKernel<<<>>>");
}

bool HalfGemvApplies(int64_t n, int64_t in, const void* w, const float* x) {
  return n >= 1 && n <= kGemvMaxBatch && in % 8 == 0 &&
         reinterpret_cast<uintptr_t>(w) % 16 == 0 && reinterpret_cast<uintptr_t>(x) % 16 == 0;
}

void LaunchHalfGemv(const void* w, HalfKind kind, int64_t out, int64_t in, const float* x,
                    int64_t n, const float* bias, float* y, cudaStream_t stream) {
  if (out == 0 || n == 0) return;
  if (!HalfGemvApplies(n, in, w, x)) {
    throw std::invalid_argument("LaunchHalfGemv: needs 1 <= n <= " +
                                std::to_string(kGemvMaxBatch) +
                                ", in % 8 == 0 and 16-byte aligned w and x");
  }
  if (kind == HalfKind::kBF16) {
    LaunchHalfGemvFor<__nv_bfloat16>(w, out, in, x, n, bias, y, stream);
  } else {
    LaunchHalfGemvFor<__half>(w, out, in, x, n, bias, y, stream);
  }
  SHARDLM_CUDA_LAUNCH_CHECK("HalfGemvKernel<<<>>>");
}

}  // namespace shardlm::cuda
