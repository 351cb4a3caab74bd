// The CUDA paged attention (kernels/cuda/cuda_attention.cu) against the CPU backend's
// PagedAttention, over shuffled paged caches: single-token decode, decode batches of sequences of
// different lengths (contexts 1, 255, 4096 and, for two configurations, 32768), prefill chunks,
// mixed batches, head dims 32 to 256 (and 48, the general kernel), GQA groups 1, 4, 20 and 48,
// with and without a sliding window, f32 and bf16 caches; and a CUDA graph recorded at one
// context and replayed at longer ones after new positions and block tables are written.
//
// Tolerances, relative to max(1, max |CPU output|): f32 caches 1e-5 (3e-5 at 32768 keys, where
// the two summation orders drift further apart); bf16 caches 1e-4 against the CPU run over f32
// caches holding the same bf16-rounded K/V (the arithmetic is f32 on both sides). Skips without
// a CUDA device; the plan (launch shape, chunk rule) is checked on the host everywhere.
#include "kernels/cuda/cuda_attention.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <memory>
#include <numeric>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include <gtest/gtest.h>

#include "base/dtype.h"
#include "base/tensor.h"
#include "tests/kernels_cuda/logit_compare.h"
#include "kernels/backend.h"
#include "kernels/cpu/cpu_backend.h"
#include "kernels/cuda/cuda_backend.h"
#include "tests/kernels_cuda/cuda_vs_cpu.h"

namespace shardlm {
namespace {

using cudatest::ExpectClose;

constexpr float kF32Tol = 1e-5f;
constexpr float kF32LongTol = 3e-5f;
constexpr float kRoundedTol = 1e-4f;


struct Query {
  int32_t seq, pos;
};

struct Shape {
  int heads, kv_heads, head_dim, window;
};

std::string Describe(const Shape& s, DType cache) {
  return std::string(DTypeName(cache)) + " cache, heads " + std::to_string(s.heads) + "/" +
         std::to_string(s.kv_heads) + ", head_dim " + std::to_string(s.head_dim) + ", window " +
         std::to_string(s.window);
}

// Sequences of the given lengths over blocks of a cache taken in a shuffled order (block b of
// the order is (b * stride) % blocks), one spare block, and query tokens.
struct Layout {
  int bs = 16;
  int64_t blocks = 0;
  std::vector<int32_t> tables, begin, positions, seq;

  Layout(int block_size, const std::vector<int32_t>& lengths, const std::vector<Query>& queries)
      : bs(block_size) {
    int64_t needed = 1;
    for (int32_t len : lengths) needed += (len + bs - 1) / bs;
    blocks = needed;
    int64_t stride = 7919;  // a prime: coprime with `blocks` unless it divides it
    while (std::gcd(stride, blocks) != 1) stride += 2;
    int64_t next = 0;
    begin.push_back(0);
    for (int32_t len : lengths) {
      for (int32_t b = 0; b < (len + bs - 1) / bs; ++b) {
        tables.push_back(static_cast<int32_t>((next++ * stride) % blocks));
      }
      begin.push_back(static_cast<int32_t>(tables.size()));
    }
    for (const Query& q : queries) {
      seq.push_back(q.seq);
      positions.push_back(q.pos);
    }
  }
  PagedKvLayout View() const { return PagedKvLayout{bs, positions, seq, begin, tables}; }
  int64_t n() const { return static_cast<int64_t>(positions.size()); }
  int64_t rows() const { return blocks * bs; }
};

class CudaAttentionTest : public CudaVsCpuTest {
 protected:
  CudaAttentionTest() : CudaVsCpuTest(20240518) {}

  // Host f32 K or V of the whole cache, rounded to `dtype` (the values the device cache holds).
  Tensor RandomCache(const Layout& l, const Shape& s, DType dtype, float range) {
    Tensor t = Random({l.rows(), s.kv_heads, s.head_dim}, -range, range);
    if (dtype == DType::kBF16) {
      for (int64_t i = 0; i < t.numel(); ++i) {
        t.data<float>()[i] = Bf16ToF32(F32ToBf16(t.data<float>()[i]));
      }
    }
    return t;
  }

  // A device cache of `dtype` holding the host values (rounded exactly as WriteKv does).
  Tensor DeviceCache(const Tensor& host, DType dtype) {
    if (dtype == DType::kF32) return cuda_->ToDevice(host);
    Tensor c = cuda_->Allocate(host.shape(), dtype);
    std::vector<int32_t> all(static_cast<size_t>(host.dim(0)));
    std::iota(all.begin(), all.end(), 0);
    Tensor d = cuda_->ToDevice(host);
    Tensor other = cuda_->Allocate(host.shape(), dtype);
    cuda_->WriteKv(d, d, all, c, other);
    return c;
  }

  // CPU and CUDA attention of random queries over random caches; `tol` for f32 caches.
  void Check(const Layout& l, const Shape& s, DType dtype, float tol, const std::string& what) {
    const std::string name = what + ", " + Describe(s, dtype);
    // Scale 1 / sqrt(head_dim) with keys and queries in +-2: peaked weights, so that a wrong or
    // missing key shows.
    const AttentionParams p{s.heads, s.kv_heads, s.head_dim,
                            1.0f / std::sqrt(static_cast<float>(s.head_dim)), s.window};
    const Tensor kc = RandomCache(l, s, dtype, 2.0f), vc = RandomCache(l, s, dtype, 1.0f);
    const Tensor q = Random({l.n(), s.heads, s.head_dim}, -2.0f, 2.0f);
    Tensor want = cpu_->Allocate({l.n(), s.heads * s.head_dim});
    cpu_->PagedAttention(q, kc, vc, l.View(), p, want);
    Tensor got = cuda_->Allocate({l.n(), s.heads * s.head_dim});
    cuda_->PagedAttention(cuda_->ToDevice(q), DeviceCache(kc, dtype), DeviceCache(vc, dtype),
                          l.View(), p, got);
    ExpectClose(cuda_->ToHost(got), want, dtype == DType::kF32 ? tol : kRoundedTol, name);
  }

};

const int kHeadDims[] = {64, 80, 96, 128, 256};
// GQA group 1 (4 / 4) and 4 (8 / 2).
const std::pair<int, int> kHeadCounts[] = {{4, 4}, {8, 2}};

// One token of one sequence at contexts 1, 255 and 4096: the flash-decoding path with as many
// key chunks as fill the device, most of them empty at short contexts.
TEST_F(CudaAttentionTest, SingleTokenDecode) {
  for (int d : kHeadDims) {
    for (const auto& [heads, kv] : kHeadCounts) {
      for (DType dt : {DType::kF32, DType::kBF16}) {
        for (int32_t ctx : {1, 255, 4096}) {
          for (int window : {0, 100}) {
            const Layout l(16, {ctx}, {{0, ctx - 1}});
            Check(l, Shape{heads, kv, d, window}, dt, kF32Tol,
                  "single token at context " + std::to_string(ctx));
          }
        }
      }
    }
  }
}

// Decode tokens of four sequences of different lengths (1, 255, 4096, 700) in one batch.
TEST_F(CudaAttentionTest, DecodeBatchOfSequencesOfDifferentLengths) {
  const Layout l(16, {1, 255, 4096, 700}, {{0, 0}, {1, 254}, {2, 4095}, {3, 699}});
  for (int d : kHeadDims) {
    for (const auto& [heads, kv] : kHeadCounts) {
      for (DType dt : {DType::kF32, DType::kBF16}) {
        for (int window : {0, 256}) {
          Check(l, Shape{heads, kv, d, window}, dt, kF32Tol, "decode batch");
        }
      }
    }
  }
}

// A prefill chunk: 100 query tokens at positions 200..299 of one sequence (query tiles; the
// first tile starts off a tile boundary), and a prompt of 37 tokens from position 0.
TEST_F(CudaAttentionTest, PrefillChunk) {
  std::vector<Query> chunk, prompt;
  for (int32_t p = 200; p < 300; ++p) chunk.push_back({0, p});
  for (int32_t p = 0; p < 37; ++p) prompt.push_back({0, p});
  const Layout lc(16, {300}, chunk), lp(16, {37}, prompt);
  for (int d : kHeadDims) {
    for (const auto& [heads, kv] : kHeadCounts) {
      for (DType dt : {DType::kF32, DType::kBF16}) {
        for (int window : {0, 50}) {
          Check(lc, Shape{heads, kv, d, window}, dt, kF32Tol, "prefill chunk 200..299");
          Check(lp, Shape{heads, kv, d, window}, dt, kF32Tol, "prompt 0..36");
        }
      }
    }
  }
}

// Decode tokens and prefill chunks of several sequences in one batch, interleaved, plus two
// tokens of one sequence at scattered positions.
TEST_F(CudaAttentionTest, MixedBatch) {
  std::vector<Query> queries = {{0, 0}, {1, 254}};
  for (int32_t p = 60; p < 100; ++p) queries.push_back({3, p});  // a chunk of seq 3
  queries.push_back({2, 4095});
  for (int32_t p = 0; p < 17; ++p) queries.push_back({4, p});  // a prompt of seq 4
  queries.push_back({5, 1000});
  queries.push_back({5, 13});
  const Layout l(16, {1, 255, 4096, 100, 17, 1001}, queries);
  for (int d : kHeadDims) {
    for (const auto& [heads, kv] : kHeadCounts) {
      for (DType dt : {DType::kF32, DType::kBF16}) {
        for (int window : {0, 64}) {
          Check(l, Shape{heads, kv, d, window}, dt, kF32Tol, "mixed batch");
        }
      }
    }
  }
}

// Tokens of one sequence at scattered positions: one query tile each, more tiles than the
// blocks launched for them (the blocks take several in turn).
TEST_F(CudaAttentionTest, ScatteredPositionsOfOneSequence) {
  std::vector<Query> queries;
  for (int32_t p = 3; p < 500; p += 21) queries.push_back({0, p});
  const Layout l(16, {500}, queries);
  for (DType dt : {DType::kF32, DType::kBF16}) {
    for (int window : {0, 30}) {
      Check(l, Shape{8, 2, 64, window}, dt, kF32Tol, "scattered positions");
      Check(l, Shape{4, 4, 128, window}, dt, kF32Tol, "scattered positions");
    }
  }
}

// 32768 keys: batch-1 decode (bf16, Llama-3-8B-like heads) and two tokens with a window (f32).
TEST_F(CudaAttentionTest, Context32768) {
  const Layout one(16, {32768}, {{0, 32767}});
  Check(one, Shape{32, 8, 128, 0}, DType::kBF16, kF32LongTol, "decode at 32768");
  const Layout two(16, {32768, 20000}, {{0, 32767}, {1, 19999}});
  Check(two, Shape{8, 8, 64, 4096}, DType::kF32, kF32LongTol, "decode batch at 32768 + 20000");
}

// GQA groups over 16 (the decode variant's limit) and over the prefill variant's rows: blocks
// serve part of a group. Head dims 32 (the tiny test models) and 48 (the general kernel).
TEST_F(CudaAttentionTest, LargeGroupsAndOtherHeadDims) {
  std::vector<Query> chunk = {{1, 0}};
  for (int32_t p = 10; p < 30; ++p) chunk.push_back({0, p});
  const Layout decode(16, {500, 3000}, {{0, 499}, {1, 2999}});
  const Layout prefill(16, {30, 1}, chunk);
  for (DType dt : {DType::kF32, DType::kBF16}) {
    for (const Shape& s : {Shape{40, 2, 128, 0}, Shape{48, 1, 256, 0}, Shape{8, 2, 32, 0},
                           Shape{8, 2, 48, 7}, Shape{6, 3, 48, 0}}) {
      Check(decode, s, dt, kF32Tol, "decode");
      Check(prefill, s, dt, kF32Tol, "prefill");
    }
  }
}

// A decode step recorded in a graph at short contexts and replayed after the positions and block
// tables (same index tensors, as runtime/decode_graphs.cpp pads them) move to longer contexts:
// the launch shape must not depend on the contexts of the recorded step.
TEST_F(CudaAttentionTest, GraphReplayAtLongerContexts) {
  constexpr int kBs = 16, kSeqs = 3, kMaxBlocks = 320;  // up to 5120 keys a sequence
  for (DType dt : {DType::kBF16, DType::kF32}) {
    const Shape s{8, 2, 128, 0};
    SCOPED_TRACE(Describe(s, dt));
    const AttentionParams p{s.heads, s.kv_heads, s.head_dim, 1.0f / std::sqrt(128.0f), 0};
    const int64_t blocks = int64_t{kSeqs} * kMaxBlocks + 1;
    // Every sequence owns kMaxBlocks blocks of a shuffled order.
    std::vector<int32_t> order(static_cast<size_t>(blocks));
    std::iota(order.begin(), order.end(), 0);
    std::shuffle(order.begin(), order.end(), rng_);
    std::vector<int32_t> tables(order.begin(), order.begin() + kSeqs * kMaxBlocks);
    std::vector<int32_t> begin(kSeqs + 1), seq(kSeqs);
    for (int i = 0; i <= kSeqs; ++i) begin[i] = i * kMaxBlocks;
    std::iota(seq.begin(), seq.end(), 0);
    Layout shape_only(kBs, {}, {});
    shape_only.blocks = blocks;
    const Tensor kc = RandomCache(shape_only, s, dt, 2.0f),
                 vc = RandomCache(shape_only, s, dt, 1.0f);
    const Tensor kd = DeviceCache(kc, dt), vd = DeviceCache(vc, dt);
    const Tensor q = Random({kSeqs, s.heads, s.head_dim}, -2.0f, 2.0f);
    const Tensor qd = cuda_->ToDevice(q);

    std::vector<int32_t> positions = {5, 100, 33};
    const PagedKvLayout recorded{kBs, positions, seq, begin, tables};
    PagedKvIndices idx = cuda_->UploadLayout(recorded);
    Tensor out = cuda_->Allocate({kSeqs, s.heads * s.head_dim});
    cuda_->PagedAttention(qd, kd, vd, idx, p, out);  // eager first, as DecodeGraphs does
    cuda_->Synchronize();
    ASSERT_TRUE(cuda_->BeginCapture());
    cuda_->PagedAttention(qd, kd, vd, idx, p, out);
    std::unique_ptr<BackendGraph> graph = cuda_->EndCapture();
    ASSERT_NE(graph, nullptr);

    const std::vector<std::vector<int32_t>> steps = {{5, 100, 33}, {4095, 255, 5119}, {0, 5000, 1}};
    for (const std::vector<int32_t>& step : steps) {
      positions = step;
      // New block tables too: sequence 0 takes the blocks of sequence 2 and the other way round.
      std::vector<int32_t> swapped = tables;
      std::swap_ranges(swapped.begin(), swapped.begin() + kMaxBlocks,
                       swapped.begin() + 2 * kMaxBlocks);
      tables.swap(swapped);
      const PagedKvLayout now{kBs, positions, seq, begin, tables};
      cuda_->WriteIndices(positions, idx.positions);
      cuda_->WriteIndices(tables, idx.block_tables);
      graph->Replay();
      Tensor want = cpu_->Allocate({kSeqs, s.heads * s.head_dim});
      cpu_->PagedAttention(q, kc, vc, now, p, want);
      ExpectClose(cuda_->ToHost(out), want, dt == DType::kF32 ? kF32Tol : kRoundedTol,
                  "replay at positions " + std::to_string(step[0]) + ", " +
                      std::to_string(step[1]) + ", " + std::to_string(step[2]));
    }
  }
}

// The plan on the host (no device needed): decode fills the device with key chunks at batch 1,
// prefill takes query tiles, and the shared memory stays within an sm_80 block's limit.
TEST(CudaAttentionPlan, ChunksTilesAndSharedMemory) {
  cuda::AttentionArgs a;
  a.cache_kind = cuda::HalfKind::kBF16;
  a.block_size = 16;
  a.heads = 32;
  a.kv_heads = 8;
  a.head_dim = 128;
  a.n = 1;
  a.num_seqs = 1;
  a.k_cache = a.v_cache = reinterpret_cast<const void*>(uintptr_t{256});
  cuda::AttentionPlan p = cuda::PlanAttention(a, 132);
  ASSERT_TRUE(p.flash);
  EXPECT_FALSE(p.tiled);
  EXPECT_EQ(p.heads_per_block, 4);  // the whole GQA group reads each K/V row once
  EXPECT_EQ(p.head_parts, 1);
  EXPECT_EQ(p.grid_x, 1);
  // 8 KV heads x 33 chunks = 264 blocks, two per multiprocessor; at 4096 keys a chunk is
  // ceil(4096 / 33) = 125 keys, rounded up to 128 (the keys staged per step): 32 chunks.
  EXPECT_EQ(p.splits, 33);
  EXPECT_EQ(p.keys_per_tile, 32);
  EXPECT_EQ(p.workspace_bytes, sizeof(float) * 32 * 33 * (128 + 2));
  EXPECT_LE(p.smem_bytes, size_t{48} * 1024);
  // Batch 64: enough blocks without chunks, and no merge pass.
  a.n = a.num_seqs = 64;
  p = cuda::PlanAttention(a, 132);
  EXPECT_FALSE(p.tiled);
  EXPECT_EQ(p.splits, 1);
  EXPECT_EQ(p.workspace_bytes, 0u);
  // A prefill of 512 tokens: tiles of 16 tokens x 4 heads.
  a.n = 512;
  a.num_seqs = 1;
  p = cuda::PlanAttention(a, 132);
  EXPECT_TRUE(p.tiled);
  EXPECT_EQ(p.tile_tokens, 16);
  EXPECT_EQ(p.grid_x, 512 / 16 + 2);
  EXPECT_EQ(p.splits, 1);
  // Every supported shape fits an sm_80 block (163 KiB of shared memory).
  for (cuda::HalfKind kind : {cuda::HalfKind::kF32, cuda::HalfKind::kBF16}) {
    for (int d : {32, 64, 80, 96, 128, 256}) {
      for (int group : {1, 4, 16, 64}) {
        for (int64_t n : {1, 512}) {
          a.cache_kind = kind;
          a.head_dim = d;
          a.kv_heads = 2;
          a.heads = 2 * group;
          a.n = n;
          a.num_seqs = 1;
          p = cuda::PlanAttention(a, 132);
          ASSERT_TRUE(p.flash);
          EXPECT_LE(p.smem_bytes, size_t{163} * 1024) << "head_dim " << d << " group " << group;
          EXPECT_GE(p.head_parts * p.heads_per_block, group);
          EXPECT_LE(p.tile_tokens * p.heads_per_block, 64);
        }
      }
    }
  }
  // Head dims outside the set and unaligned caches take the general kernel.
  a.head_dim = 48;
  EXPECT_FALSE(cuda::PlanAttention(a, 132).flash);
  a.head_dim = 128;
  a.k_cache = reinterpret_cast<const void*>(uintptr_t{258});
  EXPECT_FALSE(cuda::PlanAttention(a, 132).flash);
}

}  // namespace
}  // namespace shardlm
