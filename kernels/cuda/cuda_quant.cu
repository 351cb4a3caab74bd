// The CUDA kernels over ggml block-quantized weights (cuda_quant.h): a fused dequantize + dot
// GEMV for decode, a tiled matmul for batches (quantized and 16-bit weights), a dequantization
// to f32 / f16 / bf16, and the gather of dequantized f32 rows of a quantized embedding table.
//
// All walk a row of W in "pieces": a few words of one block that a thread loads and decodes
// together (Piece<K>, cuda_quant_blocks.cuh): 8 elements of a Q8_0 block, 16 of a Q4_0 / Q4_1 /
// Q5_0 / Q5_1 block, 32 of a K super-block (and 8 of a 16-bit row for the tiled matmul:
// HalfPiece). A piece is decoded four
// elements ("a quad", contiguous in the row) at a time, so that each quad meets one float4 of x.
//
// GEMV: a block of up to 128 threads computes kRows = 4 output rows for all N <= 8 activation
// rows. Its threads stride over the pieces of the row; each thread loads the piece of all kRows
// rows first (the loads of the four rows in flight together), then for each quad loads the
// float4 of x of every activation row once and uses it for the four weight rows, keeping
// kRows x N f32 accumulators. The weights are read once from HBM (16-byte loads for the 16-byte
// aligned K super-blocks of Q4_K / Q5_K; 4-byte loads, funnel-shifted where a block is only
// 2-byte aligned, for the others); x is read through L1 and reused four times from registers.
// The block then reduces the kRows x N partial sums through shared memory (one warp per output
// sum). Quantized integers become floats by the 2^23 trick (a byte permute puts each into the
// mantissa of 2^23, a subtraction removes it), exact and cheaper than I2F. n > 8 runs in chunks
// of 8.
//
// Tiled matmul: see TiledMatmulKernel (32 weight rows x up to 32 activation rows per block, x in
// shared memory as f32, each weight dequantized once per block into registers).
//
// Dequantize: one thread per piece of a row, grid.y over rows; every element is computed with
// the same f32 operations as the CPU reference (no FMA contraction: __fmul_rn / __fadd_rn), then
// stored as f32 or rounded to nearest even. The embedding gather is the same walk over the rows
// that the ids name, with f32 output.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <climits>
#include <cstdint>
#include <stdexcept>
#include <string>

#include "base/check.h"
#include "kernels/cuda/cuda_quant.h"
#include "kernels/cuda/cuda_quant_blocks.cuh"

namespace shardlm::cuda {
namespace {

constexpr int kRows = 4;          // output rows per GEMV block
constexpr int kMaxThreads = 128;  // threads per GEMV / dequantize block
constexpr int kMaxBatch = 8;      // activation rows per GEMV launch

// ---- Kernels.

__device__ __forceinline__ float WarpSum(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

__device__ __forceinline__ float4 LoadX4(const float* p, bool aligned) {
  if (aligned) return __ldg(reinterpret_cast<const float4*>(p));
  return make_float4(__ldg(p), __ldg(p + 1), __ldg(p + 2), __ldg(p + 3));
}

struct GemvArgs {
  const uint8_t* w;
  int64_t rows;
  int64_t row_bytes;
  int pieces;  // per row
  const float* x;
  int64_t cols;
  float* y;
  bool w_aligned;  // w 16-byte aligned (then so is every row of a K type)
  bool x_aligned;  // x 16-byte aligned (then so is every quad)
};

// y[j, row0 + r] for r < kRows, j < N; blockDim.x a multiple of 32, at most kMaxThreads.
template <QuantKind K, int N>
__global__ void __launch_bounds__(kMaxThreads) QuantGemvKernel(const GemvArgs a) {
  using P = Piece<K>;
  __shared__ float partial[kRows * N][kMaxThreads];
  const int64_t row0 = static_cast<int64_t>(blockIdx.x) * kRows;
  // Rows past the end repeat the last one; their sums are not stored.
  const uint8_t* wr[kRows];
#pragma unroll
  for (int r = 0; r < kRows; ++r) {
    const int64_t row = row0 + r < a.rows ? row0 + r : a.rows - 1;
    wr[r] = a.w + row * a.row_bytes;
  }

  float acc[kRows][N];
#pragma unroll
  for (int r = 0; r < kRows; ++r) {
#pragma unroll
    for (int j = 0; j < N; ++j) acc[r][j] = 0.0f;
  }

  for (int p = threadIdx.x; p < a.pieces; p += blockDim.x) {
    typename P::Raw raw[kRows];
#pragma unroll
    for (int r = 0; r < kRows; ++r) raw[r] = P::Load(wr[r], p, a.w_aligned);
#pragma unroll
    for (int quad = 0; quad < P::kQuads; ++quad) {
      const float* xq = a.x + P::QuadElem(p, quad);
      float4 xv[N];
#pragma unroll
      for (int j = 0; j < N; ++j) xv[j] = LoadX4(xq + j * a.cols, a.x_aligned);
#pragma unroll
      for (int r = 0; r < kRows; ++r) {
        float v[4];
        P::template Quad<false>(raw[r], quad, v);
#pragma unroll
        for (int j = 0; j < N; ++j) {
          float s = acc[r][j];
          s = fmaf(v[0], xv[j].x, s);
          s = fmaf(v[1], xv[j].y, s);
          s = fmaf(v[2], xv[j].z, s);
          s = fmaf(v[3], xv[j].w, s);
          acc[r][j] = s;
        }
      }
    }
  }

  // Sum each of the kRows x N accumulators over the block: one warp per output.
#pragma unroll
  for (int r = 0; r < kRows; ++r) {
#pragma unroll
    for (int j = 0; j < N; ++j) partial[r * N + j][threadIdx.x] = acc[r][j];
  }
  __syncthreads();
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int warps = blockDim.x >> 5;
  for (int o = warp; o < kRows * N; o += warps) {
    float s = 0.0f;
    for (int t = lane; t < static_cast<int>(blockDim.x); t += 32) s += partial[o][t];
    s = WarpSum(s);
    const int64_t row = row0 + o / N;
    if (lane == 0 && row < a.rows) a.y[(o % N) * a.rows + row] = s;
  }
}

// ---- Tiled matmul (batches: n > 8 quantized, n > 4 16-bit).
//
// A block of kTileThreads = 128 threads (4 warps) computes y for kTileRows = 32 weight rows
// (blockIdx.x) and BN activation rows (blockIdx.y; nb <= BN of them real). Lane l of warp w works
// on the weight rows 8w + l / 8 and 8w + l / 8 + 4 and on every 8th piece (from l % 8) of each
// step of kTileCols = 256 columns (one K super-block; 8 lanes cover the step of a row in 16-byte
// loads side by side). Per step: each lane issues the loads of its pieces of both rows, the block
// stages x[j0 .. j0+nb, step] in shared memory as f32 (so the weight loads are in flight while x
// arrives), then each lane dequantizes its pieces a quad at a time into registers and applies each
// quad to the float4 of x of every activation row: a float4 read from shared memory feeds 8 FMAs,
// each dequantized weight BN FMAs, and each weight is read and dequantized once per block. The 8
// lanes of a row then sum their 2 x BN partial sums by shuffles. f32 throughout; the weights never
// exist in any other form than their blocks and a few registers.
constexpr int kTileThreads = 128;
constexpr int kTileLanesPerRow = 8;
constexpr int kTileRowsPerLane = 2;
constexpr int kTileRows = kTileThreads / kTileLanesPerRow * kTileRowsPerLane;  // 32
constexpr int kTileCols = 256;
constexpr int kTileBatch = 32;  // BN for n > 16; 16 below (fewer registers, less padding)
constexpr int kTileGroup = 4;   // activation rows are skipped (when j >= nb) in groups of 4

// Where column c (a multiple of 4) of a step lives in a staged x row: quads permuted within each
// 32 columns by an XOR with kSwizzle[(c / 32) % 8]. The 8 lanes of a weight row read 8 quads of
// one x row at once; for every layout here (Q8_0, Q4_0 / Q4_1 / Q5_0 / Q5_1, Q4_K / Q5_K, Q6_K,
// 16-bit) and
// each of their quads, this table puts those 8 quads in 8 different groups of 4 banks (one
// shared-memory wavefront instead of 2 to 4; found and checked by enumerating the layouts'
// QuadElem). Being an XOR inside 32 columns, it is a permutation: no padding.
__device__ __forceinline__ int TileSwizzle(int c) {
  constexpr uint32_t kSwizzle = 0u | 1u << 3 | 5u << 6 | 4u << 9 | 3u << 12 | 2u << 15 | 6u << 18 |
                                7u << 21;  // {0, 1, 5, 4, 3, 2, 6, 7}
  return c ^ static_cast<int>(((kSwizzle >> (3 * ((c >> 5) & 7))) & 7u) << 2);
}

// bf16 / f16 rows as pieces of 8 elements (one 16-byte load; rows 16-byte aligned), so that the
// tiled matmul serves 16-bit weights too; the values become f32 exactly.
template <bool kBf16>
struct HalfPiece {
  static constexpr int kBlockElems = 8, kPieceElems = 8, kQuads = 2;
  struct Raw {
    uint4 v;
  };
  __device__ static Raw Load(const uint8_t* row, int p, bool /*aligned16*/) {
    return {__ldg(reinterpret_cast<const uint4*>(row) + p)};
  }
  __device__ static int QuadElem(int p, int quad) { return 8 * p + 4 * quad; }
  __device__ static float Value(uint32_t bits) {  // the 16 bits in the low half of `bits`
    return kBf16 ? __uint_as_float(bits << 16) : HalfBits(bits);
  }
  template <bool /*kExact: always exact*/>
  __device__ static void Quad(const Raw& r, int quad, float (&v)[4]) {
    const uint32_t lo = quad == 0 ? r.v.x : r.v.z, hi = quad == 0 ? r.v.y : r.v.w;
    v[0] = Value(lo & 0xffffu);
    v[1] = Value(lo >> 16);
    v[2] = Value(hi & 0xffffu);
    v[3] = Value(hi >> 16);
  }
};

struct TileArgs {
  const uint8_t* w;
  int64_t rows;
  int64_t row_bytes;
  const float* x;
  int64_t cols;
  int64_t n;
  const float* bias;  // nullptr: none
  float* y;
  bool w_aligned;  // w 16-byte aligned
  bool x_aligned;  // x 16-byte aligned (then so is every quad)
};

template <class P, int BN>
__global__ void __launch_bounds__(kTileThreads) TiledMatmulKernel(const TileArgs a) {
  constexpr int kR = kTileRowsPerLane;
  constexpr int kStepPieces = kTileCols / P::kPieceElems;
  constexpr int kPerLane = kStepPieces / kTileLanesPerRow;
  constexpr int kStepQuads = kTileCols / 4;
  static_assert(kStepPieces % kTileLanesPerRow == 0 && kTileCols % P::kBlockElems == 0,
                "a step must hold whole blocks, 8 lanes' worth of pieces");
  static_assert(BN % kTileGroup == 0, "BN must be a multiple of kTileGroup");
  __shared__ __align__(16) float xs[BN][kTileCols];

  const int lane = threadIdx.x & 31, g = lane % kTileLanesPerRow;
  const int64_t row0 = static_cast<int64_t>(blockIdx.x) * kTileRows + (threadIdx.x >> 5) * 8 +
                       lane / kTileLanesPerRow;
  // Rows past the end repeat the last one; their sums are not stored.
  const uint8_t* wr[kR];
#pragma unroll
  for (int r = 0; r < kR; ++r) {
    const int64_t row = row0 + 4 * r < a.rows ? row0 + 4 * r : a.rows - 1;
    wr[r] = a.w + row * a.row_bytes;
  }
  const int64_t j0 = static_cast<int64_t>(blockIdx.y) * BN;
  const int nb = static_cast<int>(a.n - j0 < BN ? a.n - j0 : BN);
  // x rows nb .. nb4 are staged as zeros, so that groups of kTileGroup rows need no test inside.
  const int nb4 = (nb + kTileGroup - 1) / kTileGroup * kTileGroup;

  float acc[kR][BN];
#pragma unroll
  for (int r = 0; r < kR; ++r) {
#pragma unroll
    for (int j = 0; j < BN; ++j) acc[r][j] = 0.0f;
  }

  for (int64_t k0 = 0; k0 < a.cols; k0 += kTileCols) {
    // The last step of a row of 32-element blocks or 16-bit values may be short (a multiple of
    // its block).
    const int step = static_cast<int>(a.cols - k0 < kTileCols ? a.cols - k0 : kTileCols);
    const int step_pieces = step / P::kPieceElems;
    const int p0 = static_cast<int>(k0 / P::kPieceElems);
    typename P::Raw raw[kR][kPerLane];
#pragma unroll
    for (int i = 0; i < kPerLane; ++i) {
      if (g + kTileLanesPerRow * i < step_pieces) {
#pragma unroll
        for (int r = 0; r < kR; ++r) {
          raw[r][i] = P::Load(wr[r], p0 + g + kTileLanesPerRow * i, a.w_aligned);
        }
      }
    }

    __syncthreads();  // every warp is done with the previous step's x
    const int step_quads = step / 4;
    for (int t = threadIdx.x; t < nb4 * kStepQuads; t += kTileThreads) {
      const int j = t / kStepQuads, q = t % kStepQuads;
      if (q < step_quads) {
        const float4 v = j < nb ? LoadX4(a.x + (j0 + j) * a.cols + k0 + 4 * q, a.x_aligned)
                                : make_float4(0.0f, 0.0f, 0.0f, 0.0f);
        *reinterpret_cast<float4*>(&xs[j][TileSwizzle(4 * q)]) = v;
      }
    }
    __syncthreads();

#pragma unroll
    for (int i = 0; i < kPerLane; ++i) {
      const int p = p0 + g + kTileLanesPerRow * i;
      if (g + kTileLanesPerRow * i >= step_pieces) continue;
#pragma unroll
      for (int quad = 0; quad < P::kQuads; ++quad) {
        const int s = TileSwizzle(P::QuadElem(p, quad) - static_cast<int>(k0));
        float v[kR][4];
#pragma unroll
        for (int r = 0; r < kR; ++r) P::template Quad<false>(raw[r][i], quad, v[r]);
#pragma unroll
        for (int jg = 0; jg < BN; jg += kTileGroup) {
          if (jg >= nb4) break;  // uniform over the block
#pragma unroll
          for (int j = jg; j < jg + kTileGroup; ++j) {
            const float4 xv = *reinterpret_cast<const float4*>(&xs[j][s]);
#pragma unroll
            for (int r = 0; r < kR; ++r) {
              float sum = acc[r][j];
              sum = fmaf(v[r][0], xv.x, sum);
              sum = fmaf(v[r][1], xv.y, sum);
              sum = fmaf(v[r][2], xv.z, sum);
              sum = fmaf(v[r][3], xv.w, sum);
              acc[r][j] = sum;
            }
          }
        }
      }
    }
  }

  // The 8 lanes of a row hold partial sums over their pieces: a butterfly gives each the total.
#pragma unroll
  for (int r = 0; r < kR; ++r) {
#pragma unroll
    for (int j = 0; j < BN; ++j) {
      if (j >= nb) break;  // uniform over the block
      float sum = acc[r][j];
#pragma unroll
      for (int o = 1; o < kTileLanesPerRow; o <<= 1) sum += __shfl_xor_sync(0xffffffffu, sum, o);
      acc[r][j] = sum;
    }
  }
  // Lane g stores the activation rows j = g (mod 8).
#pragma unroll
  for (int r = 0; r < kR; ++r) {
    const int64_t row = row0 + 4 * r;
    if (row >= a.rows) continue;
    const float b = a.bias != nullptr ? a.bias[row] : 0.0f;
#pragma unroll
    for (int j = 0; j < BN; ++j) {
      if (j % kTileLanesPerRow == g && j < nb) a.y[(j0 + j) * a.rows + row] = acc[r][j] + b;
    }
  }
}

// ---- Dequantization (the large-batch path: blocks of rows to f32 for cuBLAS SGEMM).

struct DequantArgs {
  const uint8_t* w;
  int64_t rows;
  int64_t row_bytes;
  int pieces;
  int64_t cols;
  void* out;
  bool w_aligned;
  bool out_aligned;  // out 16-byte (f32) / 8-byte (16-bit) aligned (then so is every quad)
};

// Stores the quad v at `o` (element index) of out in kOut's format, each value rounded to nearest
// even for 16 bits.
template <HalfKind kOut>
__device__ __forceinline__ void StoreQuad(void* out, int64_t o, const float (&v)[4], bool aligned) {
  if constexpr (kOut == HalfKind::kF32) {
    float* f = static_cast<float*>(out) + o;
    if (aligned) {
      *reinterpret_cast<float4*>(f) = make_float4(v[0], v[1], v[2], v[3]);
    } else {
#pragma unroll
      for (int i = 0; i < 4; ++i) f[i] = v[i];
    }
  } else {
    uint32_t h[4];
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      h[i] = kOut == HalfKind::kBF16 ? __bfloat16_as_ushort(__float2bfloat16_rn(v[i]))
                                     : __half_as_ushort(__float2half_rn(v[i]));
    }
    uint16_t* p = static_cast<uint16_t*>(out) + o;
    if (aligned) {
      *reinterpret_cast<uint2*>(p) = make_uint2(h[0] | (h[1] << 16), h[2] | (h[3] << 16));
    } else {
#pragma unroll
      for (int i = 0; i < 4; ++i) p[i] = static_cast<uint16_t>(h[i]);
    }
  }
}

// Piece blockIdx.x * blockDim.x + threadIdx.x of rows blockIdx.y, + gridDim.y, ...
template <QuantKind K, HalfKind kOut>
__global__ void __launch_bounds__(kMaxThreads) DequantizeKernel(const DequantArgs a) {
  using P = Piece<K>;
  const int p = static_cast<int>(blockIdx.x * blockDim.x + threadIdx.x);
  if (p >= a.pieces) return;
  for (int64_t r = blockIdx.y; r < a.rows; r += gridDim.y) {
    const typename P::Raw raw = P::Load(a.w + r * a.row_bytes, p, a.w_aligned);
#pragma unroll
    for (int quad = 0; quad < P::kQuads; ++quad) {
      float v[4];
      P::template Quad<true>(raw, quad, v);
      StoreQuad<kOut>(a.out, r * a.cols + P::QuadElem(p, quad), v, a.out_aligned);
    }
  }
}

struct GatherArgs {
  const uint8_t* w;
  int64_t vocab;
  int64_t row_bytes;
  int pieces;
  int64_t cols;
  const int32_t* ids;
  int64_t n;
  float* y;
  bool w_aligned;
  bool y_aligned;  // y 16-byte aligned (then so is every quad: cols is a multiple of 32)
};

// Piece blockIdx.x * blockDim.x + threadIdx.x of output rows blockIdx.y, + gridDim.y, ...: the
// piece of table row ids[i], or zeros for an id outside the table (-1: another shard's token).
template <QuantKind K>
__global__ void __launch_bounds__(kMaxThreads) GatherRowsKernel(const GatherArgs a) {
  using P = Piece<K>;
  const int p = static_cast<int>(blockIdx.x * blockDim.x + threadIdx.x);
  if (p >= a.pieces) return;
  for (int64_t i = blockIdx.y; i < a.n; i += gridDim.y) {
    const int32_t id = a.ids[i];
    float* out_row = a.y + i * a.cols;
    const bool inside = id >= 0 && id < a.vocab;
    typename P::Raw raw;
    if (inside) raw = P::Load(a.w + static_cast<int64_t>(id) * a.row_bytes, p, a.w_aligned);
#pragma unroll
    for (int quad = 0; quad < P::kQuads; ++quad) {
      float v[4] = {0.0f, 0.0f, 0.0f, 0.0f};
      if (inside) P::template Quad<true>(raw, quad, v);
      float* o = out_row + P::QuadElem(p, quad);
      if (a.y_aligned) {
        *reinterpret_cast<float4*>(o) = make_float4(v[0], v[1], v[2], v[3]);
      } else {
#pragma unroll
        for (int e = 0; e < 4; ++e) o[e] = v[e];
      }
    }
  }
}

// ---- Host side.

struct Format {
  int block_elems;
  int block_bytes;
  int piece_elems;
};

template <QuantKind K>
constexpr Format FormatFor() {
  return {Piece<K>::kBlockElems, Piece<K>::kBlockBytes, Piece<K>::kPieceElems};
}

Format FormatOf(QuantKind kind, const char* fn) {
  switch (kind) {
    case QuantKind::kQ8_0: return FormatFor<QuantKind::kQ8_0>();
    case QuantKind::kQ4_0: return FormatFor<QuantKind::kQ4_0>();
    case QuantKind::kQ4_1: return FormatFor<QuantKind::kQ4_1>();
    case QuantKind::kQ5_0: return FormatFor<QuantKind::kQ5_0>();
    case QuantKind::kQ5_1: return FormatFor<QuantKind::kQ5_1>();
    case QuantKind::kQ4_K: return FormatFor<QuantKind::kQ4_K>();
    case QuantKind::kQ5_K: return FormatFor<QuantKind::kQ5_K>();
    case QuantKind::kQ6_K: return FormatFor<QuantKind::kQ6_K>();
  }
  throw std::invalid_argument(std::string(fn) + ": unknown QuantKind " +
                              std::to_string(static_cast<int>(kind)));
}

bool Aligned(const void* p, uintptr_t n) { return reinterpret_cast<uintptr_t>(p) % n == 0; }

struct Shape {
  int64_t row_bytes;
  int pieces;
};

// Checks the matrix arguments shared by both launchers.
Shape CheckMatrix(const char* fn, QuantKind kind, const void* w, int64_t rows, int64_t cols) {
  const Format f = FormatOf(kind, fn);
  if (rows < 0 || cols < 0 || cols % f.block_elems != 0) {
    throw std::invalid_argument(std::string(fn) + ": W [" + std::to_string(rows) + ", " +
                                std::to_string(cols) + "]: cols must be a multiple of " +
                                std::to_string(f.block_elems));
  }
  if (rows > INT32_MAX || cols > INT32_MAX) {
    throw std::invalid_argument(std::string(fn) + ": W [" + std::to_string(rows) + ", " +
                                std::to_string(cols) + "] is too large");
  }
  if (!Aligned(w, 2)) {
    throw std::invalid_argument(std::string(fn) + ": the weights must be 2-byte aligned");
  }
  return {cols / f.block_elems * f.block_bytes, static_cast<int>(cols / f.piece_elems)};
}

template <QuantKind K>
void LaunchGemvFor(int n, unsigned blocks, unsigned threads, cudaStream_t stream,
                   const GemvArgs& a) {
  switch (n) {
    case 1: QuantGemvKernel<K, 1><<<blocks, threads, 0, stream>>>(a); break;
    case 2: QuantGemvKernel<K, 2><<<blocks, threads, 0, stream>>>(a); break;
    case 3: QuantGemvKernel<K, 3><<<blocks, threads, 0, stream>>>(a); break;
    case 4: QuantGemvKernel<K, 4><<<blocks, threads, 0, stream>>>(a); break;
    case 5: QuantGemvKernel<K, 5><<<blocks, threads, 0, stream>>>(a); break;
    case 6: QuantGemvKernel<K, 6><<<blocks, threads, 0, stream>>>(a); break;
    case 7: QuantGemvKernel<K, 7><<<blocks, threads, 0, stream>>>(a); break;
    default: QuantGemvKernel<K, kMaxBatch><<<blocks, threads, 0, stream>>>(a); break;
  }
}

template <QuantKind K>
void LaunchDequantizeFor(HalfKind out_kind, dim3 grid, unsigned threads, cudaStream_t stream,
                         const DequantArgs& a) {
  switch (out_kind) {
    case HalfKind::kF32:
      DequantizeKernel<K, HalfKind::kF32><<<grid, threads, 0, stream>>>(a);
      break;
    case HalfKind::kF16:
      DequantizeKernel<K, HalfKind::kF16><<<grid, threads, 0, stream>>>(a);
      break;
    case HalfKind::kBF16:
      DequantizeKernel<K, HalfKind::kBF16><<<grid, threads, 0, stream>>>(a);
      break;
  }
}

// The tiled matmul over the format P: 16 activation rows per block for n <= 16, else tiles of
// kTileBatch (the last one partial).
template <class P>
void LaunchTiledFor(const TileArgs& a, cudaStream_t stream) {
  const unsigned row_blocks = static_cast<unsigned>((a.rows + kTileRows - 1) / kTileRows);
  if (a.n <= 16) {
    TiledMatmulKernel<P, 16><<<dim3(row_blocks, 1), kTileThreads, 0, stream>>>(a);
  } else {
    const auto tiles = static_cast<unsigned>((a.n + kTileBatch - 1) / kTileBatch);
    TiledMatmulKernel<P, kTileBatch><<<dim3(row_blocks, tiles), kTileThreads, 0, stream>>>(a);
  }
}

// n for the tiled matmul: grid.y holds one tile of kTileBatch activation rows each.
void CheckTiledBatch(const char* fn, int64_t n) {
  if (n < 0 || n > int64_t{65535} * kTileBatch) {
    throw std::invalid_argument(std::string(fn) + ": n = " + std::to_string(n) +
                                " is out of range [0, " +
                                std::to_string(int64_t{65535} * kTileBatch) + "]");
  }
}

template <QuantKind K>
void LaunchGatherFor(dim3 grid, unsigned threads, cudaStream_t stream, const GatherArgs& a) {
  GatherRowsKernel<K><<<grid, threads, 0, stream>>>(a);
}

// Threads for a row of `pieces` pieces: whole warps, at most kMaxThreads.
unsigned ThreadsFor(int pieces) {
  const int warps = std::min(kMaxThreads / 32, std::max(1, (pieces + 31) / 32));
  return static_cast<unsigned>(warps * 32);
}

}  // namespace

void LaunchQuantGemv(QuantKind kind, const void* w, int64_t rows, int64_t cols, const float* x,
                     int64_t n, float* y, cudaStream_t stream) {
  const Shape s = CheckMatrix("LaunchQuantGemv", kind, w, rows, cols);
  if (n < 0) throw std::invalid_argument("LaunchQuantGemv: n < 0");
  if (rows == 0 || n == 0) return;
  const unsigned blocks = static_cast<unsigned>((rows + kRows - 1) / kRows);
  const unsigned threads = ThreadsFor(s.pieces);
  GemvArgs a{static_cast<const uint8_t*>(w), rows, s.row_bytes, s.pieces, x, cols, y,
             Aligned(w, 16), Aligned(x, 16)};
  // Each chunk of up to kMaxBatch activation rows is one launch (x rows stay 16-byte aligned:
  // cols is a multiple of 32).
  for (int64_t j0 = 0; j0 < n; j0 += kMaxBatch) {
    const int nb = static_cast<int>(std::min<int64_t>(kMaxBatch, n - j0));
    a.x = x + j0 * cols;
    a.y = y + j0 * rows;
    using Q = QuantKind;
    switch (kind) {
      case Q::kQ8_0: LaunchGemvFor<Q::kQ8_0>(nb, blocks, threads, stream, a); break;
      case Q::kQ4_0: LaunchGemvFor<Q::kQ4_0>(nb, blocks, threads, stream, a); break;
      case Q::kQ4_1: LaunchGemvFor<Q::kQ4_1>(nb, blocks, threads, stream, a); break;
      case Q::kQ5_0: LaunchGemvFor<Q::kQ5_0>(nb, blocks, threads, stream, a); break;
      case Q::kQ5_1: LaunchGemvFor<Q::kQ5_1>(nb, blocks, threads, stream, a); break;
      case Q::kQ4_K: LaunchGemvFor<Q::kQ4_K>(nb, blocks, threads, stream, a); break;
      case Q::kQ5_K: LaunchGemvFor<Q::kQ5_K>(nb, blocks, threads, stream, a); break;
      case Q::kQ6_K: LaunchGemvFor<Q::kQ6_K>(nb, blocks, threads, stream, a); break;
    }
    SHARDLM_CUDA_LAUNCH_CHECK("QuantGemvKernel<<<>>>");
  }
}

void LaunchDequantize(QuantKind kind, const void* w, int64_t rows, int64_t cols, void* out,
                      HalfKind out_kind, cudaStream_t stream) {
  const Shape s = CheckMatrix("LaunchDequantize", kind, w, rows, cols);
  if (out_kind != HalfKind::kF32 && out_kind != HalfKind::kF16 && out_kind != HalfKind::kBF16) {
    throw std::invalid_argument("LaunchDequantize: out_kind must be kF32, kF16 or kBF16");
  }
  const bool f32 = out_kind == HalfKind::kF32;
  if (!Aligned(out, f32 ? 4 : 2)) {
    throw std::invalid_argument(std::string("LaunchDequantize: out must be ") + (f32 ? "4" : "2") +
                                "-byte aligned");
  }
  if (rows == 0 || cols == 0) return;
  const unsigned threads = ThreadsFor(s.pieces);
  const dim3 grid(static_cast<unsigned>((s.pieces + threads - 1) / threads),
                  static_cast<unsigned>(std::min<int64_t>(rows, 65535)));
  const DequantArgs a{
      static_cast<const uint8_t*>(w), rows, s.row_bytes, s.pieces, cols, out, Aligned(w, 16),
      Aligned(out, f32 ? 16 : 8)};
  using Q = QuantKind;
  switch (kind) {
    case Q::kQ8_0:
      LaunchDequantizeFor<Q::kQ8_0>(out_kind, grid, threads, stream, a);
      break;
    case Q::kQ4_0:
      LaunchDequantizeFor<Q::kQ4_0>(out_kind, grid, threads, stream, a);
      break;
    case Q::kQ4_1:
      LaunchDequantizeFor<Q::kQ4_1>(out_kind, grid, threads, stream, a);
      break;
    case Q::kQ5_0:
      LaunchDequantizeFor<Q::kQ5_0>(out_kind, grid, threads, stream, a);
      break;
    case Q::kQ5_1:
      LaunchDequantizeFor<Q::kQ5_1>(out_kind, grid, threads, stream, a);
      break;
    case Q::kQ4_K:
      LaunchDequantizeFor<Q::kQ4_K>(out_kind, grid, threads, stream, a);
      break;
    case Q::kQ5_K:
      LaunchDequantizeFor<Q::kQ5_K>(out_kind, grid, threads, stream, a);
      break;
    case Q::kQ6_K:
      LaunchDequantizeFor<Q::kQ6_K>(out_kind, grid, threads, stream, a);
      break;
  }
  SHARDLM_CUDA_LAUNCH_CHECK("DequantizeKernel<<<>>>");
}

void LaunchQuantEmbedding(QuantKind kind, const void* table, int64_t vocab, int64_t cols,
                          const int32_t* ids, int64_t n, float* y, cudaStream_t stream) {
  const Shape s = CheckMatrix("LaunchQuantEmbedding", kind, table, vocab, cols);
  if (n < 0) throw std::invalid_argument("LaunchQuantEmbedding: n < 0");
  if (!Aligned(y, 4)) {
    throw std::invalid_argument("LaunchQuantEmbedding: y must be 4-byte aligned");
  }
  if (n == 0 || cols == 0) return;
  const unsigned threads = ThreadsFor(s.pieces);
  const dim3 grid(static_cast<unsigned>((s.pieces + threads - 1) / threads),
                  static_cast<unsigned>(std::min<int64_t>(n, 65535)));
  const GatherArgs a{static_cast<const uint8_t*>(table), vocab, s.row_bytes, s.pieces, cols,
                     ids, n, y, Aligned(table, 16), Aligned(y, 16)};
  using Q = QuantKind;
  switch (kind) {
    case Q::kQ8_0: LaunchGatherFor<Q::kQ8_0>(grid, threads, stream, a); break;
    case Q::kQ4_0: LaunchGatherFor<Q::kQ4_0>(grid, threads, stream, a); break;
    case Q::kQ4_1: LaunchGatherFor<Q::kQ4_1>(grid, threads, stream, a); break;
    case Q::kQ5_0: LaunchGatherFor<Q::kQ5_0>(grid, threads, stream, a); break;
    case Q::kQ5_1: LaunchGatherFor<Q::kQ5_1>(grid, threads, stream, a); break;
    case Q::kQ4_K: LaunchGatherFor<Q::kQ4_K>(grid, threads, stream, a); break;
    case Q::kQ5_K: LaunchGatherFor<Q::kQ5_K>(grid, threads, stream, a); break;
    case Q::kQ6_K: LaunchGatherFor<Q::kQ6_K>(grid, threads, stream, a); break;
  }
  SHARDLM_CUDA_LAUNCH_CHECK("GatherRowsKernel<<<>>>");
}

// Decode GEMV against dequantize + cuBLAS: the dequantizing path moves about (block bytes per
// element + 4) bytes per weight (read the blocks, write and re-read 16 bits) whatever n is, the
// GEMV its block bytes once per chunk of 8 rows but spends about n + 3 f32 operations per weight
// and launch; up to n = 8 (one chunk, f32 FMA throughput still at or above HBM rate on A100 /
// H100) it should win for every type. Past 8 each chunk re-reads the weights: left to cuBLAS.
void LaunchQuantMatmul(QuantKind kind, const void* w, int64_t rows, int64_t cols, const float* x,
                       int64_t n, const float* bias, float* y, cudaStream_t stream) {
  const Shape s = CheckMatrix("LaunchQuantMatmul", kind, w, rows, cols);
  CheckTiledBatch("LaunchQuantMatmul", n);
  if (rows == 0 || n == 0) return;
  const TileArgs a{static_cast<const uint8_t*>(w),
                   rows,
                   s.row_bytes,
                   x,
                   cols,
                   n,
                   bias,
                   y,
                   Aligned(w, 16),
                   Aligned(x, 16)};
  using Q = QuantKind;
  switch (kind) {
    case Q::kQ8_0:
      LaunchTiledFor<Piece<Q::kQ8_0>>(a, stream);
      break;
    case Q::kQ4_0:
      LaunchTiledFor<Piece<Q::kQ4_0>>(a, stream);
      break;
    case Q::kQ4_1:
      LaunchTiledFor<Piece<Q::kQ4_1>>(a, stream);
      break;
    case Q::kQ5_0:
      LaunchTiledFor<Piece<Q::kQ5_0>>(a, stream);
      break;
    case Q::kQ5_1:
      LaunchTiledFor<Piece<Q::kQ5_1>>(a, stream);
      break;
    case Q::kQ4_K:
      LaunchTiledFor<Piece<Q::kQ4_K>>(a, stream);
      break;
    case Q::kQ5_K:
      LaunchTiledFor<Piece<Q::kQ5_K>>(a, stream);
      break;
    case Q::kQ6_K:
      LaunchTiledFor<Piece<Q::kQ6_K>>(a, stream);
      break;
  }
  SHARDLM_CUDA_LAUNCH_CHECK("TiledMatmulKernel<<<>>>");
}

void LaunchHalfMatmul(HalfKind kind, const void* w, int64_t rows, int64_t cols, const float* x,
                      int64_t n, const float* bias, float* y, cudaStream_t stream) {
  if ((kind != HalfKind::kBF16 && kind != HalfKind::kF16) || rows < 0 || rows > INT32_MAX ||
      cols < 0 || cols > INT32_MAX || !HalfRowsAligned(cols, w)) {
    throw std::invalid_argument("LaunchHalfMatmul: W [" + std::to_string(rows) + ", " +
                                std::to_string(cols) +
                                "] must be bf16 / f16 with cols % 8 == 0, 16-byte aligned, and "
                                "fit int32");
  }
  CheckTiledBatch("LaunchHalfMatmul", n);
  if (rows == 0 || n == 0) return;
  const TileArgs a{
      static_cast<const uint8_t*>(w), rows, cols * 2, x, cols, n, bias, y, true, Aligned(x, 16)};
  if (kind == HalfKind::kBF16) {
    LaunchTiledFor<HalfPiece<true>>(a, stream);
  } else {
    LaunchTiledFor<HalfPiece<false>>(a, stream);
  }
  SHARDLM_CUDA_LAUNCH_CHECK("TiledMatmulKernel<<<>>>");
}

// Decode GEMV against the tiled matmul: the GEMV keeps every weight of 4 rows in registers for
// all n <= 8 activation rows (n + 3 f32 operations per weight, x re-read through L1 per block of
// 4 rows), the tiled matmul stages x in shared memory for 32 rows and pays a shuffle reduction
// per output; up to n = 8 (one chunk, f32 FMA throughput still at or above HBM rate on A100 /
// H100) the GEMV's shorter path should win for every type; past 8 it would re-read the weights per
// chunk of 8, the tiled matmul per 32.
int64_t QuantGemvMaxBatch(QuantKind kind) {
  FormatOf(kind, "QuantGemvMaxBatch");
  return kMaxBatch;
}

}  // namespace shardlm::cuda
