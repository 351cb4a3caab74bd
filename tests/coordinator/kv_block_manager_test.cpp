#include "coordinator/kv_block_manager.h"

#include <limits>
#include <set>
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
  ASSERT_TRUE(m.EnsureCapacity(4 * 16, &b));  // freed ones first, most recent first
  EXPECT_EQ(b, (std::vector<int32_t>{2, 1, 0, 3}));
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

}  // namespace
}  // namespace shardlm::coordinator
