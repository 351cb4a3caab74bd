// Launchers of the paged attention kernels of the CUDA backend (cuda_attention.cu). Plain pointers
// and sizes only, like cuda_kernels.h; the launchers enqueue on `stream`, never synchronize (a
// decode step is captured as a CUDA graph and replayed at other context lengths) and throw
// shardlm::CheckFailure (base/check.h) when a launch fails.
//
// The launch configuration depends only on the shapes (n, heads, kv_heads, head_dim, the number
// of sequences, the cache dtype) and the device, never on the positions or block tables (device
// data): a recorded graph stays valid when they change. See cuda_attention.cu for the plan.
#pragma once

#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>

#include "kernels/cuda/cuda_kernels.h"

namespace shardlm::cuda {

// Attention of q [n, heads, head_dim] over the paged cache, through positions / seq_index /
// table_begin / block_tables (device pointers); out [n, heads * head_dim]. block_size > 0,
// head_dim <= 256.
struct AttentionArgs {
  const float* q = nullptr;
  const void* k_cache = nullptr;
  const void* v_cache = nullptr;
  HalfKind cache_kind = HalfKind::kF32;
  float* out = nullptr;
  const int32_t* positions = nullptr;
  const int32_t* seq_index = nullptr;
  const int32_t* table_begin = nullptr;
  const int32_t* block_tables = nullptr;
  int64_t block_size = 0;
  int64_t n = 0;
  int64_t num_seqs = 0;  // table_begin has num_seqs + 1 entries; only picks the plan
  int64_t heads = 0;
  int64_t kv_heads = 0;
  int64_t head_dim = 0;
  float scale = 1.0f;
  int64_t window = 0;
  // Device scratch of at least AttentionWorkspaceBytes(*this) bytes (4-byte aligned); may be
  // null when that is 0. Holds the per-chunk partial results and the query tiles.
  void* workspace = nullptr;
  size_t workspace_bytes = 0;
};

// Scratch bytes LaunchAttention needs for `args` on the current device (0: none).
size_t AttentionWorkspaceBytes(const AttentionArgs& args);
void LaunchAttention(const AttentionArgs& args, cudaStream_t stream);

// What LaunchAttention runs for `args` on a device with `sm_count` multiprocessors (for tests
// and benchmarks; the launcher uses the same rule).
struct AttentionPlan {
  bool flash = false;  // false: the general kernel (head_dim or alignment outside the fast set)
  bool tiled = false;  // query tiles of consecutive tokens of one sequence (prefill, mixed)
  int heads_per_block = 0;  // query heads of one GQA group that one block serves
  int head_parts = 0;       // blocks per GQA group (group / heads_per_block, rounded up)
  int tile_tokens = 0;      // most query tokens in one block
  int splits = 0;           // key chunks per (tile, KV head); 1: no merge pass
  int grid_x = 0;           // query tiles (decode: one per token)
  int keys_per_tile = 0;    // keys staged in shared memory per step
  size_t smem_bytes = 0;    // dynamic shared memory per block
  size_t workspace_bytes = 0;
};
AttentionPlan PlanAttention(const AttentionArgs& args, int sm_count);

}  // namespace shardlm::cuda
