// The KV cache's block accounting: fixed-size blocks of kv_block_size token positions, as many
// as the workers reported room for. The coordinator owns the block tables; the workers hold the
// memory and write whatever blocks a step's tables name. The bookkeeping grows with the blocks
// handed out, never with the total a job reports: blocks never used cost nothing here. Not
// thread-safe (the engine's lock).
//
// Automatic prefix caching (on unless constructed with prefix_caching = false). Blocks are
// ref-counted: a table that holds a block is one reference. A FULL block whose K/V were computed
// can be registered under the hash of its chain: hash(parent block's hash, its block_size
// tokens), the first block's parent being the zero hash, so a block's hash stands for every
// token before it as well. When its last reference goes, a registered block is not freed but
// kept as "evictable": a later sequence whose tokens have the same chain attaches it (Match,
// Attach) instead of recomputing it. A new block comes from the free blocks first, then by
// evicting the least recently released evictable block (LRU). Evictable blocks count as free
// for admission. Only full blocks are shared, and a sequence only ever writes positions past
// the blocks it attached, so a shared block is never written.
//
// The hash: SHA-256 of (parent's 128-bit hash, the block's tokens as little-endian int32),
// truncated to 128 bits; a hit also compares the block's tokens with the stored ones. A
// collision would silently give a request another prompt's K/V (wrong output, and another
// client's prompt leaking into it), so the hash is cryptographic: no client can craft a prompt
// that collides with another's chain, and an accidental collision among n blocks has
// probability about n^2 / 2^129. It costs about a microsecond per block of 16 tokens.
#pragma once

#include <cstdint>
#include <span>
#include <unordered_map>
#include <vector>

namespace shardlm::coordinator {

class KvBlockManager {
 public:
  struct Hash {
    uint64_t hi = 0;
    uint64_t lo = 0;
    bool operator==(const Hash&) const = default;
  };
  // hash(parent, tokens) as described above (tokens: one block's).
  static Hash ChainHash(const Hash& parent, std::span<const int32_t> tokens);

  explicit KvBlockManager(int32_t block_size, bool prefix_caching = true);

  // Forgets every allocation and every cached block (releasing their memory) and makes
  // `num_blocks` blocks free (0 while no workers are attached). Tables handed out before must
  // not be freed afterwards. A new worker job has empty KV memory, so nothing cached survives.
  void Reset(int64_t num_blocks);

  int32_t block_size() const { return block_size_; }
  bool prefix_caching() const { return prefix_caching_; }
  int64_t total() const { return total_; }
  // Blocks a new allocation can take: never used, freed, or cached and evictable.
  int64_t free() const {
    return static_cast<int64_t>(free_list_.size()) + (total_ - fresh_) + evictable_;
  }
  // Cached blocks that no table holds (included in free()).
  int64_t evictable() const { return evictable_; }
  // Blocks registered in the prefix cache (held or evictable).
  int64_t cached() const { return static_cast<int64_t>(cache_.size()); }
  // Blocks that hold `tokens` positions.
  int64_t BlocksFor(int64_t tokens) const { return (tokens + block_size_ - 1) / block_size_; }

  // Appends blocks to *table until it covers positions [0, tokens): free blocks first, then
  // evicted LRU cached ones. False, with the table unchanged, when there are not enough.
  bool EnsureCapacity(int64_t tokens, std::vector<int32_t>* table);
  // Drops one reference to every block of *table and clears it: a block left with none is
  // freed, or becomes evictable when it is cached (the table's last block first, so that a
  // chain is evicted from its end). Blocks that are not allocated (a bug) are skipped, never
  // freed twice.
  void Free(std::vector<int32_t>* table);

  // The cached blocks that start `tokens`: the longest chain of at most `max_blocks` full
  // blocks found in the cache. Changes nothing (Attach takes them).
  struct Match {
    std::vector<int32_t> blocks;
    std::vector<Hash> hashes;  // of each block's chain
    int64_t evictable = 0;     // how many of the blocks no table holds now (free() drops by it)
  };
  Match Lookup(std::span<const int32_t> tokens, int64_t max_blocks) const;
  // Takes a reference to each of `blocks` (from Lookup, with no allocation or eviction since)
  // and appends them to the empty *table.
  void Attach(const std::vector<int32_t>& blocks, std::vector<int32_t>* table);
  // Registers the full blocks of `table` that cover tokens[0, computed) and are not yet in
  // *hashes (the chain hashes of the table's leading blocks, extended here). A block whose chain
  // is already cached under another block stays private to its table (freed, not cached, when
  // released). No-op when prefix caching is off.
  void Register(std::span<const int32_t> tokens, int64_t computed,
                const std::vector<int32_t>& table, std::vector<Hash>* hashes);

  // References held on `block` (tests).
  int32_t RefCount(int32_t block) const;

 private:
  struct HashOf {
    size_t operator()(const Hash& h) const { return static_cast<size_t>(h.lo); }
  };
  struct Block {
    int32_t refs = 0;
    bool cached = false;  // registered under `hash`
    Hash hash;
    std::vector<int32_t> tokens;           // when cached: its tokens, compared on a hit
    int32_t lru_prev = -1, lru_next = -1;  // when cached and unreferenced: the LRU list
  };
  int32_t TakeBlock();  // needs free() > 0
  void LruPushBack(int32_t block);
  void LruRemove(int32_t block);

  int32_t block_size_;
  bool prefix_caching_;
  int64_t total_ = 0;
  int64_t fresh_ = 0;               // blocks [fresh_, total_) were never handed out since Reset
  std::vector<int32_t> free_list_;  // freed blocks, a stack: reused first, most recent first
  std::vector<Block> blocks_;       // of blocks [0, fresh_)
  std::unordered_map<Hash, int32_t, HashOf> cache_;  // chain hash -> block
  int32_t lru_head_ = -1, lru_tail_ = -1;  // evictable blocks, least recently released first
  int64_t evictable_ = 0;
};

}  // namespace shardlm::coordinator
