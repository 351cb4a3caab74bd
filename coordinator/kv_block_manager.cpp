#include "coordinator/kv_block_manager.h"

#include <algorithm>
#include <limits>

#include "spdlog/spdlog.h"

namespace shardlm::coordinator {

KvBlockManager::KvBlockManager(int32_t block_size) : block_size_(std::max(1, block_size)) {}

void KvBlockManager::Reset(int64_t num_blocks) {
  // Block ids travel as int32 in the worker protocol.
  total_ = std::clamp<int64_t>(num_blocks, 0, std::numeric_limits<int32_t>::max());
  fresh_ = 0;
  // Swapped with empty ones, which gives the memory back (clear() would keep the capacity).
  std::vector<int32_t>().swap(free_list_);
  std::vector<bool>().swap(in_use_);
}

bool KvBlockManager::EnsureCapacity(int64_t tokens, std::vector<int32_t>* table) {
  const int64_t have = static_cast<int64_t>(table->size());
  const int64_t need = BlocksFor(tokens) - have;
  if (need <= 0) return true;
  if (need > free()) return false;
  for (int64_t i = 0; i < need; ++i) {
    int32_t block;
    if (!free_list_.empty()) {
      block = free_list_.back();
      free_list_.pop_back();
    } else {  // block 0 first, then upwards
      block = static_cast<int32_t>(fresh_++);
      in_use_.push_back(false);
    }
    in_use_[static_cast<size_t>(block)] = true;
    table->push_back(block);
  }
  return true;
}

void KvBlockManager::Free(std::vector<int32_t>* table) {
  for (int32_t block : *table) {
    if (block < 0 || block >= fresh_ || !in_use_[static_cast<size_t>(block)]) {
      spdlog::error("KV block {} freed but not allocated (of {}): ignored", block, total());
      continue;
    }
    in_use_[static_cast<size_t>(block)] = false;
    free_list_.push_back(block);
  }
  table->clear();
}

}  // namespace shardlm::coordinator
