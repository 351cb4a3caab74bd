#include "coordinator/kv_block_manager.h"

#include <algorithm>
#include <limits>

#include "spdlog/spdlog.h"

namespace shardlm::coordinator {

KvBlockManager::KvBlockManager(int32_t block_size) : block_size_(std::max(1, block_size)) {}

void KvBlockManager::Reset(int64_t num_blocks) {
  // Block ids travel as int32 in the worker protocol.
  num_blocks = std::clamp<int64_t>(num_blocks, 0, std::numeric_limits<int32_t>::max());
  in_use_.assign(static_cast<size_t>(num_blocks), false);
  free_list_.resize(static_cast<size_t>(num_blocks));
  // Popped from the back: block 0 first.
  for (int64_t i = 0; i < num_blocks; ++i) {
    free_list_[static_cast<size_t>(i)] = static_cast<int32_t>(num_blocks - 1 - i);
  }
}

bool KvBlockManager::EnsureCapacity(int64_t tokens, std::vector<int32_t>* table) {
  const int64_t have = static_cast<int64_t>(table->size());
  const int64_t need = BlocksFor(tokens) - have;
  if (need <= 0) return true;
  if (need > free()) return false;
  for (int64_t i = 0; i < need; ++i) {
    const int32_t block = free_list_.back();
    free_list_.pop_back();
    in_use_[static_cast<size_t>(block)] = true;
    table->push_back(block);
  }
  return true;
}

void KvBlockManager::Free(std::vector<int32_t>* table) {
  for (int32_t block : *table) {
    if (block < 0 || block >= total() || !in_use_[static_cast<size_t>(block)]) {
      spdlog::error("KV block {} freed but not allocated (of {}): ignored", block, total());
      continue;
    }
    in_use_[static_cast<size_t>(block)] = false;
    free_list_.push_back(block);
  }
  table->clear();
}

}  // namespace shardlm::coordinator
