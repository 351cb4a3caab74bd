// Contiguous per-layer KV cache of one sequence: K and V of shape [max_seq, kv_heads, head_dim].
// The paged cache of issue [4 of 5] replaces this in the worker.
#pragma once

#include <cstdint>
#include <vector>

#include "kernels/backend.h"

namespace shardlm {

struct KvCache {
  int64_t max_seq = 0;
  std::vector<Tensor> k;  // one per layer
  std::vector<Tensor> v;

  static KvCache Create(Backend& backend, int64_t layers, int64_t max_seq, int64_t kv_heads,
                        int64_t head_dim) {
    KvCache cache;
    cache.max_seq = max_seq;
    for (int64_t l = 0; l < layers; ++l) {
      cache.k.push_back(backend.Allocate({max_seq, kv_heads, head_dim}, backend.kv_cache_dtype()));
      cache.v.push_back(backend.Allocate({max_seq, kv_heads, head_dim}, backend.kv_cache_dtype()));
    }
    return cache;
  }
};

}  // namespace shardlm
