// The step deadline (coordinator/step_deadline.h): the floor before anything is measured, the
// fixed --step-timeout, scaling from the slowest measured step by tokens and by attended
// positions, the nearest measured bucket, and a cap.
#include "coordinator/step_deadline.h"

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace shardlm::coordinator {
namespace {

using namespace std::chrono_literals;
using ::testing::HasSubstr;

StepSize Size(int64_t seqs, int64_t tokens, int64_t attended) { return {seqs, tokens, attended}; }

TEST(StepDeadlineTest, SizeCountsTokensAndAttendedPositions) {
  worker::v1::StepPlan plan;
  worker::v1::SeqStep* chunk = plan.add_seqs();  // 4 tokens at positions 8..11
  chunk->set_start_pos(8);
  for (int i = 0; i < 4; ++i) chunk->add_tokens(i);
  worker::v1::SeqStep* decode = plan.add_seqs();  // 1 token at position 20
  decode->set_start_pos(20);
  decode->add_tokens(5);
  const StepSize size = StepSize::Of(plan);
  EXPECT_EQ(size.seqs, 2);
  EXPECT_EQ(size.tokens, 5);
  EXPECT_EQ(size.attended, (9 + 10 + 11 + 12) + 21);
  EXPECT_EQ(size.ToString(), "2 seqs, 5 tokens, 63 attended positions");
}

// The default must let a healthy 30 s step through, even as the job's very first step.
TEST(StepDeadlineTest, TheFloorCoversAFirstStepOfThirtySeconds) {
  StepDeadline deadline;
  const StepDeadline::Deadline d = deadline.For(Size(1, 512, 512 * 513 / 2));
  EXPECT_EQ(d.timeout, 60s);
  EXPECT_GT(d.timeout, 30s);
  EXPECT_THAT(d.derivation, HasSubstr("the floor of 60 s (no step measured yet)"));
  // Quick steps measured do not bring it below the floor.
  deadline.Observe(Size(1, 1, 10), 5.0);
  EXPECT_EQ(deadline.For(Size(1, 1, 10)).timeout, 60s);
  EXPECT_THAT(deadline.For(Size(1, 1, 10)).derivation, HasSubstr("the floor of 60 s, above"));
}

TEST(StepDeadlineTest, AFixedTimeoutOverridesMeasurements) {
  StepDeadline deadline(StepDeadlineOptions{.fixed = 1500ms});
  deadline.Observe(Size(1, 16, 136), 90000.0);
  const StepDeadline::Deadline d = deadline.For(Size(1, 16, 136));
  EXPECT_EQ(d.timeout, 1500ms);
  EXPECT_EQ(d.derivation, "fixed by --step-timeout 1.5 s");
}

TEST(StepDeadlineTest, ScalesTheSlowestStepOfItsBucketByTokensOrContext) {
  StepDeadline deadline(StepDeadlineOptions{.floor = 100ms, .multiplier = 10});
  deadline.Observe(Size(1, 16, 136), 200.0);
  deadline.Observe(Size(1, 20, 210), 150.0);  // faster: the slowest (200 ms) stays
  EXPECT_EQ(deadline.For(Size(1, 16, 136)).timeout, 2000ms);
  // A step of the bucket with less to attend to is never scaled down.
  EXPECT_EQ(deadline.For(Size(1, 16, 17)).timeout, 2000ms);
  // 31 tokens: more tokens (x1.94) but even more attended positions (496 / 136 = x3.65).
  const StepDeadline::Deadline more = deadline.For(Size(2, 31, 496));
  EXPECT_EQ(more.timeout, std::chrono::milliseconds(7295));  // ceil(10 * 200 * 496 / 136)
  EXPECT_THAT(more.derivation, HasSubstr("the slowest step of 16-31 tokens seen took 200.0 ms"));
  EXPECT_THAT(more.derivation, HasSubstr("scaled by 3.65"));
  deadline.Observe(Size(1, 16, 136), 400.0);  // a slower one replaces it
  EXPECT_EQ(deadline.For(Size(1, 16, 136)).timeout, 4000ms);
}

TEST(StepDeadlineTest, DecodesAtLongContextGetLonger) {
  StepDeadline deadline(StepDeadlineOptions{.floor = 100ms, .multiplier = 10});
  deadline.Observe(Size(1, 1, 100), 20.0);  // a decode at position 99
  EXPECT_EQ(deadline.For(Size(1, 1, 100)).timeout, 200ms);
  EXPECT_EQ(deadline.For(Size(1, 1, 1000)).timeout, 2000ms);  // at position 999
  EXPECT_EQ(deadline.For(Size(1, 1, 10)).timeout, 200ms);
}

TEST(StepDeadlineTest, AnUnmeasuredSizeScalesFromTheNearestMeasuredBucket) {
  StepDeadline deadline(StepDeadlineOptions{.floor = 100ms, .multiplier = 10});
  deadline.Observe(Size(1, 1, 50), 10.0);         // bucket 0
  deadline.Observe(Size(1, 256, 32896), 3000.0);  // bucket 8
  // 8 tokens (bucket 3): bucket 0 is nearer than bucket 8.
  const StepDeadline::Deadline d = deadline.For(Size(1, 8, 36));
  EXPECT_EQ(d.timeout, 800ms);  // 10 ms x 8 tokens x 10
  EXPECT_THAT(d.derivation, HasSubstr("1-1 tokens"));
  // 200 tokens (bucket 7): bucket 8, not scaled down.
  EXPECT_EQ(deadline.For(Size(1, 200, 20100)).timeout, 30000ms);
  // Another job's measurements do not count.
  deadline.Reset();
  EXPECT_EQ(deadline.For(Size(1, 200, 20100)).timeout, 100ms);
}

TEST(StepDeadlineTest, IsCappedAtADay) {
  StepDeadline deadline(StepDeadlineOptions{.floor = 100ms, .multiplier = 10});
  deadline.Observe(Size(1, 1, 1), 1e6);
  EXPECT_EQ(deadline.For(Size(1, 1, 1000000)).timeout, 86400000ms);
  // Nonsense measurements are ignored.
  StepDeadline other(StepDeadlineOptions{.floor = 100ms, .multiplier = 10});
  other.Observe(Size(1, 4, 10), -1.0);
  other.Observe(Size(0, 0, 0), 50.0);
  EXPECT_THAT(other.For(Size(1, 4, 10)).derivation, HasSubstr("no step measured yet"));
}

}  // namespace
}  // namespace shardlm::coordinator
