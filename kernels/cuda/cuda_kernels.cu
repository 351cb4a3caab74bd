// The CUDA kernels of the CUDA backend: one thread per element for the elementwise ops, one
// block per row for the reductions, one warp per head for the per-head norm (attention is in
// cuda_attention.cu). Numerics follow the CPU backend (kernels/cpu): f32 arithmetic, the same
// order of operations where it matters (RmsNorm, Rope). KV caches may be f32, bf16 or f16. Every
// launcher takes the stream to enqueue on and never synchronizes, so that a step can be captured
// as a CUDA graph.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cfloat>
#include <climits>
#include <stdexcept>
#include <string>

#include "base/check.h"
#include "kernels/cuda/cuda_kernels.h"
#include "kernels/cuda/unpack.cuh"

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

// One thread per rotary pair; features past 2 * half (partial rotary) are not touched.
__global__ void RopeKernel(float* x, const int32_t* positions, const float* inv_freq, int64_t n,
                           int64_t heads, int64_t head_dim, int64_t half, bool interleaved,
                           float attention_factor) {
  SHARDLM_GRID_LOOP(t, n * heads * half) {
    const int64_t k = t % half;
    const int64_t row = t / half;  // i * heads + h
    const int64_t i = row / heads;
    const float angle = static_cast<float>(positions[i]) * inv_freq[k];
    // As the CPU: cos and sin scaled first, then the rotation.
    const float c = cosf(angle) * attention_factor, s = sinf(angle) * attention_factor;
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

// act(g) * u in f32, the CPU's expressions (kernels/cpu/elementwise.cpp) in the same order.
// Saturated gates stay finite: expf(-g) = inf gives 0 for SiLU, and tanhf(+-inf) = +-1 gives g or
// 0 for GELU (0.044715 g^3 overflows past |g| ~ 2e12).
template <GluKind kAct>
__device__ __forceinline__ float GluTimes(float g, float u) {
  if (kAct == GluKind::kGeluTanh) {
    constexpr float kSqrt2OverPi = 0.7978845608028654f;
    return 0.5f * g * (1.0f + tanhf(kSqrt2OverPi * (g + 0.044715f * g * g * g))) * u;
  }
  return g / (1.0f + expf(-g)) * u;
}

template <GluKind kAct>
__global__ void GluMulKernel(const float* gate, const float* up, float* y, int64_t n) {
  SHARDLM_GRID_LOOP(i, n) y[i] = GluTimes<kAct>(gate[i], up[i]);
}

__global__ void AddKernel(float* x, const float* y, int64_t n) {
  SHARDLM_GRID_LOOP(i, n) x[i] += y[i];
}

__global__ void ScaleKernel(float* x, float s, int64_t n) { SHARDLM_GRID_LOOP(i, n) x[i] *= s; }

// Per-head RMSNorm of the Q and K heads of a fused QKV output, in place: one warp per (token,
// head), `normed` = heads + kv_heads heads of `d` features at the start of each row of `width`.
// As RmsNormKernel: f32 sum of squares, (x * inv_rms) * w; each lane writes only what it read.
constexpr int kHeadNormWarps = kThreads / 32;
__global__ void HeadRmsNormKernel(float* qkv, const float* q_w, const float* k_w, float eps,
                                  int64_t rows, int64_t heads, int64_t normed, int64_t d,
                                  int64_t width) {
  const int lane = threadIdx.x & 31;
  const int64_t first = static_cast<int64_t>(blockIdx.x) * kHeadNormWarps + (threadIdx.x >> 5);
  // Whole warps step together (the loop bound is uniform in a warp): WarpSum sees every lane.
  for (int64_t r = first; r < rows; r += static_cast<int64_t>(gridDim.x) * kHeadNormWarps) {
    const int64_t i = r / normed, h = r % normed;
    float* x = qkv + i * width + h * d;
    const float* w = h < heads ? q_w : k_w;
    float sum_sq = 0.0f;
    for (int64_t k = lane; k < d; k += 32) sum_sq += x[k] * x[k];
    sum_sq = WarpSum(sum_sq);
    const float inv_rms = 1.0f / sqrtf(sum_sq / static_cast<float>(d) + eps);
    for (int64_t k = lane; k < d; k += 32) x[k] = (x[k] * inv_rms) * w[k];
  }
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

__device__ __forceinline__ float Load(const __nv_bfloat16* p) { return __bfloat162float(*p); }
__device__ __forceinline__ float Load(const __half* p) { return __half2float(*p); }
__device__ __forceinline__ void Store(float* p, float v) { *p = v; }
__device__ __forceinline__ void Store(__nv_bfloat16* p, float v) { *p = __float2bfloat16_rn(v); }
__device__ __forceinline__ void Store(__half* p, float v) { *p = __float2half_rn(v); }

template <typename T>
__global__ void ConvertHalfToF32Kernel(const T* src, float* dst, int64_t n) {
  SHARDLM_GRID_LOOP(i, n) dst[i] = Load(src + i);
}

// One block row (blockIdx.x) per destination row, its columns across threads and blockIdx.y: a
// thread reads its element of dst once, adds the group's sources in order and writes it once.
// __fmul_rn / __fadd_rn keep nvcc from contracting w * s + acc into an FMA, so that the rounding
// is the CPU's (kernels/backend.cpp: out[c] += weights[i] * in[c], built for baseline x86-64,
// which has no FMA: a rounded product, then a rounded sum).
__global__ void ScatterAddRowsKernel(const float* src, const int32_t* plan, int64_t groups,
                                     int64_t m, int64_t d, float* dst) {
  const int64_t j = blockIdx.x;
  const int32_t* begins = plan + groups;
  const int32_t* order = begins + groups + 1;
  const float* weights = reinterpret_cast<const float*>(order + m);
  const int32_t begin = begins[j], end = begins[j + 1];
  float* out = dst + static_cast<int64_t>(plan[j]) * d;
  for (int64_t c = static_cast<int64_t>(blockIdx.y) * blockDim.x + threadIdx.x; c < d;
       c += static_cast<int64_t>(gridDim.y) * blockDim.x) {
    float acc = out[c];
    for (int32_t p = begin; p < end; ++p) {
      acc = __fadd_rn(acc, __fmul_rn(weights[p], src[static_cast<int64_t>(order[p]) * d + c]));
    }
    out[c] = acc;
  }
}

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
// A block of kGemvWarps warps computes kGemvWarps * kGemvRowsPerWarp output rows. Per step of
// kGemvCols columns the block stages x (all n rows, f32) in shared memory; then each warp walks
// its kGemvRowsPerWarp rows 16 bytes (8 weights) per lane at a time, lanes side by side, so that a
// warp reads 512 contiguous bytes of each of its rows per step (the loads of all its rows in
// flight together) and every x value it reads from shared memory feeds one FMA per row. The
// weights are read once at full bandwidth; x is read from L2 once per block instead of once per
// row through L1. f32 accumulation, a warp sum per output. Needs HalfRowsAligned.
constexpr int kGemvWarps = 8;
constexpr int kGemvRowsPerWarp = 4;
constexpr int kGemvCols = 1024;  // x staged per step: kGemvMaxBatch * 4 KiB at most

// Where column c of a staged x row lives: lane i reads the quads 2i and 2i + 1 (floats 8i ..
// 8i + 7); flipping bit 0 of the quad index in every other group of 8 quads puts the quads that 8
// neighbouring lanes read at once in 8 different groups of 4 banks.
__device__ __forceinline__ int GemvSwizzle(int c) { return c ^ (((c >> 5) & 1) << 2); }


template <typename T, int kN>
__global__ void __launch_bounds__(kGemvWarps * 32)
    HalfGemvKernel(const T* w, int64_t out, int64_t in, const float* x, bool x_aligned,
                   const float* bias, float* y) {
  constexpr int kR = kGemvRowsPerWarp;
  __shared__ __align__(16) float xs[kN][kGemvCols];
  const int lane = threadIdx.x & 31;
  const int64_t o0 =
      (static_cast<int64_t>(blockIdx.x) * kGemvWarps + (threadIdx.x >> 5)) * kGemvRowsPerWarp;
  // Rows past the end repeat the last one; their sums are not stored.
  const uint4* rows[kR];
#pragma unroll
  for (int r = 0; r < kR; ++r) {
    const int64_t o = o0 + r < out ? o0 + r : out - 1;
    rows[r] = reinterpret_cast<const uint4*>(w + o * in);
  }
  float acc[kR][kN];
#pragma unroll
  for (int r = 0; r < kR; ++r) {
#pragma unroll
    for (int j = 0; j < kN; ++j) acc[r][j] = 0.0f;
  }

  for (int64_t k0 = 0; k0 < in; k0 += kGemvCols) {
    const int step = static_cast<int>(in - k0 < kGemvCols ? in - k0 : kGemvCols);  // % 8 == 0
    const int quads = step / 4;
    __syncthreads();  // every warp is done with the previous step's x
    for (int t = threadIdx.x; t < kN * quads; t += blockDim.x) {
      const int j = t / quads, q = t - j * quads;
      const float* src = x + j * in + k0 + 4 * q;
      const float4 v = x_aligned ? *reinterpret_cast<const float4*>(src)
                                 : make_float4(src[0], src[1], src[2], src[3]);
      *reinterpret_cast<float4*>(&xs[j][GemvSwizzle(4 * q)]) = v;
    }
    __syncthreads();
    const int64_t c0 = k0 / 8;  // this step's first 16-byte chunk of a row
    // Unrolled so that each lane keeps several 16-byte loads per row in flight.
#pragma unroll 4
    for (int p = lane; p < step / 8; p += 32) {
      uint4 raw[kR];
#pragma unroll
      for (int r = 0; r < kR; ++r) raw[r] = __ldg(rows[r] + c0 + p);  // read once: no reuse
      float xv[kN][8];
#pragma unroll
      for (int j = 0; j < kN; ++j) {
        const float4 a = *reinterpret_cast<const float4*>(&xs[j][GemvSwizzle(8 * p)]);
        const float4 b = *reinterpret_cast<const float4*>(&xs[j][GemvSwizzle(8 * p + 4)]);
        xv[j][0] = a.x, xv[j][1] = a.y, xv[j][2] = a.z, xv[j][3] = a.w;
        xv[j][4] = b.x, xv[j][5] = b.y, xv[j][6] = b.z, xv[j][7] = b.w;
      }
#pragma unroll
      for (int r = 0; r < kR; ++r) {
        float wf[8];
        Unpack16Bytes(raw[r], static_cast<const T*>(nullptr), wf);
#pragma unroll
        for (int j = 0; j < kN; ++j) {
          float s = acc[r][j];
#pragma unroll
          for (int e = 0; e < 8; ++e) s = fmaf(wf[e], xv[j][e], s);
          acc[r][j] = s;
        }
      }
    }
  }
#pragma unroll
  for (int r = 0; r < kR; ++r) {
#pragma unroll
    for (int j = 0; j < kN; ++j) {
      const float v = WarpSum(acc[r][j]);
      if (lane == 0 && o0 + r < out)
        y[j * out + o0 + r] = v + (bias != nullptr ? bias[o0 + r] : 0.0f);
    }
  }
}

template <typename T>
void LaunchHalfGemvFor(const void* w, int64_t out, int64_t in, const float* x, int64_t n,
                       const float* bias, float* y, cudaStream_t stream) {
  constexpr int64_t kBlockRows = kGemvWarps * kGemvRowsPerWarp;
  const unsigned blocks = static_cast<unsigned>((out + kBlockRows - 1) / kBlockRows);
  const auto* wt = static_cast<const T*>(w);
  const bool xa = reinterpret_cast<uintptr_t>(x) % 16 == 0;
  constexpr unsigned kBlock = kGemvWarps * 32;
  switch (n) {
    case 1:
      HalfGemvKernel<T, 1><<<blocks, kBlock, 0, stream>>>(wt, out, in, x, xa, bias, y);
      break;
    case 2:
      HalfGemvKernel<T, 2><<<blocks, kBlock, 0, stream>>>(wt, out, in, x, xa, bias, y);
      break;
    case 3:
      HalfGemvKernel<T, 3><<<blocks, kBlock, 0, stream>>>(wt, out, in, x, xa, bias, y);
      break;
    default:
      HalfGemvKernel<T, 4><<<blocks, kBlock, 0, stream>>>(wt, out, in, x, xa, bias, y);
      break;
  }
}

}  // namespace

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

void LaunchRope(float* x, const int32_t* positions, const float* inv_freq, int64_t n, int64_t heads,
                int64_t head_dim, int64_t half, bool interleaved, float attention_factor,
                cudaStream_t stream) {
  const int64_t total = n * heads * half;
  if (total == 0) return;
  RopeKernel<<<Blocks(total), kThreads, 0, stream>>>(x, positions, inv_freq, n, heads, head_dim,
                                                     half, interleaved, attention_factor);
  SHARDLM_CUDA_LAUNCH_CHECK("RopeKernel<<<>>>");
}

void LaunchEmbedding(const void* table, HalfKind kind, const int32_t* ids, float* y, int64_t n,
                     int64_t d, cudaStream_t stream) {
  if (n * d == 0) return;
  EmbeddingKernel<<<Blocks(n * d), kThreads, 0, stream>>>(table, static_cast<int>(kind), ids, y,
                                                          n, d);
  SHARDLM_CUDA_LAUNCH_CHECK("EmbeddingKernel<<<>>>");
}

void LaunchGluMul(const float* gate, const float* up, float* y, int64_t n, GluKind act,
                  cudaStream_t stream) {
  if (n == 0) return;
  if (act == GluKind::kGeluTanh) {
    GluMulKernel<GluKind::kGeluTanh><<<Blocks(n), kThreads, 0, stream>>>(gate, up, y, n);
  } else {
    GluMulKernel<GluKind::kSilu><<<Blocks(n), kThreads, 0, stream>>>(gate, up, y, n);
  }
  SHARDLM_CUDA_LAUNCH_CHECK("GluMulKernel<<<>>>");
}

void LaunchAdd(float* x, const float* y, int64_t n, cudaStream_t stream) {
  if (n == 0) return;
  AddKernel<<<Blocks(n), kThreads, 0, stream>>>(x, y, n);
  SHARDLM_CUDA_LAUNCH_CHECK("AddKernel<<<>>>");
}

void LaunchScale(float* x, float s, int64_t n, cudaStream_t stream) {
  if (n == 0) return;
  ScaleKernel<<<Blocks(n), kThreads, 0, stream>>>(x, s, n);
  SHARDLM_CUDA_LAUNCH_CHECK("ScaleKernel<<<>>>");
}

void LaunchHeadRmsNorm(float* qkv, const float* q_w, const float* k_w, float eps, int64_t n,
                       int64_t heads, int64_t kv_heads, int64_t head_dim, cudaStream_t stream) {
  const int64_t normed = heads + kv_heads, rows = n * normed;
  if (rows == 0 || head_dim == 0) return;
  const int64_t blocks = (rows + kHeadNormWarps - 1) / kHeadNormWarps;
  HeadRmsNormKernel<<<static_cast<unsigned>(blocks < INT_MAX ? blocks : INT_MAX), kThreads, 0,
                      stream>>>(qkv, q_w, k_w, eps, rows, heads, normed, head_dim,
                                (heads + 2 * kv_heads) * head_dim);
  SHARDLM_CUDA_LAUNCH_CHECK("HeadRmsNormKernel<<<>>>");
}

void LaunchArgmax(const float* logits, int64_t rows, int64_t vocab, int32_t* out, float* values,
                  cudaStream_t stream) {
  if (rows == 0) return;
  ArgmaxKernel<<<static_cast<unsigned>(rows), kThreads, 0, stream>>>(logits, vocab, out, values);
  SHARDLM_CUDA_LAUNCH_CHECK("ArgmaxKernel<<<>>>");
}

void LaunchScatterAddRows(const float* src, const int32_t* plan, int64_t groups, int64_t m,
                          int64_t d, float* dst, cudaStream_t stream) {
  if (groups == 0 || d == 0) return;
  if (groups > INT_MAX) {
    throw std::invalid_argument("LaunchScatterAddRows: " + std::to_string(groups) +
                                " destination rows exceed the grid's " + std::to_string(INT_MAX));
  }
  // Narrow rows get one warp's worth of threads; wide ones 256 per block and as many blocks
  // along y as cover the row (a stride loop past 65535 of them).
  const int64_t threads = d < kThreads ? (d + 31) / 32 * 32 : kThreads;
  const int64_t column_blocks = (d + threads - 1) / threads;
  const dim3 grid(static_cast<unsigned>(groups),
                  static_cast<unsigned>(column_blocks < 65535 ? column_blocks : 65535));
  ScatterAddRowsKernel<<<grid, static_cast<unsigned>(threads), 0, stream>>>(src, plan, groups, m,
                                                                             d, dst);
  SHARDLM_CUDA_LAUNCH_CHECK("ScatterAddRowsKernel<<<>>>");
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

bool HalfRowsAligned(int64_t in, const void* w) {
  return in % 8 == 0 && reinterpret_cast<uintptr_t>(w) % 16 == 0;
}

void LaunchHalfGemv(const void* w, HalfKind kind, int64_t out, int64_t in, const float* x,
                    int64_t n, const float* bias, float* y, cudaStream_t stream) {
  if (n < 0 || n > kGemvMaxBatch || !HalfRowsAligned(in, w) ||
      (kind != HalfKind::kBF16 && kind != HalfKind::kF16)) {
    throw std::invalid_argument("LaunchHalfGemv: needs 0 <= n <= " + std::to_string(kGemvMaxBatch) +
                                ", a bf16 / f16 w, in % 8 == 0 and a 16-byte aligned w (n = " +
                                std::to_string(n) + ", in = " + std::to_string(in) + ")");
  }
  if (out == 0 || n == 0) return;
  if (kind == HalfKind::kBF16) {
    LaunchHalfGemvFor<__nv_bfloat16>(w, out, in, x, n, bias, y, stream);
  } else {
    LaunchHalfGemvFor<__half>(w, out, in, x, n, bias, y, stream);
  }
  SHARDLM_CUDA_LAUNCH_CHECK("HalfGemvKernel<<<>>>");
}

void LaunchConvertHalfToF32(const void* src, HalfKind kind, float* dst, int64_t n,
                            cudaStream_t stream) {
  if (kind != HalfKind::kBF16 && kind != HalfKind::kF16) {
    throw std::invalid_argument("LaunchConvertHalfToF32: kind must be kBF16 or kF16");
  }
  if (n == 0) return;
  if (kind == HalfKind::kBF16) {
    ConvertHalfToF32Kernel<<<Blocks(n), kThreads, 0, stream>>>(
        static_cast<const __nv_bfloat16*>(src), dst, n);
  } else {
    ConvertHalfToF32Kernel<<<Blocks(n), kThreads, 0, stream>>>(static_cast<const __half*>(src), dst,
                                                               n);
  }
  SHARDLM_CUDA_LAUNCH_CHECK("ConvertHalfToF32Kernel<<<>>>");
}

// The fused ops of a layer whose Q/K/V and gate/up projections are one GEMM each
// (Backend::RopeWriteKv, Backend::GluMulPacked).
namespace {

// One thread per output element: Q heads into q, K heads into k_cache, V into v_cache. A rotated
// feature reads its pair partner from qkv, which nothing here writes, so threads are independent.
template <typename CacheT>
__global__ void RopeWriteKvKernel(const float* qkv, const int32_t* positions, const float* inv_freq,
                                  const int32_t* rows, float* q, CacheT* k_cache, CacheT* v_cache,
                                  int64_t n, int64_t heads, int64_t kv_heads, int64_t head_dim,
                                  int64_t half, bool interleaved, float attention_factor) {
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
      const float cs = cosf(angle) * attention_factor, sn = sinf(angle) * attention_factor;
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

template <GluKind kAct>
__global__ void GluMulPackedKernel(const float* gate_up, float* y, int64_t n, int64_t inter) {
  SHARDLM_GRID_LOOP(t, n * inter) {
    const int64_t i = t / inter, j = t % inter;
    const float* g = gate_up + i * 2 * inter;
    y[t] = GluTimes<kAct>(g[j], g[inter + j]);
  }
}

}  // namespace

void LaunchRopeWriteKv(const float* qkv, const int32_t* positions, const float* inv_freq,
                       const int32_t* rows, float* q, void* k_cache, void* v_cache,
                       HalfKind cache_kind, int64_t n, int64_t heads, int64_t kv_heads,
                       int64_t head_dim, int64_t half, bool interleaved, float attention_factor,
                       cudaStream_t stream) {
  const int64_t total = n * (heads + 2 * kv_heads) * head_dim;
  if (total == 0) return;
  const unsigned blocks = Blocks(total);
  switch (cache_kind) {
    case HalfKind::kBF16:
      RopeWriteKvKernel<<<blocks, kThreads, 0, stream>>>(
          qkv, positions, inv_freq, rows, q, static_cast<__nv_bfloat16*>(k_cache),
          static_cast<__nv_bfloat16*>(v_cache), n, heads, kv_heads, head_dim, half, interleaved,
          attention_factor);
      break;
    case HalfKind::kF16:
      RopeWriteKvKernel<<<blocks, kThreads, 0, stream>>>(
          qkv, positions, inv_freq, rows, q, static_cast<__half*>(k_cache),
          static_cast<__half*>(v_cache), n, heads, kv_heads, head_dim, half, interleaved,
          attention_factor);
      break;
    default:
      RopeWriteKvKernel<<<blocks, kThreads, 0, stream>>>(
          qkv, positions, inv_freq, rows, q, static_cast<float*>(k_cache),
          static_cast<float*>(v_cache), n, heads, kv_heads, head_dim, half, interleaved,
          attention_factor);
      break;
  }
  SHARDLM_CUDA_LAUNCH_CHECK("RopeWriteKvKernel<<<>>>");
}

void LaunchGluMulPacked(const float* gate_up, float* y, int64_t n, int64_t inter, GluKind act,
                        cudaStream_t stream) {
  if (n * inter == 0) return;
  const unsigned blocks = Blocks(n * inter);
  if (act == GluKind::kGeluTanh) {
    GluMulPackedKernel<GluKind::kGeluTanh><<<blocks, kThreads, 0, stream>>>(gate_up, y, n, inter);
  } else {
    GluMulPackedKernel<GluKind::kSilu><<<blocks, kThreads, 0, stream>>>(gate_up, y, n, inter);
  }
  SHARDLM_CUDA_LAUNCH_CHECK("GluMulPackedKernel<<<>>>");
}

}  // namespace shardlm::cuda
