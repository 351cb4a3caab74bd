// The prefill budget of steps that carry decodes (coordinator/step_budget.h): the fixed chunk
// before the cost model is fitted, the linear fit through one point per token bucket, the ratio
// and the millisecond bound, no budget without decodes, never less than one token.
#include "coordinator/step_budget.h"

#include <cmath>
#include <limits>

#include "gtest/gtest.h"

namespace shardlm::coordinator {
namespace {

StepSize Tokens(int64_t tokens) { return {1, tokens, tokens}; }

// Steps that cost exactly overhead + per_token * tokens, at sizes across several buckets.
void ObserveLine(StepBudget* budget, double overhead, double per_token) {
  for (int64_t n : {1, 8, 8, 40, 200, 512}) budget->Observe(Tokens(n), overhead + per_token * n);
}

TEST(StepBudgetTest, NoDecodesNoBudget) {
  StepBudget budget;
  EXPECT_EQ(budget.PrefillBudget(0, 0), StepBudget::kUnlimited);
  ObserveLine(&budget, 10, 2);
  EXPECT_EQ(budget.PrefillBudget(0, 0), StepBudget::kUnlimited);
  EXPECT_LT(budget.PrefillBudget(1, 1), StepBudget::kUnlimited);
}

TEST(StepBudgetTest, BothBoundsOffNoBudget) {
  StepBudget budget(StepBudgetOptions{.ratio = 0, .max_step_ms = 0});
  ObserveLine(&budget, 10, 2);
  EXPECT_EQ(budget.PrefillBudget(8, 8), StepBudget::kUnlimited);
}

TEST(StepBudgetTest, ColdStartUsesTheFixedChunk) {
  StepBudget budget(StepBudgetOptions{.cold_chunk = 24, .min_steps = 4});
  EXPECT_FALSE(budget.CostModel());
  EXPECT_EQ(budget.PrefillBudget(8, 8), 24);
  // Too few steps, though of different sizes.
  budget.Observe(Tokens(8), 26);
  budget.Observe(Tokens(512), 1034);
  budget.Observe(Tokens(8), 26);
  EXPECT_FALSE(budget.CostModel());
  EXPECT_EQ(budget.PrefillBudget(8, 8), 24);
  budget.Observe(Tokens(64), 138);
  ASSERT_TRUE(budget.CostModel());
  EXPECT_NE(budget.PrefillBudget(8, 8), 24);
}

// Decode-only steps of one batch size say nothing about the cost of a prefill token.
TEST(StepBudgetTest, DecodeOnlyStepsOfOneSizeFitNothing) {
  StepBudget budget(StepBudgetOptions{.cold_chunk = 16});
  for (int i = 0; i < 20; ++i) budget.Observe(Tokens(8), 30 + i % 3);
  EXPECT_FALSE(budget.CostModel());
  EXPECT_EQ(budget.PrefillBudget(8, 8), 16);
  // Sizes in neighbouring buckets but less than 2x apart: still no slope to trust.
  for (int i = 0; i < 5; ++i) budget.Observe(Tokens(7), 29);
  EXPECT_FALSE(budget.CostModel());
  // Decode-only steps of 1 and of 8 sequences do give one.
  for (int i = 0; i < 5; ++i) budget.Observe(Tokens(1), 16);
  ASSERT_TRUE(budget.CostModel());
  EXPECT_GT(budget.CostModel()->per_token_ms, 0);
}

// Budgets below land between integers, so that rounding in the fit cannot move them.
TEST(StepBudgetTest, LinearFitGivesTheRatioAndTheMillisecondBound) {
  StepBudget ratio(StepBudgetOptions{.ratio = 2.0});
  ObserveLine(&ratio, 11, 2);
  ASSERT_TRUE(ratio.CostModel());
  EXPECT_NEAR(ratio.CostModel()->overhead_ms, 11, 1e-6);
  EXPECT_NEAR(ratio.CostModel()->per_token_ms, 2, 1e-9);
  // 8 decodes: 27 ms alone; 2 x 27 = 54 ms leaves 27 ms: 13.5 tokens.
  EXPECT_EQ(ratio.PrefillBudget(8, 8), 13);
  // 1 decode: 13 ms; 26 ms leaves 6.5 tokens.
  EXPECT_EQ(ratio.PrefillBudget(1, 1), 6);
  // 2.5x: 1.5 x 27 ms of prefill, 20.25 tokens.
  StepBudget ratio25(StepBudgetOptions{.ratio = 2.5});
  ObserveLine(&ratio25, 11, 2);
  EXPECT_EQ(ratio25.PrefillBudget(8, 8), 20);

  StepBudget ms(StepBudgetOptions{.ratio = 0, .max_step_ms = 42});
  ObserveLine(&ms, 11, 2);
  EXPECT_EQ(ms.PrefillBudget(8, 8), 7);  // (42 - 27) / 2
  // Both: the tighter one.
  StepBudget both(StepBudgetOptions{.ratio = 2.0, .max_step_ms = 42});
  ObserveLine(&both, 11, 2);
  EXPECT_EQ(both.PrefillBudget(8, 8), 7);
  EXPECT_EQ(both.PrefillBudget(1, 1), 6);
}

// The reference is the decode-only step of the batch in flight, so that a batch that is still
// filling (few decodes, prompts waiting) gets prefill enough to fill it.
TEST(StepBudgetTest, TheBatchInFlightSetsTheReference) {
  StepBudget budget(StepBudgetOptions{.ratio = 2.0});
  ObserveLine(&budget, 11, 2);
  // 2 decodes of 8 in flight: 2 x 27 ms = 54 ms; 2 decodes take 15 ms, leaving 19.5 tokens.
  EXPECT_EQ(budget.PrefillBudget(2, 8), 19);
  EXPECT_EQ(budget.PrefillBudget(2, 2), 7);   // 2 x 15 ms, 7.5 tokens
  EXPECT_EQ(budget.PrefillBudget(8, 2), 13);  // never a batch below the decodes
  EXPECT_EQ(budget.PrefillBudget(0, 8), StepBudget::kUnlimited);
  // The millisecond bound holds whatever the batch.
  StepBudget both(StepBudgetOptions{.ratio = 2.0, .max_step_ms = 42});
  ObserveLine(&both, 11, 2);
  EXPECT_EQ(both.PrefillBudget(2, 8), 13);  // (42 - 15) / 2
}

TEST(StepBudgetTest, NeverBelowOneTokenSoPrefillsProgress) {
  StepBudget ms(StepBudgetOptions{.ratio = 0, .max_step_ms = 5});  // below a decode-only step
  ObserveLine(&ms, 10, 2);
  EXPECT_EQ(ms.PrefillBudget(8, 8), 1);
  StepBudget one(StepBudgetOptions{.ratio = 1.0});  // no room at all
  ObserveLine(&one, 10, 2);
  EXPECT_EQ(one.PrefillBudget(8, 8), 1);
  StepBudget cold(StepBudgetOptions{.cold_chunk = 0});
  EXPECT_EQ(cold.PrefillBudget(8, 8), 1);
}

TEST(StepBudgetTest, NoiseThatInvertsTheSlopeFallsBackToTheChunk) {
  StepBudget budget(StepBudgetOptions{.cold_chunk = 32});
  budget.Observe(Tokens(8), 100);
  budget.Observe(Tokens(8), 100);
  budget.Observe(Tokens(256), 50);
  budget.Observe(Tokens(256), 50);
  EXPECT_FALSE(budget.CostModel());
  EXPECT_EQ(budget.PrefillBudget(8, 8), 32);
}

TEST(StepBudgetTest, FollowsAMachineThatSlowsDownAndForgetsOnReset) {
  StepBudget budget(StepBudgetOptions{.ratio = 0, .max_step_ms = 101});
  ObserveLine(&budget, 10, 2);
  EXPECT_EQ(budget.PrefillBudget(8, 8), 37);  // (101 - 26) / 2
  // Twice as slow from now on (another tenant): the averages move to the new line.
  for (int i = 0; i < 30; ++i) ObserveLine(&budget, 20, 4);
  ASSERT_TRUE(budget.CostModel());
  EXPECT_NEAR(budget.CostModel()->per_token_ms, 4, 0.01);
  EXPECT_EQ(budget.PrefillBudget(8, 8), 12);  // (101 - 52) / 4
  budget.Reset();
  EXPECT_FALSE(budget.CostModel());
  EXPECT_EQ(budget.PrefillBudget(8, 8), StepBudgetOptions().cold_chunk);
}

TEST(StepBudgetTest, IgnoresEmptyAndNonFiniteSteps) {
  StepBudget budget;
  budget.Observe(Tokens(0), 5);
  budget.Observe(Tokens(8), std::nan(""));
  budget.Observe(Tokens(8), -1);
  budget.Observe(Tokens(8), std::numeric_limits<double>::infinity());
  ObserveLine(&budget, 10, 2);
  ASSERT_TRUE(budget.CostModel());
  EXPECT_NEAR(budget.CostModel()->per_token_ms, 2, 1e-9);
}

}  // namespace
}  // namespace shardlm::coordinator
