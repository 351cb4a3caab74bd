// The shard plan rules of parallel/shard_plan.h, one test each.
#include "parallel/shard_plan.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

namespace shardlm {
namespace {

PlanInput Input(int64_t heads, int64_t kv_heads, int tp, int pp = 1) {
  PlanInput in;
  in.layers = 6;
  in.heads = heads;
  in.kv_heads = kv_heads;
  in.head_dim = 8;
  in.intermediate = 96;
  in.vocab = 256;
  in.tp = tp;
  in.pp = pp;
  return in;
}

std::vector<Range> QHeads(const ShardPlan& p) {
  std::vector<Range> out;
  for (const RankShard& s : p.ranks) out.push_back(s.q_heads);
  return out;
}
std::vector<Range> KvHeads(const ShardPlan& p) {
  std::vector<Range> out;
  for (const RankShard& s : p.ranks) out.push_back(s.kv_heads);
  return out;
}
using R = std::vector<Range>;

TEST(ShardPlanTest, EvenKvGroups) {
  auto p = MakeShardPlan(Input(8, 8, 2));
  ASSERT_TRUE(p.ok()) << p.status();
  EXPECT_EQ(QHeads(*p), (R{{0, 4}, {4, 8}}));
  EXPECT_EQ(KvHeads(*p), (R{{0, 4}, {4, 8}}));
  p = MakeShardPlan(Input(8, 2, 2));
  ASSERT_TRUE(p.ok());
  EXPECT_EQ(QHeads(*p), (R{{0, 4}, {4, 8}}));
  EXPECT_EQ(KvHeads(*p), (R{{0, 1}, {1, 2}}));
}

TEST(ShardPlanTest, UnevenKvGroupsGoWhole) {
  // 9 heads / 3 KV heads at tp=2: 6 Q + 2 KV, then 3 Q + 1 KV (SmolLM2's shape).
  auto p = MakeShardPlan(Input(9, 3, 2));
  ASSERT_TRUE(p.ok()) << p.status();
  EXPECT_EQ(QHeads(*p), (R{{0, 6}, {6, 9}}));
  EXPECT_EQ(KvHeads(*p), (R{{0, 2}, {2, 3}}));
  // 8 / 8 at tp=3: 3 + 3 + 2 whole (one-head) groups.
  p = MakeShardPlan(Input(8, 8, 3));
  ASSERT_TRUE(p.ok());
  EXPECT_EQ(QHeads(*p), (R{{0, 3}, {3, 6}, {6, 8}}));
  EXPECT_EQ(KvHeads(*p), (R{{0, 3}, {3, 6}, {6, 8}}));
}

TEST(ShardPlanTest, KvHeadsReplicatedWhenTpExceedsThem) {
  auto p = MakeShardPlan(Input(8, 2, 4));
  ASSERT_TRUE(p.ok()) << p.status();
  EXPECT_EQ(QHeads(*p), (R{{0, 2}, {2, 4}, {4, 6}, {6, 8}}));
  EXPECT_EQ(KvHeads(*p), (R{{0, 1}, {0, 1}, {1, 2}, {1, 2}}));
  // 8 / 2 at tp=3: KV head 0 on two ranks, KV head 1 on one.
  p = MakeShardPlan(Input(8, 2, 3));
  ASSERT_TRUE(p.ok());
  EXPECT_EQ(QHeads(*p), (R{{0, 2}, {2, 4}, {4, 8}}));
  EXPECT_EQ(KvHeads(*p), (R{{0, 1}, {0, 1}, {1, 2}}));
  // 4 / 1 (MQA) at tp=3: the one KV head everywhere, Q heads 2 + 1 + 1.
  p = MakeShardPlan(Input(4, 1, 3));
  ASSERT_TRUE(p.ok());
  EXPECT_EQ(QHeads(*p), (R{{0, 2}, {2, 3}, {3, 4}}));
  EXPECT_EQ(KvHeads(*p), (R{{0, 1}, {0, 1}, {0, 1}}));
}

TEST(ShardPlanTest, MoreRanksThanHeadsIsAnError) {
  auto p = MakeShardPlan(Input(4, 1, 5));
  ASSERT_FALSE(p.ok());
  EXPECT_THAT(std::string(p.status().message()), testing::HasSubstr("tp=5 exceeds the number of attention heads (4)"));
}

TEST(ShardPlanTest, IntermediateSplitsUnevenlyOnBlocks) {
  PlanInput in = Input(8, 2, 3);
  in.intermediate = 100;
  auto p = MakeShardPlan(in);
  ASSERT_TRUE(p.ok());
  EXPECT_EQ(p->ranks[0].intermediate, (Range{0, 34}));
  EXPECT_EQ(p->ranks[1].intermediate, (Range{34, 67}));
  EXPECT_EQ(p->ranks[2].intermediate, (Range{67, 100}));
  // Quantized down projection (256-element blocks): whole blocks per rank, 3 + 2.
  in = Input(8, 2, 2);
  in.intermediate = 1280;
  in.intermediate_align = 256;
  p = MakeShardPlan(in);
  ASSERT_TRUE(p.ok());
  EXPECT_EQ(p->ranks[0].intermediate, (Range{0, 768}));
  EXPECT_EQ(p->ranks[1].intermediate, (Range{768, 1280}));
  // Not a whole number of blocks: plain split (the loader dequantizes the cut slices).
  in.intermediate = 1000;
  p = MakeShardPlan(in);
  ASSERT_TRUE(p.ok());
  EXPECT_EQ(p->ranks[0].intermediate, (Range{0, 500}));
}

TEST(ShardPlanTest, VocabularySplitsByRows) {
  PlanInput in = Input(8, 2, 2);
  in.vocab = 257;
  auto p = MakeShardPlan(in);
  ASSERT_TRUE(p.ok());
  EXPECT_EQ(p->ranks[0].vocab, (Range{0, 129}));
  EXPECT_EQ(p->ranks[1].vocab, (Range{129, 257}));
}

TEST(ShardPlanTest, RankLayoutAndStages) {
  auto p = MakeShardPlan(Input(8, 2, 2, 3));
  ASSERT_TRUE(p.ok());
  ASSERT_EQ(p->ranks.size(), 6u);
  for (int r = 0; r < 6; ++r) {
    EXPECT_EQ(p->ranks[r].rank, r);
    EXPECT_EQ(p->ranks[r].stage, r / 2);
    EXPECT_EQ(p->ranks[r].tp_rank, r % 2);
    EXPECT_EQ(p->ranks[r].first_stage, r / 2 == 0);
    EXPECT_EQ(p->ranks[r].last_stage, r / 2 == 2);
    EXPECT_EQ(p->ranks[r].layers, (Range{2 * (r / 2), 2 * (r / 2) + 2}));
  }
  PlanInput in = Input(8, 2, 1, 2);
  in.layers = 5;
  p = MakeShardPlan(in);
  ASSERT_TRUE(p.ok());
  EXPECT_EQ(p->ranks[0].layers, (Range{0, 3}));
  EXPECT_EQ(p->ranks[1].layers, (Range{3, 5}));
}

TEST(ShardPlanTest, ExplicitStageBoundaries) {
  PlanInput in = Input(8, 2, 1, 3);
  in.pp_layers = {1, 4};
  auto p = MakeShardPlan(in);
  ASSERT_TRUE(p.ok()) << p.status();
  EXPECT_EQ(p->ranks[0].layers, (Range{0, 1}));
  EXPECT_EQ(p->ranks[1].layers, (Range{1, 4}));
  EXPECT_EQ(p->ranks[2].layers, (Range{4, 6}));
  in.pp_layers = {4, 4};
  EXPECT_THAT(std::string(MakeShardPlan(in).status().message()),
              testing::HasSubstr("--pp-layers: boundary 1 is 4"));
  in.pp_layers = {2};
  EXPECT_THAT(std::string(MakeShardPlan(in).status().message()),
              testing::HasSubstr("expected pp - 1 = 2 stage boundaries, got 1"));
  EXPECT_THAT(std::string(ParseLayerList("3,x").status().message()),
              testing::HasSubstr("element 1 is 'x'"));
}

PlanInput MoeInput(int tp, int ep, int64_t experts = 8) {
  PlanInput in = Input(8, 2, tp);
  in.experts = experts;
  in.moe_intermediate = 64;
  in.ep = ep;
  return in;
}

TEST(ShardPlanTest, ExpertsSliceAcrossTpWithoutEp) {
  auto plan = MakeShardPlan(MoeInput(2, 1));
  ASSERT_TRUE(plan.ok()) << plan.status();
  EXPECT_EQ(plan->ep, 1);
  for (const RankShard& s : plan->ranks) EXPECT_EQ(s.experts, (Range{0, 8}));
  EXPECT_EQ(plan->ranks[0].moe_intermediate, (Range{0, 32}));
  EXPECT_EQ(plan->ranks[1].moe_intermediate, (Range{32, 64}));
}

TEST(ShardPlanTest, ExpertParallelGroupsHoldWholeExperts) {
  auto whole = MakeShardPlan(MoeInput(2, 2));
  ASSERT_TRUE(whole.ok()) << whole.status();
  EXPECT_EQ(whole->ranks[0].experts, (Range{0, 4}));
  EXPECT_EQ(whole->ranks[1].experts, (Range{4, 8}));
  for (const RankShard& s : whole->ranks) EXPECT_EQ(s.moe_intermediate, (Range{0, 64}));
  // tp 4, ep 2: two groups of two ranks, each expert split over its group, aligned to blocks.
  PlanInput in = MoeInput(4, 2);
  in.moe_align = 32;
  auto split = MakeShardPlan(in);
  ASSERT_TRUE(split.ok()) << split.status();
  const std::vector<Range> experts = {{0, 4}, {0, 4}, {4, 8}, {4, 8}};
  const std::vector<Range> cols = {{0, 32}, {32, 64}, {0, 32}, {32, 64}};
  for (int r = 0; r < 4; ++r) {
    EXPECT_EQ(split->ranks[r].experts, experts[r]) << "rank " << r;
    EXPECT_EQ(split->ranks[r].moe_intermediate, cols[r]) << "rank " << r;
  }
  // A dense model holds no experts.
  auto dense = MakeShardPlan(Input(8, 2, 2));
  ASSERT_TRUE(dense.ok());
  EXPECT_TRUE(dense->ranks[0].experts.empty());
}

TEST(ShardPlanTest, BadExpertParallelismIsAnError) {
  auto message = [](const PlanInput& in) { return std::string(MakeShardPlan(in).status().message()); };
  EXPECT_THAT(message(MoeInput(2, 3)), testing::HasSubstr("--ep 3 does not divide --tp 2"));
  EXPECT_THAT(message(MoeInput(3, 3)), testing::HasSubstr("--ep 3 does not divide the 8 experts"));
  EXPECT_THAT(message(MoeInput(2, 0)), testing::HasSubstr("--ep must be >= 1, got 0"));
  EXPECT_THAT(message(MoeInput(2, 2, 0)),
              testing::HasSubstr("--ep 2: expert parallelism needs a mixture-of-experts model"));
}

TEST(ShardPlanTest, ImpossibleShapesAreErrors) {
  EXPECT_THAT(std::string(MakeShardPlan(Input(8, 2, 1, 7)).status().message()),
              testing::HasSubstr("pp=7 exceeds the number of layers (6)"));
  EXPECT_THAT(std::string(MakeShardPlan(Input(8, 2, 0)).status().message()),
              testing::HasSubstr("tp and pp must be >= 1"));
  PlanInput in = Input(8, 2, 4);
  in.vocab = 3;
  EXPECT_THAT(std::string(MakeShardPlan(in).status().message()),
              testing::HasSubstr("tp=4 exceeds the vocabulary size (3)"));
}

}  // namespace
}  // namespace shardlm
