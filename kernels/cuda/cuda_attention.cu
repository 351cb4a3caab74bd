// Paged GQA attention of the CUDA backend: flash-decoding for decode steps, query tiles for
// prefill and mixed batches, one kernel for both.
//
// A block serves a query tile (decode: one token; prefill: up to `tile_tokens` consecutive tokens
// of one sequence at consecutive positions), every query head of one GQA group that it covers,
// and one chunk of the tile's keys. K/V rows are gathered through the block table into shared
// memory with 16-byte cp.async copies, double-buffered, `keys_per_tile` keys per step, and read
// there by every query row of the block: once per GQA group and per query tile, instead of once
// per query head and token. Each step scores the rows against the staged keys, updates an online
// softmax per row (running max and sum, in the log2 domain) and accumulates P V in registers.
// With one chunk the block writes the output; with several, each writes its partial (m, l, acc)
// and a second pass merges them (log-sum-exp).
//
// The launch configuration depends on the shapes alone (graphs record it once and replay it at
// other context lengths): the number of chunks `splits` is fixed by the host so that batch 1
// fills the device (about two blocks per multiprocessor), and each block derives its chunk from
// the positions on the device: chunk = ceil(span / splits) rounded up to keys_per_tile, where span
// is the tile's key range ([first key of the window, last position]); blocks whose chunk starts
// past the range write an empty partial (l = 0) and exit, and the merge skips those.
//
// Head dims 32, 64, 80, 96, 128 and 256 with 16-byte aligned caches take this path; any other
// head_dim <= 256 takes the general kernel at the end (one block per token and head).
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <atomic>
#include <cfloat>
#include <climits>
#include <cstdint>
#include <stdexcept>
#include <string>

#include "base/check.h"
#include "kernels/cuda/cuda_attention.h"
#include "kernels/cuda/unpack.cuh"

namespace shardlm::cuda {
namespace {

constexpr unsigned kFullMask = 0xffffffffu;
constexpr float kLog2e = 1.4426950408889634f;

__device__ __forceinline__ float WarpSum(float v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(kFullMask, v, o);
  return v;
}
__device__ __forceinline__ float WarpMax(float v) {
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(kFullMask, v, o));
  return v;
}

// ---------------------------------------------------------------------------------------------
// The plan: shapes shared by the host (launch, shared memory size) and the kernels.

constexpr int kFlashThreads = 128;
constexpr int kSmallRows = 16;  // query rows of the decode variant (GQA groups up to 16)
constexpr int kMaxSplits = 64;
constexpr int kFlashDims[] = {32, 64, 80, 96, 128, 256};

constexpr int Pow2Floor(int x) {
  int p = 1;
  while (p * 2 <= x) p *= 2;
  return p;
}
// Query rows of the prefill variant: its accumulators are rows * head_dim / 128 floats a thread,
// at most 64.
constexpr int BigRows(int head_dim) { return 8192 / head_dim < 64 ? 8192 / head_dim : 64; }
// Keys staged per step: about 8 KiB of K (and as much of V) per buffer, a power of two in
// [8, 64] (so that it divides the 128 threads).
constexpr int KeysPerTile(int row_bytes) {
  const int p = Pow2Floor(8192 / row_bytes);
  return p < 8 ? 8 : (p > 64 ? 64 : p);
}
// 16-byte units per staged row: odd, so that the rows read by consecutive lanes fall in
// different banks.
constexpr int StagedStride(int vectors) { return vectors % 2 == 0 ? vectors + 1 : vectors; }

// Dynamic shared memory of a block with `rows` query rows: two stages of K and V, the scaled
// queries [rows][head_dim + 4], the scores / probabilities [rows][keys + 1], and per row the
// running max, sum, rescale factor, position and first visible key.
constexpr size_t FlashSmemBytes(int keys, int stride, int head_dim, int rows) {
  return size_t{4} * keys * stride * 16 + size_t{4} * rows * (head_dim + 4) +
         size_t{4} * rows * (keys + 1) + size_t{4} * 5 * rows;
}

template <typename T, int kD>
struct FlashShape {
  static constexpr int kE = 16 / static_cast<int>(sizeof(T));  // elements per 16-byte vector
  static constexpr int kV = kD / kE;                           // vectors per K/V row
  static constexpr int kStride = StagedStride(kV);
  static constexpr int kTk = KeysPerTile(kD * static_cast<int>(sizeof(T)));
  static constexpr int kQStride = kD + 4;
  static constexpr int kPStride = kTk + 1;
  static_assert(kD % kE == 0 && kFlashThreads % kTk == 0, "unsupported head_dim");
};

struct FlashParams {
  const float* q;
  const void* k_cache;
  const void* v_cache;
  float* out;
  const int32_t* positions;
  const int32_t* seq_index;
  const int32_t* table_begin;
  const int32_t* block_tables;
  const int32_t* tile_starts;  // null: tile t is token t (decode)
  const int32_t* tile_count;
  float* part_acc;  // [n, heads, splits, head_dim]; null when splits == 1
  float* part_m;    // [n, heads, splits], log2 domain
  float* part_l;
  int n, heads, kv_heads, group, heads_per_block, head_parts, rows_cap, splits, block_size, window;
  float scale_log2;  // scale * log2(e): scores in the log2 domain, exp2f for the softmax
};

// 16 bytes global -> shared, asynchronous on sm_80+ (zeros when !valid, reading nothing).
__device__ __forceinline__ void CopyAsync16(uint4* dst, const void* src, bool valid) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  const unsigned s = static_cast<unsigned>(__cvta_generic_to_shared(dst));
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(s), "l"(src),
               "r"(valid ? 16 : 0));
#else
  *dst = valid ? *static_cast<const uint4*>(src) : make_uint4(0, 0, 0, 0);
#endif
}
__device__ __forceinline__ void CopyAsyncCommit() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile("cp.async.commit_group;\n" ::);
#endif
}
__device__ __forceinline__ void CopyAsyncWaitAll() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile("cp.async.wait_group 0;\n" ::: "memory");
#endif
}

__device__ __forceinline__ int FirstKey(int p, int window) {
  return window > 0 ? max(0, p - window + 1) : 0;
}

// Grid: x = query tiles (grid-stride), y = KV head * head_parts + part, z = key chunk.
template <typename T, int kD, int kMaxRows>
__global__ void __launch_bounds__(kFlashThreads) FlashAttentionKernel(FlashParams a) {
  using Shape = FlashShape<T, kD>;
  constexpr int kE = Shape::kE, kV = Shape::kV, kStride = Shape::kStride, kTk = Shape::kTk;
  constexpr int kQS = Shape::kQStride, kPS = Shape::kPStride;
  constexpr int kSlots = (kMaxRows * kV + kFlashThreads - 1) / kFlashThreads;  // P V outputs
  constexpr int kScoreRows = (kMaxRows * kTk + kFlashThreads - 1) / kFlashThreads;
  constexpr int kRowStep = kFlashThreads / kTk;
  constexpr int kLoads = (kTk * kV + kFlashThreads - 1) / kFlashThreads;
  constexpr int kWarps = kFlashThreads / 32;

  extern __shared__ uint4 smem[];
  uint4* staged = smem;  // [stage][K, V][kTk][kStride]
  float* qs = reinterpret_cast<float*>(smem + 4 * kTk * kStride);
  float* ps = qs + a.rows_cap * kQS;
  float* row_m = ps + a.rows_cap * kPS;
  float* row_l = row_m + a.rows_cap;
  float* row_corr = row_l + a.rows_cap;
  int* row_pos = reinterpret_cast<int*>(row_corr + a.rows_cap);
  int* row_first = row_pos + a.rows_cap;

  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int kvh = static_cast<int>(blockIdx.y) / a.head_parts;
  const int part = static_cast<int>(blockIdx.y) % a.head_parts;
  const int h0 = kvh * a.group + part * a.heads_per_block;
  const int gb = min(a.heads_per_block, a.group - part * a.heads_per_block);
  const int split = static_cast<int>(blockIdx.z);
  const int tiles = a.tile_starts == nullptr ? a.n : *a.tile_count;
  const T* kc = static_cast<const T*>(a.k_cache);
  const T* vc = static_cast<const T*>(a.v_cache);
  const int kv_width = a.kv_heads * kD;  // elements per cache row
  const int head_off = kvh * kD;
  const int bs = a.block_size;

  for (int tile = blockIdx.x; tile < tiles; tile += gridDim.x) {
    // The tile's tokens [i0, i1) share a sequence (QueryTilesKernel), at most tile_tokens.
    const int i0 = a.tile_starts == nullptr ? tile : a.tile_starts[tile];
    const int i1 =
        a.tile_starts == nullptr ? tile + 1 : (tile + 1 < tiles ? a.tile_starts[tile + 1] : a.n);
    const int rows = (i1 - i0) * gb;
    int lo = INT_MAX, hi = -1;
    for (int i = i0; i < i1; ++i) {
      const int p = a.positions[i];
      hi = max(hi, p);
      lo = min(lo, FirstKey(p, a.window));
    }
    const int32_t* table = a.block_tables + a.table_begin[a.seq_index[i0]];
    int chunk = (hi - lo + 1 + a.splits - 1) / a.splits;
    chunk = (chunk + kTk - 1) / kTk * kTk;
    const int k_begin = lo + split * chunk;
    const int k_end = min(hi, k_begin + chunk - 1);
    __syncthreads();  // the previous tile's shared memory is no longer read
    if (k_begin > hi) {
      // An empty chunk (a short context): a partial with no weight, which the merge skips.
      if (tid < rows) {
        const int64_t at =
            (static_cast<int64_t>(i0 + tid / gb) * a.heads + h0 + tid % gb) * a.splits + split;
        a.part_m[at] = -INFINITY;
        a.part_l[at] = 0.0f;
      }
      continue;
    }

    // Gathers keys [t0, t0 + kTk) (zeros past k_end) into stage `stage`.
    auto load_tile = [&](int stage, int t0) {
      uint4* kd = staged + stage * 2 * kTk * kStride;
      uint4* vd = kd + kTk * kStride;
#pragma unroll
      for (int u = 0; u < kLoads; ++u) {
        const int idx = tid + u * kFlashThreads;
        if (kTk * kV % kFlashThreads == 0 || idx < kTk * kV) {
          const int j = idx / kV, c = idx % kV;
          const int kp = t0 + j;
          const bool valid = kp <= k_end;
          int64_t off = 0;
          if (valid) {
            const int64_t row = static_cast<int64_t>(table[kp / bs]) * bs + kp % bs;
            off = row * kv_width + head_off + c * kE;
          }
          CopyAsync16(kd + j * kStride + c, kc + off, valid);
          CopyAsync16(vd + j * kStride + c, vc + off, valid);
        }
      }
      CopyAsyncCommit();
    };
    load_tile(0, k_begin);

    for (int e = tid; e < rows * kD; e += kFlashThreads) {
      const int r = e / kD, d = e % kD;
      const int64_t at = (static_cast<int64_t>(i0 + r / gb) * a.heads + h0 + r % gb) * kD + d;
      qs[r * kQS + d] = a.q[at] * a.scale_log2;
    }
    if (tid < rows) {
      const int p = a.positions[i0 + tid / gb];
      row_pos[tid] = p;
      row_first[tid] = FirstKey(p, a.window);
      row_m[tid] = -INFINITY;
      row_l[tid] = 0.0f;
    }
    float acc[kSlots][kE];
#pragma unroll
    for (int u = 0; u < kSlots; ++u) {
#pragma unroll
      for (int e = 0; e < kE; ++e) acc[u][e] = 0.0f;
    }

    const int steps = (k_end - k_begin) / kTk + 1;
    for (int step = 0; step < steps; ++step) {
      const int t0 = k_begin + step * kTk;
      CopyAsyncWaitAll();
      __syncthreads();  // this step's keys are staged; the other stage is free
      if (step + 1 < steps) load_tile((step + 1) & 1, t0 + kTk);
      const uint4* ks = staged + (step & 1) * 2 * kTk * kStride;
      const uint4* vs = ks + kTk * kStride;

      // Scores: thread -> key j, rows r0, r0 + kRowStep, ...
      {
        const int j = tid % kTk;
        const int r0 = tid / kTk;
        float s[kScoreRows];
#pragma unroll
        for (int u = 0; u < kScoreRows; ++u) s[u] = 0.0f;
#pragma unroll 2
        for (int c = 0; c < kV; ++c) {
          float kf[kE];
          Unpack16Bytes(ks[j * kStride + c], static_cast<const T*>(nullptr), kf);
#pragma unroll
          for (int u = 0; u < kScoreRows; ++u) {
            const int r = r0 + u * kRowStep;
            if (r < rows) {
              const float4* qv = reinterpret_cast<const float4*>(qs + r * kQS + c * kE);
#pragma unroll
              for (int e4 = 0; e4 < kE / 4; ++e4) {
                const float4 q4 = qv[e4];
                s[u] += q4.x * kf[4 * e4] + q4.y * kf[4 * e4 + 1] + q4.z * kf[4 * e4 + 2] +
                        q4.w * kf[4 * e4 + 3];
              }
            }
          }
        }
        const int kp = t0 + j;
#pragma unroll
        for (int u = 0; u < kScoreRows; ++u) {
          const int r = r0 + u * kRowStep;
          if (r < rows) {
            const bool visible = kp <= k_end && kp >= row_first[r] && kp <= row_pos[r];
            ps[r * kPS + j] = visible ? s[u] : -INFINITY;
          }
        }
      }
      __syncthreads();

      // Online softmax, one warp per row: rescale factor for the old sum and output, then the
      // probabilities of this step in place of the scores.
      for (int r = warp; r < rows; r += kWarps) {
        float* pr = ps + r * kPS;
        const float v0 = lane < kTk ? pr[lane] : -INFINITY;
        const float v1 = lane + 32 < kTk ? pr[lane + 32] : -INFINITY;
        const float m_old = row_m[r];
        const float m_new = fmaxf(m_old, WarpMax(fmaxf(v0, v1)));
        // No visible key yet: keep every weight 0 (and no inf - inf).
        const float m_use = m_new == -INFINITY ? 0.0f : m_new;
        const float p0 = exp2f(v0 - m_use), p1 = exp2f(v1 - m_use);
        if (lane < kTk) pr[lane] = p0;
        if (lane + 32 < kTk) pr[lane + 32] = p1;
        const float sum = WarpSum(p0 + p1);
        if (lane == 0) {
          const float corr = exp2f(m_old - m_use);
          row_corr[r] = corr;
          row_l[r] = row_l[r] * corr + sum;
          row_m[r] = m_new;
        }
      }
      __syncthreads();

      // acc = acc * corr + P V: thread -> (row, 16-byte column of V) slots.
#pragma unroll
      for (int u = 0; u < kSlots; ++u) {
        const int slot = tid + u * kFlashThreads;
        const int r = slot / kV, c = slot % kV;
        if (r < rows) {
          const float corr = row_corr[r];
#pragma unroll
          for (int e = 0; e < kE; ++e) acc[u][e] *= corr;
          const float* pr = ps + r * kPS;
#pragma unroll 4
          for (int j = 0; j < kTk; ++j) {
            const float p = pr[j];
            float vf[kE];
            Unpack16Bytes(vs[j * kStride + c], static_cast<const T*>(nullptr), vf);
#pragma unroll
            for (int e = 0; e < kE; ++e) acc[u][e] += p * vf[e];
          }
        }
      }
    }

    // row_l / row_m are final (written before the last step's second barrier).
#pragma unroll
    for (int u = 0; u < kSlots; ++u) {
      const int slot = tid + u * kFlashThreads;
      const int r = slot / kV, c = slot % kV;
      if (r < rows) {
        const int64_t head_row = static_cast<int64_t>(i0 + r / gb) * a.heads + h0 + r % gb;
        if (a.splits == 1) {
          // One chunk holds every visible key, so l >= 1 (the maximum's own weight).
          const float inv_l = 1.0f / row_l[r];
          float* o = a.out + head_row * kD + c * kE;
#pragma unroll
          for (int e = 0; e < kE; ++e) o[e] = acc[u][e] * inv_l;
        } else {
          float* o = a.part_acc + (head_row * a.splits + split) * kD + c * kE;
#pragma unroll
          for (int e = 0; e < kE; ++e) o[e] = acc[u][e];
        }
      }
    }
    if (a.splits > 1 && tid < rows) {
      const int64_t at =
          (static_cast<int64_t>(i0 + tid / gb) * a.heads + h0 + tid % gb) * a.splits + split;
      a.part_m[at] = row_m[tid];
      a.part_l[at] = row_l[tid];
    }
  }
}

// out row (token, head) = sum_s acc_s 2^(m_s - M) / sum_s l_s 2^(m_s - M), M = max m_s over the
// chunks that saw a key (l_s > 0; the others wrote no acc). One block per row.
__global__ void MergeChunksKernel(const float* part_acc, const float* part_m, const float* part_l,
                                  int splits, int head_dim, float* out) {
  const int64_t row = blockIdx.x;
  const float* m = part_m + row * splits;
  const float* l = part_l + row * splits;
  float m_max = -INFINITY;
  for (int s = 0; s < splits; ++s) {
    if (l[s] > 0.0f) m_max = fmaxf(m_max, m[s]);
  }
  float total = 0.0f;
  for (int s = 0; s < splits; ++s) {
    if (l[s] > 0.0f) total += l[s] * exp2f(m[s] - m_max);
  }
  const float inv = total > 0.0f ? 1.0f / total : 0.0f;
  for (int d = threadIdx.x; d < head_dim; d += blockDim.x) {
    float o = 0.0f;
    for (int s = 0; s < splits; ++s) {
      if (l[s] > 0.0f) o += part_acc[(row * splits + s) * head_dim + d] * exp2f(m[s] - m_max);
    }
    out[row * head_dim + d] = o * inv;
  }
}

// Query tiles for the tiled variant, in one block: token i starts a tile when it is the first,
// changes sequence, does not follow the previous token's position, or sits at a multiple of
// tile_tokens; a tile is then at most tile_tokens consecutive tokens of one sequence. Writes the
// starts in order and their count.
constexpr int kScanThreads = 1024;

__global__ void __launch_bounds__(kScanThreads)
    QueryTilesKernel(const int32_t* seq, const int32_t* pos, int n, int tile_tokens,
                     int32_t* starts, int32_t* count) {
  __shared__ int warp_total[kScanThreads / 32];
  __shared__ int carry;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  if (threadIdx.x == 0) carry = 0;
  __syncthreads();
  for (int base = 0; base < n; base += kScanThreads) {
    const int i = base + static_cast<int>(threadIdx.x);
    int flag = 0;
    if (i < n) {
      const int p = pos[i];
      flag = i == 0 || seq[i] != seq[i - 1] || p != pos[i - 1] + 1 || p % tile_tokens == 0;
    }
    int x = flag;  // inclusive scan within the warp
    for (int o = 1; o < 32; o <<= 1) {
      const int y = __shfl_up_sync(kFullMask, x, o);
      if (lane >= o) x += y;
    }
    if (lane == 31) warp_total[warp] = x;
    __syncthreads();
    if (warp == 0) {
      int t = warp_total[lane];
      for (int o = 1; o < 32; o <<= 1) {
        const int y = __shfl_up_sync(kFullMask, t, o);
        if (lane >= o) t += y;
      }
      warp_total[lane] = t;
    }
    __syncthreads();
    const int before = (warp > 0 ? warp_total[warp - 1] : 0) + x - flag;
    if (flag) starts[carry + before] = i;
    const int total = warp_total[kScanThreads / 32 - 1];
    __syncthreads();  // every thread has read carry and warp_total
    if (threadIdx.x == 0) carry += total;
    __syncthreads();
  }
  if (threadIdx.x == 0) *count = carry;
}

// ---------------------------------------------------------------------------------------------
// The general kernel (head dims outside kFlashDims, unaligned caches): one block of kAttnWarps
// warps per (token i, query head h). The warps take the keys in turn; in a warp, lane l holds
// features l, l + 32, ... of q and of its running output, with an online softmax per warp; the
// warps merge at the end.

__device__ __forceinline__ float Load(const float* p) { return *p; }
__device__ __forceinline__ float Load(const __nv_bfloat16* p) { return __bfloat162float(*p); }
__device__ __forceinline__ float Load(const __half* p) { return __half2float(*p); }

// Cache row of key position j of query token i.
__device__ int64_t KeyRow(const AttentionArgs& a, int64_t i, int64_t j) {
  const int32_t* table = a.block_tables + a.table_begin[a.seq_index[i]];
  return static_cast<int64_t>(table[j / a.block_size]) * a.block_size + j % a.block_size;
}

constexpr int kAttnWarps = 4;
constexpr int kMaxPerLane = 8;  // head_dim <= 256

template <typename CacheT, int kPerLane>
__global__ void __launch_bounds__(kAttnWarps * 32) GeneralAttentionKernel(AttentionArgs a) {
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

template <typename CacheT>
void LaunchGeneralFor(const AttentionArgs& a, cudaStream_t stream) {
  const unsigned blocks = static_cast<unsigned>(a.n * a.heads);
  const int per_lane = static_cast<int>((a.head_dim + 31) / 32);
  constexpr unsigned kBlock = kAttnWarps * 32;
  switch (per_lane) {
    case 1:
      GeneralAttentionKernel<CacheT, 1><<<blocks, kBlock, 0, stream>>>(a);
      break;
    case 2:
      GeneralAttentionKernel<CacheT, 2><<<blocks, kBlock, 0, stream>>>(a);
      break;
    case 3:
      GeneralAttentionKernel<CacheT, 3><<<blocks, kBlock, 0, stream>>>(a);
      break;
    case 4:
      GeneralAttentionKernel<CacheT, 4><<<blocks, kBlock, 0, stream>>>(a);
      break;
    case 5:
    case 6:
      GeneralAttentionKernel<CacheT, 6><<<blocks, kBlock, 0, stream>>>(a);
      break;
    default:
      GeneralAttentionKernel<CacheT, kMaxPerLane><<<blocks, kBlock, 0, stream>>>(a);
      break;
  }
  SHARDLM_CUDA_LAUNCH_CHECK("GeneralAttentionKernel<<<>>>");
}

// ---------------------------------------------------------------------------------------------
// Host side.

int ElementBytes(HalfKind kind) { return kind == HalfKind::kF32 ? 4 : 2; }

bool IsFlashDim(int64_t d) {
  for (int f : kFlashDims) {
    if (d == f) return true;
  }
  return false;
}

// Multiprocessors of the current device, asked once per device.
int SmCount() {
  constexpr int kMaxDevices = 64;
  static std::atomic<int> cache[kMaxDevices];  // zero-initialized: not asked yet
  int device = 0;
  SHARDLM_CUDA_CHECK(cudaGetDevice(&device));
  if (device >= 0 && device < kMaxDevices) {
    if (const int known = cache[device].load(std::memory_order_relaxed); known > 0) return known;
  }
  int sms = 0;
  SHARDLM_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device));
  if (device >= 0 && device < kMaxDevices) cache[device].store(sms, std::memory_order_relaxed);
  return sms;
}

bool UsesSmallVariant(const AttentionPlan& p) {
  return !p.tiled && p.heads_per_block <= kSmallRows;
}

template <typename T, int kD, int kRows>
void LaunchFlash(const FlashParams& f, const AttentionPlan& p, cudaStream_t stream) {
  using Shape = FlashShape<T, kD>;
  auto* kernel = FlashAttentionKernel<T, kD, kRows>;
  // Over 48 KiB needs an opt-in, per device: set once (at the first, eager, call of a shape,
  // before any capture), to the most this variant ever asks for.
  const size_t max_smem = FlashSmemBytes(Shape::kTk, Shape::kStride, kD, kRows);
  static std::atomic<uint64_t> opted_in{0};  // bit d: done on device d (< 64)
  if (max_smem > 48 * 1024) {
    int device = 0;
    SHARDLM_CUDA_CHECK(cudaGetDevice(&device));
    const uint64_t bit = device < 64 ? uint64_t{1} << device : 0;
    if (bit == 0 || (opted_in.load(std::memory_order_acquire) & bit) == 0) {
      SHARDLM_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                              static_cast<int>(max_smem)));
      opted_in.fetch_or(bit, std::memory_order_release);
    }
  }
  const dim3 grid(static_cast<unsigned>(p.grid_x), static_cast<unsigned>(f.kv_heads * p.head_parts),
                  static_cast<unsigned>(p.splits));
  kernel<<<grid, kFlashThreads, p.smem_bytes, stream>>>(f);
  SHARDLM_CUDA_LAUNCH_CHECK("FlashAttentionKernel<<<>>>");
}

template <typename T, int kD>
void LaunchFlashDim(const FlashParams& f, const AttentionPlan& p, cudaStream_t stream) {
  if (UsesSmallVariant(p)) {
    LaunchFlash<T, kD, kSmallRows>(f, p, stream);
  } else {
    LaunchFlash<T, kD, BigRows(kD)>(f, p, stream);
  }
}

template <typename T>
void LaunchFlashFor(int head_dim, const FlashParams& f, const AttentionPlan& p,
                    cudaStream_t stream) {
  switch (head_dim) {
    case 32:
      LaunchFlashDim<T, 32>(f, p, stream);
      break;
    case 64:
      LaunchFlashDim<T, 64>(f, p, stream);
      break;
    case 80:
      LaunchFlashDim<T, 80>(f, p, stream);
      break;
    case 96:
      LaunchFlashDim<T, 96>(f, p, stream);
      break;
    case 128:
      LaunchFlashDim<T, 128>(f, p, stream);
      break;
    default:
      LaunchFlashDim<T, 256>(f, p, stream);
      break;
  }
}

}  // namespace

AttentionPlan PlanAttention(const AttentionArgs& a, int sm_count) {
  AttentionPlan p;
  const auto aligned = [](const void* ptr) { return reinterpret_cast<uintptr_t>(ptr) % 16 == 0; };
  p.flash = IsFlashDim(a.head_dim) && aligned(a.k_cache) && aligned(a.v_cache) && a.n > 0 &&
            a.kv_heads > 0 && a.heads % a.kv_heads == 0;
  if (!p.flash) return p;
  const int d = static_cast<int>(a.head_dim);
  const int group = static_cast<int>(a.heads / a.kv_heads);
  const int big = BigRows(d);
  const int64_t seqs = std::max<int64_t>(a.num_seqs, 1);
  // About one token per sequence: decode (a block per token); else query tiles.
  p.tiled = a.n >= 2 * seqs;
  if (p.tiled) {
    p.heads_per_block = std::min(group, big);
    p.tile_tokens = std::max(1, big / p.heads_per_block);
  } else {
    p.heads_per_block = group <= kSmallRows ? group : std::min(group, big);
    p.tile_tokens = 1;
  }
  p.head_parts = (group + p.heads_per_block - 1) / p.heads_per_block;
  // Tiles: a contiguous run of L tokens makes at most ceil(L / tile_tokens) + 1 of them (they
  // start at multiples of tile_tokens); more (scattered positions) are served grid-stride.
  const int64_t tiles_bound =
      p.tiled ? std::min<int64_t>(a.n, (a.n + p.tile_tokens - 1) / p.tile_tokens + 2 * seqs) : a.n;
  p.grid_x = static_cast<int>(tiles_bound);
  const int64_t base = tiles_bound * a.kv_heads * p.head_parts;
  const int64_t sms = std::max(sm_count, 1);
  p.splits = base >= sms
                 ? 1
                 : static_cast<int>(std::min<int64_t>(kMaxSplits, (2 * sms + base - 1) / base));
  const int row_bytes = d * ElementBytes(a.cache_kind);
  p.keys_per_tile = KeysPerTile(row_bytes);
  const int stride = StagedStride(row_bytes / 16);
  p.smem_bytes = FlashSmemBytes(p.keys_per_tile, stride, d, p.tile_tokens * p.heads_per_block);
  size_t ws = 0;
  if (p.splits > 1) {
    ws += sizeof(float) * static_cast<size_t>(a.n * a.heads * p.splits) * (d + 2);
  }
  if (p.tiled) ws += sizeof(int32_t) * static_cast<size_t>(a.n + 1);
  p.workspace_bytes = ws;
  return p;
}

size_t AttentionWorkspaceBytes(const AttentionArgs& args) {
  if (args.n * args.heads == 0) return 0;
  return PlanAttention(args, SmCount()).workspace_bytes;
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
  // 32-bit index math in the kernels: token, head and cache-row-element counts.
  if (args.n * args.heads > INT_MAX || args.kv_heads * args.head_dim > INT_MAX ||
      args.block_size > INT_MAX) {
    throw std::invalid_argument(
        "PagedAttention: n * heads = " + std::to_string(args.n * args.heads) +
        " or a cache row is over the CUDA kernels' 32-bit limit");
  }
  const AttentionPlan p = PlanAttention(args, SmCount());
  if (!p.flash) {
    switch (args.cache_kind) {
      case HalfKind::kBF16:
        LaunchGeneralFor<__nv_bfloat16>(args, stream);
        break;
      case HalfKind::kF16:
        LaunchGeneralFor<__half>(args, stream);
        break;
      default:
        LaunchGeneralFor<float>(args, stream);
        break;
    }
    return;
  }
  if (args.workspace_bytes < p.workspace_bytes ||
      (p.workspace_bytes > 0 && args.workspace == nullptr)) {
    throw std::invalid_argument("PagedAttention: workspace of " +
                                std::to_string(args.workspace_bytes) + " bytes, needs " +
                                std::to_string(p.workspace_bytes));
  }
  if (static_cast<int64_t>(args.kv_heads) * p.head_parts > 65535) {
    throw std::invalid_argument("PagedAttention: kv_heads " + std::to_string(args.kv_heads) +
                                " is over the CUDA grid limit");
  }
  const int64_t rows = args.n * args.heads;
  FlashParams f{};
  f.q = args.q;
  f.k_cache = args.k_cache;
  f.v_cache = args.v_cache;
  f.out = args.out;
  f.positions = args.positions;
  f.seq_index = args.seq_index;
  f.table_begin = args.table_begin;
  f.block_tables = args.block_tables;
  f.n = static_cast<int>(args.n);
  f.heads = static_cast<int>(args.heads);
  f.kv_heads = static_cast<int>(args.kv_heads);
  f.group = static_cast<int>(args.heads / args.kv_heads);
  f.heads_per_block = p.heads_per_block;
  f.head_parts = p.head_parts;
  f.rows_cap = p.tile_tokens * p.heads_per_block;
  f.splits = p.splits;
  f.block_size = static_cast<int>(args.block_size);
  f.window = static_cast<int>(std::min<int64_t>(args.window, INT_MAX));
  f.scale_log2 = args.scale * kLog2e;
  char* ws = static_cast<char*>(args.workspace);
  if (p.splits > 1) {
    f.part_acc = reinterpret_cast<float*>(ws);
    f.part_m = f.part_acc + rows * p.splits * args.head_dim;
    f.part_l = f.part_m + rows * p.splits;
    ws = reinterpret_cast<char*>(f.part_l + rows * p.splits);
  }
  if (p.tiled) {
    f.tile_starts = reinterpret_cast<int32_t*>(ws);
    f.tile_count = f.tile_starts + args.n;
    QueryTilesKernel<<<1, kScanThreads, 0, stream>>>(
        args.seq_index, args.positions, f.n, p.tile_tokens, const_cast<int32_t*>(f.tile_starts),
        const_cast<int32_t*>(f.tile_count));
    SHARDLM_CUDA_LAUNCH_CHECK("QueryTilesKernel<<<>>>");
  }
  const int d = static_cast<int>(args.head_dim);
  switch (args.cache_kind) {
    case HalfKind::kBF16:
      LaunchFlashFor<__nv_bfloat16>(d, f, p, stream);
      break;
    case HalfKind::kF16:
      LaunchFlashFor<__half>(d, f, p, stream);
      break;
    default:
      LaunchFlashFor<float>(d, f, p, stream);
      break;
  }
  if (p.splits > 1) {
    MergeChunksKernel<<<static_cast<unsigned>(rows), 128, 0, stream>>>(
        f.part_acc, f.part_m, f.part_l, p.splits, d, args.out);
    SHARDLM_CUDA_LAUNCH_CHECK("MergeChunksKernel<<<>>>");
  }
}

}  // namespace shardlm::cuda
