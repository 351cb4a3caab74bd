// The CUDA kernels of the CUDA backend: one thread per element for the elementwise ops, one
// block per row for the reductions, one block per (token, head) for attention (an online
// softmax over the keys, flash-decoding style, so any context length fits). Numerics follow the
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

__device__ __forceinline__ float Load(const float* p) { return *p; }
__device__ __forceinline__ float Load(const __nv_bfloat16* p) { return __bfloat162float(*p); }
__device__ __forceinline__ float Load(const __half* p) { return __half2float(*p); }
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

// Cache row of key position j of query token i.
__device__ int64_t KeyRow(const AttentionArgs& a, int64_t i, int64_t j) {
  const int32_t* table = a.block_tables + a.table_begin[a.seq_index[i]];
  return static_cast<int64_t>(table[j / a.block_size]) * a.block_size + j % a.block_size;
}

constexpr int kAttnWarps = 4;
constexpr int kMaxPerLane = 8;  // head_dim <= 256

// One block of kAttnWarps warps per (token i, query head h). The warps take the keys in turn;
// in a warp, lane l holds features l, l + 32, ... of q and of its running output. Each warp keeps
// an online softmax (running max m, sum l, output acc); the warps merge at the end. No shared
// memory per key: any number of keys fits, and the launch does not depend on the positions.
template <typename CacheT, int kPerLane>
__global__ void __launch_bounds__(kAttnWarps * 32) AttentionKernel(AttentionArgs a) {
  __shared__ float warp_m[kAttnWarps], warp_l[kAttnWarps];
  __shared__ float warp_acc[kAttnWarps][kPerLane * 32];
  const int64_t i = blockIdx.x / a.heads;
  const int64_t h = blockIdx.x % a.heads;
  const int64_t group = a.heads / a.kv_heads;
  const int64_t kv_width = a.kv_heads * a.head_dim;
  const int64_t kv_offset = (h / group) * a.head_dim;
  const int64_t p = a.positions[i];
  const int64_t first = a.window > 0 ? (p - a.window + 1 > 0 ? p - a.window + 1 : 0) : 0;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const auto* kc = static_cast<const CacheT*>(a.k_cache);
  const auto* vc = static_cast<const CacheT*>(a.v_cache);

  float q[kPerLane], acc[kPerLane];
  const float* qg = a.q + (i * a.heads + h) * a.head_dim;
#pragma unroll
  for (int e = 0; e < kPerLane; ++e) {
    const int64_t d = lane + 32 * e;
    q[e] = d < a.head_dim ? qg[d] * a.scale : 0.0f;
    acc[e] = 0.0f;
  }
  float m = -INFINITY, l = 0.0f;
  for (int64_t j = first + warp; j <= p; j += kAttnWarps) {
    const int64_t base = KeyRow(a, i, j) * kv_width + kv_offset;
    float dot = 0.0f;
#pragma unroll
    for (int e = 0; e < kPerLane; ++e) {
      const int64_t d = lane + 32 * e;
      if (d < a.head_dim) dot += q[e] * Load(kc + base + d);
    }
    const float score = WarpSum(dot);
    const float m_new = fmaxf(m, score);
    const float old_scale = expf(m - m_new);  // 0 at the first key (m = -inf)
    const float w = expf(score - m_new);
    l = l * old_scale + w;
#pragma unroll
    for (int e = 0; e < kPerLane; ++e) {
      const int64_t d = lane + 32 * e;
      const float v = d < a.head_dim ? Load(vc + base + d) : 0.0f;
      acc[e] = acc[e] * old_scale + w * v;
    }
    m = m_new;
  }
  if (lane == 0) {
    warp_m[warp] = m;
    warp_l[warp] = l;
  }
#pragma unroll
  for (int e = 0; e < kPerLane; ++e) warp_acc[warp][lane + 32 * e] = acc[e];
  __syncthreads();

  float m_all = -INFINITY;
  for (int w = 0; w < kAttnWarps; ++w) m_all = fmaxf(m_all, warp_m[w]);
  float scale[kAttnWarps];
  float l_all = 0.0f;
  for (int w = 0; w < kAttnWarps; ++w) {
    // A warp that saw no key has m = -inf and l = 0: its scale is 0.
    scale[w] = warp_m[w] == -INFINITY ? 0.0f : expf(warp_m[w] - m_all);
    l_all += warp_l[w] * scale[w];
  }
  const float inv_l = 1.0f / l_all;
  float* out = a.out + (i * a.heads + h) * a.head_dim;
  for (int64_t d = threadIdx.x; d < a.head_dim; d += blockDim.x) {
    float o = 0.0f;
    for (int w = 0; w < kAttnWarps; ++w) o += warp_acc[w][d] * scale[w];
    out[d] = o * inv_l;
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

template <typename CacheT>
void LaunchAttentionFor(const AttentionArgs& a, cudaStream_t stream) {
  const unsigned blocks = static_cast<unsigned>(a.n * a.heads);
  const int per_lane = static_cast<int>((a.head_dim + 31) / 32);
  constexpr unsigned kBlock = kAttnWarps * 32;
  switch (per_lane) {
    case 1: AttentionKernel<CacheT, 1><<<blocks, kBlock, 0, stream>>>(a); break;
    case 2: AttentionKernel<CacheT, 2><<<blocks, kBlock, 0, stream>>>(a); break;
    case 3: AttentionKernel<CacheT, 3><<<blocks, kBlock, 0, stream>>>(a); break;
    case 4: AttentionKernel<CacheT, 4><<<blocks, kBlock, 0, stream>>>(a); break;
    case 5: case 6: AttentionKernel<CacheT, 6><<<blocks, kBlock, 0, stream>>>(a); break;
    default: AttentionKernel<CacheT, kMaxPerLane><<<blocks, kBlock, 0, stream>>>(a); break;
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

void LaunchAttention(const AttentionArgs& args, cudaStream_t stream) {
  if (args.n * args.heads == 0) return;
  if (args.block_size <= 0) {
    throw std::invalid_argument("PagedAttention: block_size " + std::to_string(args.block_size) +
                                " is not positive");
  }
  if (args.head_dim > 32 * kMaxPerLane) {
    throw std::invalid_argument("PagedAttention: head_dim " + std::to_string(args.head_dim) +
                                " is over the CUDA kernel's limit of " +
                                std::to_string(32 * kMaxPerLane));
  }
  switch (args.cache_kind) {
    case HalfKind::kBF16: LaunchAttentionFor<__nv_bfloat16>(args, stream); break;
    case HalfKind::kF16: LaunchAttentionFor<__half>(args, stream); break;
    default: LaunchAttentionFor<float>(args, stream); break;
  }
  SHARDLM_CUDA_LAUNCH_CHECK("AttentionKernel<<<>>>");
}

// The fused ops of a layer whose Q/K/V and gate/up projections are one GEMM each
// (Backend::RopeWriteKv, Backend::SiluMulPacked).
namespace {

// One thread per output element: Q heads into q, K heads into k_cache, V into v_cache. A rotated
// feature reads its pair partner from qkv, which nothing here writes, so threads are independent.
template <typename CacheT>
__global__ void RopeWriteKvKernel(const float* qkv, const int32_t* positions,
                                  const float* inv_freq, const int32_t* rows, float* q,
                                  CacheT* k_cache, CacheT* v_cache, int64_t n, int64_t heads,
                                  int64_t kv_heads, int64_t head_dim, int64_t half,
                                  bool interleaved) {
  const int64_t q_width = heads * head_dim, kv_width = kv_heads * head_dim;
  const int64_t rotated = q_width + kv_width, width = rotated + kv_width;
  SHARDLM_GRID_LOOP(t, n * width) {
    const int64_t i = t / width, c = t % width;
    const float* row = qkv + i * width;
    const int64_t cache_at = static_cast<int64_t>(rows[i]) * kv_width;
    if (c >= rotated) {
      Store(v_cache + cache_at + (c - rotated), row[c]);
      continue;
    }
    const int64_t d = c % head_dim;  // feature within its head
    float out = row[c];
    if (d < 2 * half) {
      // Pair k is (2k, 2k + 1) interleaved, else (k, k + half); `first`: this is its first member.
      const bool first = interleaved ? d % 2 == 0 : d < half;
      const int64_t k = interleaved ? d / 2 : (first ? d : d - half);
      const int64_t partner = interleaved ? (d ^ 1) : (first ? d + half : d - half);
      const float other = row[c - d + partner];
      const float angle = static_cast<float>(positions[i]) * inv_freq[k];
      const float cs = cosf(angle), sn = sinf(angle);
      // As the CPU: first = x0 * cos - x1 * sin, second = x1 * cos + x0 * sin.
      out = first ? out * cs - other * sn : out * cs + other * sn;
    }
    if (c < q_width) {
      q[i * q_width + c] = out;
    } else {
      Store(k_cache + cache_at + (c - q_width), out);
    }
  }
}

__global__ void SiluMulPackedKernel(const float* gate_up, float* y, int64_t n, int64_t inter) {
  SHARDLM_GRID_LOOP(t, n * inter) {
    const int64_t i = t / inter, j = t % inter;
    const float g = gate_up[i * 2 * inter + j];
    y[t] = g / (1.0f + expf(-g)) * gate_up[i * 2 * inter + inter + j];
  }
}

}  // namespace

void LaunchRopeWriteKv(const float* qkv, const int32_t* positions, const float* inv_freq,
                       const int32_t* rows, float* q, void* k_cache, void* v_cache,
                       HalfKind cache_kind, int64_t n, int64_t heads, int64_t kv_heads,
                       int64_t head_dim, int64_t half, bool interleaved, cudaStream_t stream) {
  const int64_t total = n * (heads + 2 * kv_heads) * head_dim;
  if (total == 0) return;
  const unsigned blocks = Blocks(total);
  switch (cache_kind) {
    case HalfKind::kBF16:
      RopeWriteKvKernel<<<blocks, kThreads, 0, stream>>>(
          qkv, positions, inv_freq, rows, q, static_cast<__nv_bfloat16*>(k_cache),
          static_cast<__nv_bfloat16*>(v_cache), n, heads, kv_heads, head_dim, half, interleaved);
      break;
    case HalfKind::kF16:
      RopeWriteKvKernel<<<blocks, kThreads, 0, stream>>>(
          qkv, positions, inv_freq, rows, q, static_cast<__half*>(k_cache),
          static_cast<__half*>(v_cache), n, heads, kv_heads, head_dim, half, interleaved);
      break;
    default:
      RopeWriteKvKernel<<<blocks, kThreads, 0, stream>>>(
          qkv, positions, inv_freq, rows, q, static_cast<float*>(k_cache),
          static_cast<float*>(v_cache), n, heads, kv_heads, head_dim, half, interleaved);
      break;
  }
  SHARDLM_CUDA_LAUNCH_CHECK("RopeWriteKvKernel<<<>>>");
}

void LaunchSiluMulPacked(const float* gate_up, float* y, int64_t n, int64_t inter,
                         cudaStream_t stream) {
  if (n * inter == 0) return;
  SiluMulPackedKernel<<<Blocks(n * inter), kThreads, 0, stream>>>(gate_up, y, n, inter);
  SHARDLM_CUDA_LAUNCH_CHECK("SiluMulPackedKernel<<<>>>");
}

}  // namespace shardlm::cuda
