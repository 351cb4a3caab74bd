#include "coordinator/kv_block_manager.h"

#include <openssl/evp.h>

#include <algorithm>
#include <limits>

#include "spdlog/spdlog.h"

namespace shardlm::coordinator {

namespace {

void PutLe64(uint64_t v, std::vector<unsigned char>* out) {
  for (int i = 0; i < 8; ++i) out->push_back(static_cast<unsigned char>(v >> (8 * i)));
}

uint64_t GetBe64(const unsigned char* p) {
  uint64_t v = 0;
  for (int i = 0; i < 8; ++i) v = v << 8 | p[i];
  return v;
}

}  // namespace

KvBlockManager::Hash KvBlockManager::ChainHash(const Hash& parent,
                                               std::span<const int32_t> tokens) {
  std::vector<unsigned char> bytes;
  bytes.reserve(16 + 4 * tokens.size());
  PutLe64(parent.hi, &bytes);
  PutLe64(parent.lo, &bytes);
  for (int32_t t : tokens) {
    const uint32_t u = static_cast<uint32_t>(t);
    for (int i = 0; i < 4; ++i) bytes.push_back(static_cast<unsigned char>(u >> (8 * i)));
  }
  unsigned char digest[EVP_MAX_MD_SIZE];
  unsigned int size = 0;
  if (EVP_Digest(bytes.data(), bytes.size(), digest, &size, EVP_sha256(), nullptr) != 1 ||
      size < 16) {
    // Not expected (SHA-256 is always there); a zero hash never matches a registered chain,
    // since Register refuses it too.
    spdlog::error("prefix cache: SHA-256 failed; the block is not cached");
    return Hash{};
  }
  return Hash{GetBe64(digest), GetBe64(digest + 8)};
}

KvBlockManager::KvBlockManager(int32_t block_size, bool prefix_caching)
    : block_size_(std::max(1, block_size)), prefix_caching_(prefix_caching) {}

void KvBlockManager::Reset(int64_t num_blocks) {
  // Block ids travel as int32 in the worker protocol.
  total_ = std::clamp<int64_t>(num_blocks, 0, std::numeric_limits<int32_t>::max());
  fresh_ = 0;
  // Swapped with empty ones, which gives the memory back (clear() would keep the capacity).
  std::vector<int32_t>().swap(free_list_);
  std::vector<Block>().swap(blocks_);
  std::unordered_map<Hash, int32_t, HashOf>().swap(cache_);
  lru_head_ = lru_tail_ = -1;
  evictable_ = 0;
}

void KvBlockManager::LruPushBack(int32_t block) {
  Block& b = blocks_[static_cast<size_t>(block)];
  b.lru_prev = lru_tail_;
  b.lru_next = -1;
  if (lru_tail_ >= 0) {
    blocks_[static_cast<size_t>(lru_tail_)].lru_next = block;
  } else {
    lru_head_ = block;
  }
  lru_tail_ = block;
  ++evictable_;
}

void KvBlockManager::LruRemove(int32_t block) {
  Block& b = blocks_[static_cast<size_t>(block)];
  if (b.lru_prev >= 0) {
    blocks_[static_cast<size_t>(b.lru_prev)].lru_next = b.lru_next;
  } else {
    lru_head_ = b.lru_next;
  }
  if (b.lru_next >= 0) {
    blocks_[static_cast<size_t>(b.lru_next)].lru_prev = b.lru_prev;
  } else {
    lru_tail_ = b.lru_prev;
  }
  b.lru_prev = b.lru_next = -1;
  --evictable_;
}

int32_t KvBlockManager::TakeBlock() {
  int32_t block;
  if (!free_list_.empty()) {
    block = free_list_.back();
    free_list_.pop_back();
  } else if (fresh_ < total_) {  // block 0 first, then upwards
    block = static_cast<int32_t>(fresh_++);
    blocks_.emplace_back();
  } else {  // evict the least recently released cached block
    block = lru_head_;
    LruRemove(block);
    Block& b = blocks_[static_cast<size_t>(block)];
    cache_.erase(b.hash);
    b.cached = false;
    std::vector<int32_t>().swap(b.tokens);
  }
  blocks_[static_cast<size_t>(block)].refs = 1;
  return block;
}

bool KvBlockManager::EnsureCapacity(int64_t tokens, std::vector<int32_t>* table) {
  const int64_t have = static_cast<int64_t>(table->size());
  const int64_t need = BlocksFor(tokens) - have;
  if (need <= 0) return true;
  if (need > free()) return false;
  for (int64_t i = 0; i < need; ++i) table->push_back(TakeBlock());
  return true;
}

void KvBlockManager::Free(std::vector<int32_t>* table) {
  for (auto it = table->rbegin(); it != table->rend(); ++it) {
    const int32_t block = *it;
    if (block < 0 || block >= fresh_ || blocks_[static_cast<size_t>(block)].refs <= 0) {
      spdlog::error("KV block {} freed but not allocated (of {}): ignored", block, total());
      continue;
    }
    Block& b = blocks_[static_cast<size_t>(block)];
    if (--b.refs > 0) continue;
    if (b.cached) {
      LruPushBack(block);
    } else {
      free_list_.push_back(block);
    }
  }
  table->clear();
}

KvBlockManager::Match KvBlockManager::Lookup(std::span<const int32_t> tokens,
                                             int64_t max_blocks) const {
  Match match;
  if (!prefix_caching_ || cache_.empty()) return match;
  const int64_t full = static_cast<int64_t>(tokens.size()) / block_size_;
  const int64_t n = std::min(full, max_blocks);
  Hash parent;
  for (int64_t k = 0; k < n; ++k) {
    const std::span<const int32_t> chunk = tokens.subspan(k * block_size_, block_size_);
    const Hash h = ChainHash(parent, chunk);
    auto it = cache_.find(h);
    if (it == cache_.end()) break;
    const Block& b = blocks_[static_cast<size_t>(it->second)];
    if (!std::equal(chunk.begin(), chunk.end(), b.tokens.begin(), b.tokens.end())) break;
    match.blocks.push_back(it->second);
    match.hashes.push_back(h);
    if (b.refs == 0) ++match.evictable;
    parent = h;
  }
  return match;
}

void KvBlockManager::Attach(const std::vector<int32_t>& blocks, std::vector<int32_t>* table) {
  for (int32_t block : blocks) {
    Block& b = blocks_[static_cast<size_t>(block)];
    if (b.refs++ == 0) LruRemove(block);
    table->push_back(block);
  }
}

void KvBlockManager::Register(std::span<const int32_t> tokens, int64_t computed,
                              const std::vector<int32_t>& table, std::vector<Hash>* hashes) {
  if (!prefix_caching_) return;
  const int64_t full = std::min({computed, static_cast<int64_t>(tokens.size()),
                                 static_cast<int64_t>(table.size()) * block_size_}) /
                       block_size_;
  for (int64_t k = static_cast<int64_t>(hashes->size()); k < full; ++k) {
    const std::span<const int32_t> chunk = tokens.subspan(k * block_size_, block_size_);
    const Hash h = ChainHash(k == 0 ? Hash{} : (*hashes)[static_cast<size_t>(k - 1)], chunk);
    hashes->push_back(h);
    const int32_t block = table[static_cast<size_t>(k)];
    Block& b = blocks_[static_cast<size_t>(block)];
    if (b.cached || h == Hash{}) continue;  // attached from the cache (this chain), or no hash
    if (!cache_.emplace(h, block).second) continue;  // computed twice: the first copy is cached
    b.cached = true;
    b.hash = h;
    b.tokens.assign(chunk.begin(), chunk.end());
  }
}

int32_t KvBlockManager::RefCount(int32_t block) const {
  if (block < 0 || block >= fresh_) return 0;
  return blocks_[static_cast<size_t>(block)].refs;
}

}  // namespace shardlm::coordinator
