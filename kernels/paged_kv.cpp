#include <string>

#include "kernels/backend.h"

namespace shardlm {

std::string PagedKvLayoutError(const PagedKvLayout& layout, int64_t cache_blocks) {
  const int64_t n = static_cast<int64_t>(layout.positions.size());
  const int64_t bs = layout.block_size;
  const int64_t seqs = static_cast<int64_t>(layout.table_begin.size()) - 1;
  if (bs <= 0 || seqs < 0 || static_cast<int64_t>(layout.seq_index.size()) != n) {
    return "expects block_size > 0, one seq_index per position and table_begin of sequences + 1 "
           "offsets; got block_size " + std::to_string(bs) + ", " + std::to_string(n) +
           " positions, " + std::to_string(layout.seq_index.size()) + " sequence indices, " +
           std::to_string(layout.table_begin.size()) + " table offsets";
  }
  for (int64_t i = 0; i < n; ++i) {
    const int64_t s = layout.seq_index[i], p = layout.positions[i];
    if (s < 0 || s >= seqs || p < 0) {
      return "token " + std::to_string(i) + " has sequence " + std::to_string(s) +
             " and position " + std::to_string(p);
    }
    const int64_t begin = layout.table_begin[s], end = layout.table_begin[s + 1];
    if (begin < 0 || end < begin || end > static_cast<int64_t>(layout.block_tables.size()) ||
        p / bs >= end - begin) {
      return "position " + std::to_string(p) + " of sequence " + std::to_string(s) +
             " is past its " + std::to_string(end - begin) + " blocks of " + std::to_string(bs);
    }
    for (int64_t b = begin; b <= begin + p / bs; ++b) {
      const int64_t block = layout.block_tables[b];
      if (block < 0 || block >= cache_blocks) {
        return "block " + std::to_string(block) + " outside the cache of " +
               std::to_string(cache_blocks) + " blocks";
      }
    }
  }
  return "";
}

}  // namespace shardlm
