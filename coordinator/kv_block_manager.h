// The KV cache's block accounting: fixed-size blocks of kv_block_size token positions, as many
// as the workers reported room for. The coordinator owns the block tables; the workers hold the
// memory and write whatever blocks a step's tables name. The bookkeeping grows with the blocks
// handed out, never with the total a job reports: blocks never used cost nothing here. Not
// thread-safe (the engine's lock).
#pragma once

#include <cstdint>
#include <vector>

namespace shardlm::coordinator {

class KvBlockManager {
 public:
  explicit KvBlockManager(int32_t block_size);

  // Forgets every allocation (releasing its memory) and makes `num_blocks` blocks free (0 while
  // no workers are attached). Tables handed out before must not be freed afterwards.
  void Reset(int64_t num_blocks);

  int32_t block_size() const { return block_size_; }
  int64_t total() const { return total_; }
  int64_t free() const { return static_cast<int64_t>(free_list_.size()) + (total_ - fresh_); }
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
  int64_t total_ = 0;
  int64_t fresh_ = 0;               // blocks [fresh_, total_) were never handed out since Reset
  std::vector<int32_t> free_list_;  // freed blocks, a stack: reused first, most recent first
  std::vector<bool> in_use_;        // of blocks [0, fresh_)
};

}  // namespace shardlm::coordinator
