#include "coordinator/kv_block_manager.h"

#include <set>

#include "gtest/gtest.h"

namespace shardlm::coordinator {
namespace {

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

}  // namespace
}  // namespace shardlm::coordinator
