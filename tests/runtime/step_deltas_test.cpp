// Rank 0's expansion of delta plans (runtime/step_deltas.h): whole SeqSteps from the first step's
// state plus appended blocks, sampled_input tokens filled in from recorded results, waiting while
// such a token is in flight, and refusals that name the sequence and leave the records alone.
#include "runtime/step_deltas.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

namespace shardlm {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;
using worker::v1::SeqStep;
using worker::v1::StepPlan;
using worker::v1::StepResult;

SeqStep First(uint64_t id, std::vector<int32_t> tokens, std::vector<int32_t> blocks, bool sample) {
  SeqStep s;
  s.set_seq_id(id);
  s.mutable_tokens()->Add(tokens.begin(), tokens.end());
  s.mutable_block_table()->Add(blocks.begin(), blocks.end());
  s.set_sample(sample);
  s.set_prompt_len(static_cast<int32_t>(tokens.size()));
  s.mutable_sampling()->set_temperature(0.5f);
  s.mutable_sampling()->set_seed(7);
  s.set_logprobs(2);
  return s;
}

SeqStep Next(uint64_t id, int32_t start, std::vector<int32_t> tokens, std::vector<int32_t> blocks,
             bool sampled_input, bool sample = true) {
  SeqStep s;
  s.set_seq_id(id);
  s.set_continues(true);
  s.set_start_pos(start);
  s.mutable_tokens()->Add(tokens.begin(), tokens.end());
  s.mutable_block_table()->Add(blocks.begin(), blocks.end());
  s.set_sampled_input(sampled_input);
  s.set_sample(sample);
  return s;
}

StepPlan Plan(uint64_t step, std::vector<SeqStep> seqs, std::vector<uint64_t> released = {}) {
  StepPlan p;
  p.set_step_id(step);
  for (SeqStep& s : seqs) *p.add_seqs() = std::move(s);
  p.mutable_released()->Add(released.begin(), released.end());
  return p;
}

StepResult Result(uint64_t step, std::vector<std::pair<uint64_t, int32_t>> tokens) {
  StepResult r;
  r.set_step_id(step);
  for (auto [id, token] : tokens) {
    auto* out = r.add_results();
    out->set_seq_id(id);
    out->set_token(token);
  }
  return r;
}

std::vector<int32_t> Ints(const google::protobuf::RepeatedField<int32_t>& f) {
  return {f.begin(), f.end()};
}

TEST(StepDeltasTest, ContinuingStepsGetTheWholeState) {
  StepDeltas d;
  // A 5-token prompt in two chunks, then decodes; blocks of 4 tokens.
  const StepPlan p1 = Plan(1, {First(9, {1, 2, 3}, {4}, false)});
  auto e1 = d.Expand(p1);
  ASSERT_TRUE(e1.ok()) << e1.status();
  d.Record(*e1, Result(1, {}));
  auto e2 = d.Expand(Plan(2, {Next(9, 3, {4, 5}, {6}, false)}));
  ASSERT_TRUE(e2.ok()) << e2.status();
  ASSERT_EQ(e2->seqs_size(), 1);
  const SeqStep& s = e2->seqs(0);
  EXPECT_THAT(Ints(s.tokens()), ElementsAre(4, 5));
  EXPECT_THAT(Ints(s.block_table()), ElementsAre(4, 6));
  EXPECT_EQ(s.start_pos(), 3);
  EXPECT_EQ(s.prompt_len(), 3);  // the first step's, as sent
  EXPECT_FLOAT_EQ(s.sampling().temperature(), 0.5f);
  EXPECT_EQ(s.sampling().seed(), 7u);
  EXPECT_EQ(s.logprobs(), 2);
  EXPECT_TRUE(s.sample());
  EXPECT_FALSE(s.continues());
  d.Record(*e2, Result(2, {{9, 42}}));
  // The decode of the sampled token, planned before the coordinator saw it.
  auto e3 = d.Expand(Plan(3, {Next(9, 5, {}, {}, true)}));
  ASSERT_TRUE(e3.ok()) << e3.status();
  EXPECT_THAT(Ints(e3->seqs(0).tokens()), ElementsAre(42));
  EXPECT_EQ(e3->seqs(0).start_pos(), 5);
  EXPECT_THAT(Ints(e3->seqs(0).block_table()), ElementsAre(4, 6));
}

TEST(StepDeltasTest, WaitsForATokenInFlight) {
  StepDeltas d;
  auto e1 = d.Expand(Plan(1, {First(1, {5, 6}, {0}, true), First(2, {7}, {1}, true)}));
  ASSERT_TRUE(e1.ok());
  // Step 2 (sequence 2 only, a fresh token) and step 3 (sequence 1 speculated) are planned
  // before step 1's result.
  const StepPlan p3 = Plan(3, {Next(1, 2, {}, {}, true)});
  EXPECT_FALSE(d.Ready(p3));
  EXPECT_THAT(d.Expand(p3).status().message(), HasSubstr("still being computed"));
  d.Record(*e1, Result(1, {{1, 11}, {2, 22}}));
  ASSERT_TRUE(d.Ready(p3));
  auto e3 = d.Expand(p3);
  ASSERT_TRUE(e3.ok());
  EXPECT_THAT(Ints(e3->seqs(0).tokens()), ElementsAre(11));
  // The token is used once: a second sampled_input before another result is an error.
  const StepPlan again = Plan(4, {Next(1, 3, {}, {}, true)});
  EXPECT_FALSE(d.Ready(again));  // step 3 samples it: in flight
  d.Record(*e3, Result(3, {{1, 12}}));
  auto e4 = d.Expand(again);
  ASSERT_TRUE(e4.ok());
  EXPECT_THAT(Ints(e4->seqs(0).tokens()), ElementsAre(12));
}

TEST(StepDeltasTest, RefusalsNameTheSequenceAndChangeNothing) {
  StepDeltas d;
  auto e1 = d.Expand(Plan(1, {First(1, {5, 6}, {0}, true)}));
  ASSERT_TRUE(e1.ok());
  d.Record(*e1, Result(1, {{1, 11}}));
  // Unknown sequence.
  EXPECT_THAT(d.Expand(Plan(2, {Next(3, 0, {1}, {}, false)})).status().message(),
              HasSubstr("seq 3 continues, but the workers have no record of it"));
  // Wrong start_pos; the valid SeqStep before it in the same plan must not be applied either.
  auto bad = d.Expand(Plan(2, {First(4, {1}, {2}, true), Next(1, 5, {}, {}, true)}));
  EXPECT_THAT(bad.status().message(),
              HasSubstr("seq 1 continues at start_pos 5, but the workers ran it up to position 2"));
  EXPECT_EQ(d.sequences(), 1u);
  // sampled_input with explicit tokens.
  EXPECT_THAT(d.Expand(Plan(2, {Next(1, 2, {3}, {}, true)})).status().message(),
              HasSubstr("has sampled_input and 1 tokens"));
  // sampled_input on a first step.
  SeqStep first = First(5, {}, {3}, true);
  first.set_sampled_input(true);
  EXPECT_THAT(d.Expand(Plan(2, {first})).status().message(),
              HasSubstr("sampled_input on its first step"));
  // The record is intact: the right plan still works.
  auto ok = d.Expand(Plan(2, {Next(1, 2, {}, {}, true)}));
  ASSERT_TRUE(ok.ok()) << ok.status();
  EXPECT_THAT(Ints(ok->seqs(0).tokens()), ElementsAre(11));
  // No token left to run.
  d.Record(*ok, StepResult());  // a failed step: no token
  auto none = d.Expand(Plan(3, {Next(1, 3, {}, {}, true)}));
  ASSERT_TRUE(none.ok());
  EXPECT_EQ(none->seqs_size(), 0);  // its sample failed: left out until released
}

TEST(StepDeltasTest, ReleaseDropsTheRecordAndAFreshAdmissionStartsOver) {
  StepDeltas d;
  auto e1 = d.Expand(Plan(1, {First(1, {5, 6}, {0}, true)}));
  ASSERT_TRUE(e1.ok());
  d.Record(*e1, Result(1, {{1, 11}}));
  auto e2 = d.Expand(Plan(2, {}, {1}));
  ASSERT_TRUE(e2.ok());
  EXPECT_THAT(std::vector<uint64_t>(e2->released().begin(), e2->released().end()),
              ElementsAre(1u));
  EXPECT_EQ(d.sequences(), 0u);
  EXPECT_THAT(d.Expand(Plan(3, {Next(1, 2, {}, {}, true)})).status().message(),
              HasSubstr("no record"));
  // A released id reused in the same plan as a first step is a new sequence.
  auto e4 = d.Expand(Plan(4, {First(2, {1, 2, 3}, {5}, true)}));
  ASSERT_TRUE(e4.ok());
  EXPECT_EQ(d.sequences(), 1u);
}

TEST(StepDeltasTest, FailedSequenceResultLeavesItsSpeculatedStepOut) {
  StepDeltas d;
  auto e1 = d.Expand(Plan(1, {First(1, {5}, {0}, true), First(2, {6}, {1}, true)}));
  ASSERT_TRUE(e1.ok());
  StepResult r = Result(1, {{2, 22}});
  auto* failed = r.add_results();
  failed->set_seq_id(1);
  failed->set_error("its logits are not finite");
  d.Record(*e1, r);
  const StepPlan p2 = Plan(2, {Next(1, 1, {}, {}, true), Next(2, 1, {}, {}, true)});
  ASSERT_TRUE(d.Ready(p2));
  auto e2 = d.Expand(p2);
  ASSERT_TRUE(e2.ok());
  ASSERT_EQ(e2->seqs_size(), 1);
  EXPECT_EQ(e2->seqs(0).seq_id(), 2u);
  EXPECT_THAT(Ints(e2->seqs(0).tokens()), ElementsAre(22));
}

}  // namespace
}  // namespace shardlm
