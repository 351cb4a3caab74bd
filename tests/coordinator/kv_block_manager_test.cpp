#include "coordinator/kv_block_manager.h"

#include <limits>
#include <set>
#include <span>
#include <string>

#include "gtest/gtest.h"
#include "tests/coordinator/proc_memory.h"

namespace shardlm::coordinator {
namespace {

using testing::RssKib;

TEST(KvBlockManagerTest, AllocatesBlocksForPositionsAndFreesThem) {
  KvBlockManager m(4);
  m.Reset(5);
  EXPECT_EQ(m.total(), 5);
  EXPECT_EQ(m.free(), 5);
  EXPECT_EQ(m.BlocksFor(0), 0);
  EXPECT_EQ(m.BlocksFor(1), 1);
  EXPECT_EQ(m.BlocksFor(4), 1);
  EXPECT_EQ(m.BlocksFor(5), 2);
  std::vector<int32_t> a, b;
  ASSERT_TRUE(m.EnsureCapacity(5, &a));  // 2 blocks
  EXPECT_EQ(a.size(), 2u);
  ASSERT_TRUE(m.EnsureCapacity(8, &a));  // still 2
  EXPECT_EQ(a.size(), 2u);
  ASSERT_TRUE(m.EnsureCapacity(9, &a));  // a third
  EXPECT_EQ(a.size(), 3u);
  ASSERT_TRUE(m.EnsureCapacity(1, &b));
  EXPECT_EQ(m.free(), 1);
  std::set<int32_t> distinct(a.begin(), a.end());
  distinct.insert(b.begin(), b.end());
  EXPECT_EQ(distinct.size(), 4u);
  for (int32_t block : distinct) {
    EXPECT_GE(block, 0);
    EXPECT_LT(block, 5);
  }
  m.Free(&a);
  EXPECT_TRUE(a.empty());
  EXPECT_EQ(m.free(), 4);
  m.Free(&b);
  EXPECT_EQ(m.free(), 5);
}

TEST(KvBlockManagerTest, ExhaustionLeavesTheTableUnchanged) {
  KvBlockManager m(2);
  m.Reset(3);
  std::vector<int32_t> a;
  ASSERT_TRUE(m.EnsureCapacity(4, &a));
  EXPECT_FALSE(m.EnsureCapacity(7, &a));  // needs 2 more, 1 free
  EXPECT_EQ(a.size(), 2u);
  EXPECT_EQ(m.free(), 1);
  EXPECT_TRUE(m.EnsureCapacity(6, &a));
  EXPECT_EQ(m.free(), 0);
  std::vector<int32_t> b;
  EXPECT_FALSE(m.EnsureCapacity(1, &b));
  EXPECT_TRUE(b.empty());
}

TEST(KvBlockManagerTest, FreeingTwiceOrForeignBlocksNeverCorrupts) {
  KvBlockManager m(4);
  m.Reset(2);
  std::vector<int32_t> a;
  ASSERT_TRUE(m.EnsureCapacity(4, &a));
  std::vector<int32_t> copy = a;
  m.Free(&a);
  m.Free(&copy);  // already free: ignored
  EXPECT_EQ(m.free(), 2);
  std::vector<int32_t> bogus = {-1, 7};
  m.Free(&bogus);
  EXPECT_EQ(m.free(), 2);
  // Both blocks come back exactly once.
  std::vector<int32_t> all;
  ASSERT_TRUE(m.EnsureCapacity(8, &all));
  EXPECT_NE(all[0], all[1]);
  EXPECT_FALSE(m.EnsureCapacity(9, &all));
}

TEST(KvBlockManagerTest, ResetToZeroMeansNothingToAllocate) {
  KvBlockManager m(16);
  EXPECT_EQ(m.total(), 0);
  std::vector<int32_t> a;
  EXPECT_FALSE(m.EnsureCapacity(1, &a));
  EXPECT_TRUE(m.EnsureCapacity(0, &a));
  m.Reset(10);
  EXPECT_TRUE(m.EnsureCapacity(160, &a));
  m.Reset(0);
  EXPECT_EQ(m.total(), 0);
  EXPECT_EQ(m.free(), 0);
}

// A worker job reporting an absurd number of blocks must not make the coordinator allocate in
// proportion (issue 12: 2^31-1 blocks once grew it to 8.4 GB). The attach refuses such numbers
// (worker_checks.h); the manager itself also costs only what is handed out.
TEST(KvBlockManagerTest, BookkeepingGrowsWithBlocksInUseNotWithTheTotal) {
  const int64_t before = RssKib();
  KvBlockManager m(16);
  m.Reset(std::numeric_limits<int32_t>::max());
  EXPECT_EQ(m.total(), std::numeric_limits<int32_t>::max());
  EXPECT_EQ(m.free(), m.total());
  std::vector<int32_t> a, b;
  ASSERT_TRUE(m.EnsureCapacity(3 * 16, &a));
  EXPECT_EQ(a, (std::vector<int32_t>{0, 1, 2}));
  EXPECT_EQ(m.free(), m.total() - 3);
  m.Free(&a);
  // Freed ones first, most recent first; a table is released from its end, so its first block
  // is the most recent.
  ASSERT_TRUE(m.EnsureCapacity(4 * 16, &b));
  EXPECT_EQ(b, (std::vector<int32_t>{0, 1, 2, 3}));
  if (before > 0) {
    EXPECT_LT(RssKib() - before, 64 * 1024) << "KiB grown";
  }
  m.Free(&b);
  EXPECT_EQ(m.free(), m.total());
  // Reset gives the memory of a large pool back.
  m.Reset(1 << 20);
  std::vector<int32_t> big;
  ASSERT_TRUE(m.EnsureCapacity(int64_t{1 << 20} * 16, &big));
  EXPECT_EQ(m.free(), 0);
  m.Free(&big);
  EXPECT_EQ(m.free(), 1 << 20);
  m.Reset(0);
  EXPECT_EQ(m.total(), 0);
  EXPECT_EQ(m.free(), 0);
}

using Hash = KvBlockManager::Hash;

std::vector<int32_t> Iota(int32_t from, int n) {
  std::vector<int32_t> v;
  for (int i = 0; i < n; ++i) v.push_back(from + i);
  return v;
}

// The chain hashes of the full blocks of `tokens`.
std::vector<Hash> Chain(const std::vector<int32_t>& tokens, int32_t bs) {
  std::vector<Hash> chain;
  Hash parent;
  for (size_t k = 0; (k + 1) * bs <= tokens.size(); ++k) {
    parent = KvBlockManager::ChainHash(parent, std::span(tokens).subspan(k * bs, bs));
    chain.push_back(parent);
  }
  return chain;
}

// A sequence's life in the manager: blocks for `tokens`, all of them computed and registered.
std::vector<int32_t> Computed(KvBlockManager& m, const std::vector<int32_t>& tokens,
                              std::vector<Hash>* hashes = nullptr) {
  std::vector<int32_t> table;
  EXPECT_TRUE(m.EnsureCapacity(static_cast<int64_t>(tokens.size()), &table));
  std::vector<Hash> local;
  m.Register(tokens, static_cast<int64_t>(tokens.size()), table, hashes ? hashes : &local);
  return table;
}

TEST(PrefixCacheTest, HashChains) {
  const std::vector<int32_t> a = Iota(10, 12);  // 3 blocks of 4
  std::vector<int32_t> b = a;
  b[1] = 99;  // the first block differs
  std::vector<int32_t> c = a;
  c[9] = 99;  // only the third differs
  const std::vector<Hash> ha = Chain(a, 4), hb = Chain(b, 4), hc = Chain(c, 4);
  ASSERT_EQ(ha.size(), 3u);
  EXPECT_EQ(ha, Chain(a, 4));  // the same tokens, the same chain
  // A different earlier block changes every later hash, even where the tokens are equal.
  for (int k = 0; k < 3; ++k) EXPECT_NE(ha[k], hb[k]) << k;
  EXPECT_EQ(ha[0], hc[0]);
  EXPECT_EQ(ha[1], hc[1]);
  EXPECT_NE(ha[2], hc[2]);
  // Position matters: the same block after another parent, or as the first block, differs.
  EXPECT_NE(KvBlockManager::ChainHash(Hash{}, std::span(a).subspan(4, 4)), ha[1]);
  // Every token's bits count (ids differing in a high byte, or negative).
  const std::vector<int32_t> high = {1 << 24, 0, 0, 0}, low = {0, 0, 0, 0}, neg = {-1, 0, 0, 0};
  EXPECT_NE(KvBlockManager::ChainHash({}, high), KvBlockManager::ChainHash({}, low));
  EXPECT_NE(KvBlockManager::ChainHash({}, neg), KvBlockManager::ChainHash({}, low));
  EXPECT_NE(ha[0], Hash{});
}

TEST(PrefixCacheTest, FullComputedBlocksAreReusedPartialOnesNot) {
  KvBlockManager m(4);
  m.Reset(10);
  const std::vector<int32_t> tokens = Iota(1, 10);  // 2 full blocks and a partial one
  std::vector<int32_t> a = Computed(m, tokens);
  EXPECT_EQ(m.cached(), 2);  // the partial third block is not cached
  EXPECT_EQ(m.evictable(), 0);
  // A second prompt with the same 10 tokens and more finds the two full blocks, held by `a`.
  std::vector<int32_t> longer = Iota(1, 14);
  KvBlockManager::Match hit = m.Lookup(longer, 100);
  EXPECT_EQ(hit.blocks, (std::vector<int32_t>{a[0], a[1]}));
  EXPECT_EQ(hit.hashes, Chain(std::vector<int32_t>(tokens.begin(), tokens.begin() + 8), 4));
  EXPECT_EQ(hit.evictable, 0);
  EXPECT_EQ(m.Lookup(longer, 1).blocks.size(), 1u);  // capped
  std::vector<int32_t> other = longer;
  other[5] = 0;  // the second block differs
  EXPECT_EQ(m.Lookup(other, 100).blocks.size(), 1u);
  other[0] = 0;
  EXPECT_TRUE(m.Lookup(other, 100).blocks.empty());
  // Blocks registered only up to what is computed: 6 of 8 tokens leave the second uncached.
  KvBlockManager m2(4);
  m2.Reset(4);
  std::vector<int32_t> t2;
  ASSERT_TRUE(m2.EnsureCapacity(8, &t2));
  std::vector<Hash> h2;
  m2.Register(tokens, 6, t2, &h2);
  EXPECT_EQ(m2.cached(), 1);
  EXPECT_EQ(h2.size(), 1u);
  m2.Register(tokens, 8, t2, &h2);  // later: the rest, once
  EXPECT_EQ(m2.cached(), 2);
  EXPECT_EQ(h2.size(), 2u);

  // Released, the cached blocks stay (evictable, counted free); the partial one is freed.
  m.Free(&a);
  EXPECT_EQ(m.free(), 10);
  EXPECT_EQ(m.evictable(), 2);
  hit = m.Lookup(longer, 100);
  ASSERT_EQ(hit.blocks.size(), 2u);
  EXPECT_EQ(hit.evictable, 2);
  std::vector<int32_t> b;
  m.Attach(hit.blocks, &b);
  EXPECT_EQ(m.evictable(), 0);
  EXPECT_EQ(m.free(), 8);
  EXPECT_EQ(m.RefCount(b[0]), 1);
  ASSERT_TRUE(m.EnsureCapacity(14, &b));
  EXPECT_EQ(b.size(), 4u);
  // Two holders: one reference each; a block is evictable only when both let go.
  std::vector<int32_t> c;
  m.Attach(m.Lookup(longer, 100).blocks, &c);
  EXPECT_EQ(m.RefCount(b[0]), 2);
  m.Free(&b);
  EXPECT_EQ(m.RefCount(c[0]), 1);
  EXPECT_EQ(m.evictable(), 0);  // c still holds both; b's own blocks were never registered
  m.Free(&c);
  EXPECT_EQ(m.evictable(), 2);
  EXPECT_EQ(m.free(), 10);
}

TEST(PrefixCacheTest, EvictsTheLeastRecentlyReleasedAndNeverAHeldBlock) {
  KvBlockManager m(2);
  m.Reset(6);
  // Three sequences of one full block each (and a held fourth), released in the order y, x, z.
  const std::vector<int32_t> x = {1, 2}, y = {3, 4}, z = {5, 6}, held = {7, 8};
  std::vector<int32_t> tx = Computed(m, x), ty = Computed(m, y), tz = Computed(m, z);
  std::vector<int32_t> th = Computed(m, held);
  const int32_t bx = tx[0], by = ty[0], bz = tz[0], bh = th[0];
  m.Free(&ty);
  m.Free(&tx);
  m.Free(&tz);
  EXPECT_EQ(m.evictable(), 3);
  EXPECT_EQ(m.free(), 5);  // 2 never used + 3 evictable
  // Never-used blocks go first: nothing is evicted yet.
  std::vector<int32_t> n1;
  ASSERT_TRUE(m.EnsureCapacity(4, &n1));
  EXPECT_EQ(m.cached(), 4);
  // Reusing x makes it the most recently used: it is released again last.
  std::vector<int32_t> again;
  m.Attach(m.Lookup(std::vector<int32_t>{1, 2, 0}, 1).blocks, &again);
  EXPECT_EQ(again, (std::vector<int32_t>{bx}));
  m.Free(&again);
  // Memory pressure: y (released first) goes, then z, then x; the held block never.
  std::vector<int32_t> n2;
  ASSERT_TRUE(m.EnsureCapacity(2, &n2));
  EXPECT_EQ(n2, (std::vector<int32_t>{by}));
  EXPECT_TRUE(m.Lookup(y, 1).blocks.empty());
  EXPECT_EQ(m.Lookup(z, 1).blocks.size(), 1u);
  ASSERT_TRUE(m.EnsureCapacity(4, &n2));
  EXPECT_EQ(n2.back(), bz);
  ASSERT_TRUE(m.EnsureCapacity(6, &n2));
  EXPECT_EQ(n2.back(), bx);
  EXPECT_EQ(m.free(), 0);
  EXPECT_EQ(m.cached(), 1);  // the held one
  EXPECT_FALSE(m.EnsureCapacity(8, &n2));
  EXPECT_EQ(m.RefCount(bh), 1);
  EXPECT_EQ(m.Lookup(held, 1).blocks, (std::vector<int32_t>{bh}));
  // An evicted block reused and registered for other tokens is found by its new chain only.
  std::vector<int32_t> new_tokens = {9, 9, 9, 9, 9, 9};
  std::vector<Hash> hashes;
  m.Register(new_tokens, 6, n2, &hashes);
  EXPECT_EQ(m.Lookup(new_tokens, 3).blocks, n2);
  EXPECT_TRUE(m.Lookup(x, 1).blocks.empty());
}

TEST(PrefixCacheTest, ReleasedChainsAreEvictedFromTheirEnd) {
  KvBlockManager m(2);
  m.Reset(3);
  const std::vector<int32_t> t = {1, 2, 3, 4, 5, 6};
  std::vector<int32_t> a = Computed(m, t);
  m.Free(&a);
  std::vector<int32_t> n;
  ASSERT_TRUE(m.EnsureCapacity(2, &n));         // takes the chain's last block
  EXPECT_EQ(m.Lookup(t, 3).blocks.size(), 2u);  // its first two still hit
}

TEST(PrefixCacheTest, ADuplicateStaysPrivateAndResetDropsTheCache) {
  KvBlockManager m(2);
  m.Reset(4);
  const std::vector<int32_t> t = {1, 2};
  std::vector<int32_t> a = Computed(m, t), b = Computed(m, t);  // computed twice
  EXPECT_EQ(m.cached(), 1);
  EXPECT_EQ(m.Lookup(t, 1).blocks, a);
  m.Free(&b);  // the duplicate is simply freed
  EXPECT_EQ(m.evictable(), 0);
  EXPECT_EQ(m.free(), 3);
  m.Free(&a);
  EXPECT_EQ(m.evictable(), 1);
  // A new worker job has empty memory: nothing cached survives a Reset.
  m.Reset(4);
  EXPECT_EQ(m.cached(), 0);
  EXPECT_TRUE(m.Lookup(t, 1).blocks.empty());
  EXPECT_EQ(m.free(), 4);
}

TEST(PrefixCacheTest, OffCachesNothing) {
  KvBlockManager m(2, /*prefix_caching=*/false);
  m.Reset(4);
  const std::vector<int32_t> t = {1, 2, 3, 4};
  std::vector<int32_t> a = Computed(m, t);
  EXPECT_EQ(m.cached(), 0);
  EXPECT_TRUE(m.Lookup(t, 2).blocks.empty());
  m.Free(&a);
  EXPECT_EQ(m.evictable(), 0);
  EXPECT_EQ(m.free(), 4);
}

}  // namespace
}  // namespace shardlm::coordinator
