// The range checks of what a worker job reports (coordinator/worker_checks.h): Loaded's block
// count, every field of a StepResult against its plan, and the guard between plans going out
// and results coming in.
#include "coordinator/worker_checks.h"

#include <limits>
#include <string>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace shardlm::coordinator {
namespace {

using ::testing::HasSubstr;
constexpr int64_t kVocab = 100;

// Step 7: seq 1 samples with 3 logprobs, seq 2 is a prefill chunk (no result), seq 3 samples
// and wants its sampled row of logits, seq 4 wants every row of its 2 tokens (no sample).
worker::v1::StepPlan Plan() {
  worker::v1::StepPlan plan;
  plan.set_step_id(7);
  worker::v1::SeqStep* s = plan.add_seqs();
  s->set_seq_id(1);
  s->add_tokens(5);
  s->set_sample(true);
  s->set_logprobs(3);
  s = plan.add_seqs();
  s->set_seq_id(2);
  s->add_tokens(5);
  s = plan.add_seqs();
  s->set_seq_id(3);
  s->add_tokens(5);
  s->set_sample(true);
  s->set_logits(worker::v1::LOGITS_SAMPLED);
  s = plan.add_seqs();
  s->set_seq_id(4);
  s->add_tokens(5);
  s->add_tokens(6);
  s->set_logits(worker::v1::LOGITS_ALL);
  return plan;
}

// A result that satisfies Plan().
worker::v1::StepResult Good() {
  worker::v1::StepResult r;
  r.set_step_id(7);
  r.set_compute_ms(1.5);
  worker::v1::SeqResult* s = r.add_results();
  s->set_seq_id(1);
  s->set_token(99);
  s->mutable_logprobs()->mutable_chosen()->set_id(99);
  s->mutable_logprobs()->mutable_chosen()->set_logprob(-0.1f);
  for (int i = 0; i < 3; ++i) {
    v1::TokenLogprob* t = s->mutable_logprobs()->add_top();
    t->set_id(i);
    t->set_logprob(-1.0f - i);
  }
  s = r.add_results();
  s->set_seq_id(3);
  s->set_token(0);
  for (int i = 0; i < kVocab; ++i) s->add_logits(0.5f);
  s = r.add_results();
  s->set_seq_id(4);
  for (int i = 0; i < 2 * kVocab; ++i) s->add_logits(0.5f);
  return r;
}

std::string Error(void (*spoil)(worker::v1::StepResult&)) {
  worker::v1::StepResult r = Good();
  spoil(r);
  const absl::Status s = StepExpectation(Plan(), kVocab).Check(r);
  EXPECT_TRUE(absl::IsInvalidArgument(s)) << s;
  return std::string(s.message());
}

TEST(WorkerChecksTest, LoadedKvBlocksAreBounded) {
  worker::v1::Loaded loaded;
  loaded.set_ok(true);
  loaded.set_kv_blocks(1);
  EXPECT_TRUE(CheckLoaded(loaded).ok());
  loaded.set_kv_blocks(kMaxKvBlocks);
  EXPECT_TRUE(CheckLoaded(loaded).ok());
  loaded.set_kv_blocks(kMaxKvBlocks + 1);
  EXPECT_TRUE(absl::IsInvalidArgument(CheckLoaded(loaded)));
  loaded.set_kv_blocks(std::numeric_limits<int32_t>::max());
  EXPECT_THAT(CheckLoaded(loaded).message(),
              HasSubstr("Loaded.kv_blocks = 2147483647, expected at most 16777216"));
  loaded.set_kv_blocks(0);
  EXPECT_TRUE(absl::IsResourceExhausted(CheckLoaded(loaded)));
  loaded.set_kv_blocks(-5);
  EXPECT_TRUE(absl::IsResourceExhausted(CheckLoaded(loaded)));
}

TEST(WorkerChecksTest, AResultThatFitsItsPlanPasses) {
  EXPECT_TRUE(StepExpectation(Plan(), kVocab).Check(Good()).ok());
  // Fewer results than asked is the scheduler's business (the request fails as missing), and
  // a failed sequence carries no token.
  worker::v1::StepResult r = Good();
  r.mutable_results()->DeleteSubrange(2, 1);
  r.mutable_results(0)->set_token(-1);
  r.mutable_results(0)->clear_logprobs();
  r.mutable_results(0)->set_error("its logits are not finite");
  EXPECT_TRUE(StepExpectation(Plan(), kVocab).Check(r).ok());
}

TEST(WorkerChecksTest, EveryFieldIsNamedWithExpectedAndGot) {
  EXPECT_THAT(Error([](auto& r) { r.set_step_id(8); }), HasSubstr("step_id is 8, expected 7"));
  EXPECT_THAT(Error([](auto& r) { r.set_compute_ms(-1); }),
              HasSubstr("compute_ms is -1, expected a finite value >= 0"));
  EXPECT_THAT(Error([](auto& r) { r.set_compute_ms(std::numeric_limits<double>::infinity()); }),
              HasSubstr("compute_ms is inf"));
  EXPECT_THAT(Error([](auto& r) { r.add_results()->set_seq_id(42); }),
              HasSubstr("step 7: StepResult.results[3] (seq 42): no such sequence in the "
                        "step's plan"));
  EXPECT_THAT(Error([](auto& r) { r.add_results()->set_seq_id(2); }),
              HasSubstr("results[3] (seq 2): the plan asked this sequence for no result"));
  EXPECT_THAT(Error([](auto& r) { *r.add_results() = r.results(0); }),
              HasSubstr("results[3] (seq 1): a second result for this sequence"));
  EXPECT_THAT(Error([](auto& r) { r.mutable_results(0)->set_token(100); }),
              HasSubstr("results[0] (seq 1).token is 100, expected an id in [0, 100)"));
  EXPECT_THAT(Error([](auto& r) { r.mutable_results(1)->set_token(-3); }),
              HasSubstr("results[1] (seq 3).token is -3"));
  EXPECT_THAT(Error([](auto& r) { r.mutable_results(0)->mutable_logprobs()->add_top(); }),
              HasSubstr("results[0] (seq 1).logprobs.top has 4 entries, expected at most 3"));
  EXPECT_THAT(
      Error([](auto& r) { r.mutable_results(0)->mutable_logprobs()->mutable_top(2)->set_id(100); }),
      HasSubstr("logprobs.top[2].id is 100, expected an id in [0, 100)"));
  EXPECT_THAT(Error([](auto& r) { r.mutable_results(1)->mutable_logprobs(); }),
              HasSubstr("results[1] (seq 3).logprobs is set, but the plan asked for none"));
  EXPECT_THAT(Error([](auto& r) { r.mutable_results(0)->add_logits(1); }),
              HasSubstr("results[0] (seq 1).logits has 1 values, expected 0 rows x 100 = 0"));
  EXPECT_THAT(Error([](auto& r) { r.mutable_results(1)->add_logits(1); }),
              HasSubstr("(seq 3).logits has 101 values, expected 1 rows x 100 = 100"));
  EXPECT_THAT(Error([](auto& r) { r.mutable_results(2)->mutable_logits()->RemoveLast(); }),
              HasSubstr("(seq 4).logits has 199 values, expected 2 rows x 100 = 200"));
}

TEST(WorkerChecksTest, TheGuardWantsOneCheckedResultPerStepSent) {
  StepResultGuard guard(kVocab);
  worker::v1::WorkerMessage m;
  *m.mutable_result() = Good();
  EXPECT_THAT(guard.Received(&m).message(), HasSubstr("while no step was in flight"));
  guard.Sent(Plan());
  EXPECT_TRUE(guard.Received(&m).ok());
  EXPECT_THAT(guard.Received(&m).message(), HasSubstr("while no step was in flight"));

  guard.Sent(Plan());
  worker::v1::WorkerMessage hello;
  hello.mutable_hello();
  EXPECT_THAT(guard.Received(&hello).message(),
              HasSubstr("expected a StepResult after loading, got message kind 1"));
  m.mutable_result()->mutable_results(0)->set_token(1000);
  EXPECT_THAT(guard.Received(&m).message(), HasSubstr(".token is 1000"));

  // Error texts are cut before anyone logs or returns them.
  guard.Sent(Plan());
  *m.mutable_result() = Good();
  m.mutable_result()->set_error(std::string(1 << 20, 'e'));
  m.mutable_result()->mutable_results(0)->set_error(std::string(5000, 'f'));
  ASSERT_TRUE(guard.Received(&m).ok());
  EXPECT_LT(m.result().error().size(), kMaxWorkerTextBytes + 40);
  EXPECT_THAT(m.result().error(), HasSubstr("(1048576 bytes)"));
  EXPECT_THAT(m.result().results(0).error(), HasSubstr("(5000 bytes)"));
  EXPECT_EQ(WorkerText("short"), "short");
}

}  // namespace
}  // namespace shardlm::coordinator
