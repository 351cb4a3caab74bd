// The KV cache's block accounting: fixed-size blocks of kv_block_size token positions, as many
// as the workers reported room for. The coordinator owns the block tables; the workers hold the
// memory and write whatever blocks a step's tables name. Not thread-safe (the engine's lock).
#pragma once

#include <cstdint>
#include <vector>

namespace shardlm::coordinator {

class KvBlockManager {
 public:
  explicit KvBlockManager(int32_t block_size);

  // Forgets every allocation and makes `num_blocks` blocks free (0 while no workers are
  // attached). Tables handed out before must not be freed afterwards.
  void Reset(int64_t num_blocks);

  int32_t block_size() const { return block_size_; }
  int64_t total() const { return static_cast<int64_t>(in_use_.size()); }
  int64_t free() const { return static_cast<int64_t>(free_list_.size()); }
  // Blocks that hold `tokens` positions.
  int64_t BlocksFor(int64_t tokens) const { return (tokens + block_size_ - 1) / block_size_; }

  // Appends free blocks to *table until it covers positions [0, tokens). False, with the table
  // unchanged, when there are not enough free blocks.
  bool EnsureCapacity(int64_t tokens, std::vector<int32_t>* table);
  // Returns every block of *table and clears it. Blocks that are not allocated (a bug) are
  // skipped, never freed twice.
  void Free(std::vector<int32_t>* table);

 private:
  int32_t block_size_;
  std::vector<int32_t> free_list_;  // a stack: recently freed blocks are reused first
  std::vector<bool> in_use_;
};

}  // namespace shardlm::coordinator
