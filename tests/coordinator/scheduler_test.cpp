#include "coordinator/scheduler.h"

#include <map>
#include <memory>
#include <set>
#include <unordered_map>
#include <vector>

#include "gmock/gmock.h"
#include "runtime/step_deltas.h"
#include "gtest/gtest.h"

namespace shardlm::coordinator {
namespace {

using ::testing::ElementsAre;
using ::testing::ElementsAreArray;
using ::testing::HasSubstr;
using Key = Scheduler::Key;

class SchedulerTest : public ::testing::Test {
 protected:
  void Init(int32_t block_size, int64_t blocks, int32_t budget, int32_t max_running = 64,
            int32_t max_queue = 64, bool prefix_caching = true) {
    blocks_ = std::make_unique<KvBlockManager>(block_size, prefix_caching);
    blocks_->Reset(blocks);
    scheduler_ = std::make_unique<Scheduler>(
        SchedulerOptions{budget, max_running, max_queue}, blocks_.get());
  }
  // Prompt ids key*100 + i, so that a plan's tokens say whose they are.
  static std::vector<int32_t> Prompt(Key key, int n) {
    std::vector<int32_t> p;
    for (int i = 0; i < n; ++i) p.push_back(static_cast<int32_t>(key * 100 + i));
    return p;
  }
  absl::Status Add(Key key, int n) {
    v1::SamplingParams sampling;
    sampling.set_temperature(0.5f);
    return scheduler_->Add(key, Prompt(key, n), sampling, 0);
  }
  absl::Status AddTokens(Key key, std::vector<int32_t> tokens) {
    return scheduler_->Add(key, std::move(tokens), v1::SamplingParams(), 0);
  }
  static std::vector<int32_t> Concat(std::vector<int32_t> a, const std::vector<int32_t>& b) {
    a.insert(a.end(), b.begin(), b.end());
    return a;
  }
  static std::vector<int32_t> History(const worker::v1::SeqStep& s) {
    return {s.history().begin(), s.history().end()};
  }
  // The next step, its plan expanded the way rank 0 of a worker job expands the coordinator's
  // deltas (runtime/step_deltas.h): the tests read whole SeqSteps. An empty plan stays empty.
  Scheduler::Step Schedule(int64_t prefill_budget = Scheduler::kNoPrefillBudget) {
    Scheduler::Step step = scheduler_->Schedule(prefill_budget);
    if (step.plan.seqs_size() == 0) return step;
    absl::StatusOr<worker::v1::StepPlan> expanded = deltas_.Expand(step.plan);
    EXPECT_TRUE(expanded.ok()) << expanded.status();
    if (!expanded.ok()) return step;
    sent_[step.plan.step_id()] = std::move(step.plan);
    step.plan = std::move(*expanded);
    return step;
  }
  // The workers' answer `result` to `step` (from Schedule()).
  Scheduler::Outcome CompleteWith(const Scheduler::Step& step,
                                  const worker::v1::StepResult& result) {
    deltas_.Record(step.plan, result);
    auto sent = sent_.find(step.plan.step_id());
    EXPECT_NE(sent, sent_.end()) << "step " << step.plan.step_id() << " was not scheduled";
    if (sent == sent_.end()) return {};
    const worker::v1::StepPlan delta = std::move(sent->second);
    sent_.erase(sent);
    return scheduler_->Complete(delta, result);
  }
  // The workers' answer: every sampling sequence gets `token`.
  Scheduler::Outcome Complete(const Scheduler::Step& step, int32_t token = 7) {
    worker::v1::StepResult result;
    result.set_step_id(step.plan.step_id());
    for (const worker::v1::SeqStep& s : step.plan.seqs()) {
      if (!s.sample()) continue;
      worker::v1::SeqResult* r = result.add_results();
      r->set_seq_id(s.seq_id());
      r->set_token(token);
    }
    return CompleteWith(step, result);
  }
  std::vector<Key> Keys(const Scheduler::Step& step) { return scheduler_->RequestsIn(step.plan); }
  // Completes `step` and removes the requests whose last token (by *remaining, the tokens each
  // still has to generate) it sampled.
  void CompleteAndRetire(const Scheduler::Step& step, std::unordered_map<Key, int>* remaining) {
    for (const Scheduler::Sampled& sampled : Complete(step).sampled) {
      if (--(*remaining)[sampled.key] == 0) {
        remaining->erase(sampled.key);
        scheduler_->Remove(sampled.key);
      }
    }
  }
  static std::vector<int32_t> Tokens(const worker::v1::SeqStep& s) {
    return {s.tokens().begin(), s.tokens().end()};
  }

  std::unique_ptr<KvBlockManager> blocks_;
  std::unique_ptr<Scheduler> scheduler_;
  StepDeltas deltas_;                                 // the workers' record
  std::map<uint64_t, worker::v1::StepPlan> sent_;  // step_id -> the plan as scheduled (deltas)
};

TEST_F(SchedulerTest, ChunkedPrefillUnderTheTokenBudgetThenDecode) {
  Init(/*block_size=*/4, /*blocks=*/100, /*budget=*/8);
  ASSERT_TRUE(Add(1, 20).ok());
  const std::vector<int32_t> prompt = Prompt(1, 20);
  Scheduler::Step s1 = Schedule();
  ASSERT_EQ(s1.plan.seqs_size(), 1);
  EXPECT_EQ(s1.plan.step_id(), 1u);
  EXPECT_THAT(s1.admitted, ElementsAre(1u));
  const worker::v1::SeqStep& c1 = s1.plan.seqs(0);
  EXPECT_EQ(c1.start_pos(), 0);
  EXPECT_THAT(Tokens(c1), ElementsAreArray(prompt.begin(), prompt.begin() + 8));
  EXPECT_FALSE(c1.sample());
  EXPECT_EQ(c1.block_table_size(), 2);
  EXPECT_EQ(c1.prompt_len(), 20);
  EXPECT_FLOAT_EQ(c1.sampling().temperature(), 0.5f);
  EXPECT_TRUE(Complete(s1).sampled.empty());

  Scheduler::Step s2 = Schedule();
  ASSERT_EQ(s2.plan.seqs_size(), 1);
  EXPECT_EQ(s2.plan.seqs(0).seq_id(), c1.seq_id());
  EXPECT_EQ(s2.plan.seqs(0).start_pos(), 8);
  EXPECT_EQ(s2.plan.seqs(0).tokens_size(), 8);
  EXPECT_FALSE(s2.plan.seqs(0).sample());
  EXPECT_EQ(s2.plan.seqs(0).block_table_size(), 4);
  // The table grows by appending: earlier blocks keep their place.
  EXPECT_EQ(s2.plan.seqs(0).block_table(0), c1.block_table(0));
  EXPECT_EQ(s2.plan.seqs(0).block_table(1), c1.block_table(1));
  Complete(s2);

  Scheduler::Step s3 = Schedule();
  ASSERT_EQ(s3.plan.seqs_size(), 1);
  EXPECT_EQ(s3.plan.seqs(0).start_pos(), 16);
  EXPECT_EQ(s3.plan.seqs(0).tokens_size(), 4);
  EXPECT_TRUE(s3.plan.seqs(0).sample());  // the chunk that ends the prompt
  EXPECT_EQ(s3.plan.seqs(0).block_table_size(), 5);
  Scheduler::Outcome o3 = Complete(s3, 42);
  ASSERT_EQ(o3.sampled.size(), 1u);
  EXPECT_EQ(o3.sampled[0].key, 1u);
  EXPECT_EQ(o3.sampled[0].token, 42);

  Scheduler::Step s4 = Schedule();
  ASSERT_EQ(s4.plan.seqs_size(), 1);
  EXPECT_THAT(Tokens(s4.plan.seqs(0)), ElementsAre(42));
  EXPECT_EQ(s4.plan.seqs(0).start_pos(), 20);
  EXPECT_TRUE(s4.plan.seqs(0).sample());
  EXPECT_EQ(s4.plan.seqs(0).block_table_size(), 6);  // position 20 opens block 5
  EXPECT_EQ(blocks_->free(), 94);
}

TEST_F(SchedulerTest, DecodesFirstThenPrefillChunksThenNewcomers) {
  Init(4, 100, /*budget=*/6);
  ASSERT_TRUE(Add(1, 2).ok());
  Scheduler::Step s1 = Schedule();
  EXPECT_THAT(Keys(s1), ElementsAre(1u));
  Complete(s1);
  ASSERT_TRUE(Add(2, 10).ok());
  ASSERT_TRUE(Add(3, 3).ok());

  Scheduler::Step s2 = Schedule();
  EXPECT_THAT(Keys(s2), ElementsAre(1u, 2u));  // 1 decode + 5 of B's prompt; C waits
  EXPECT_EQ(s2.plan.seqs(0).tokens_size(), 1);
  EXPECT_EQ(s2.plan.seqs(1).tokens_size(), 5);
  EXPECT_FALSE(s2.plan.seqs(1).sample());
  EXPECT_THAT(s2.admitted, ElementsAre(2u));
  EXPECT_EQ(scheduler_->waiting(), 1);
  Complete(s2);

  Scheduler::Step s3 = Schedule();
  EXPECT_THAT(Keys(s3), ElementsAre(1u, 2u));
  EXPECT_EQ(s3.plan.seqs(1).start_pos(), 5);
  EXPECT_EQ(s3.plan.seqs(1).tokens_size(), 5);
  EXPECT_TRUE(s3.plan.seqs(1).sample());
  EXPECT_EQ(Complete(s3).sampled.size(), 2u);

  Scheduler::Step s4 = Schedule();
  EXPECT_THAT(Keys(s4), ElementsAre(1u, 2u, 3u));  // two decodes, then C joins whole
  EXPECT_EQ(s4.plan.seqs(2).tokens_size(), 3);
  EXPECT_TRUE(s4.plan.seqs(2).sample());
  EXPECT_THAT(s4.admitted, ElementsAre(3u));
  EXPECT_EQ(scheduler_->running(), 3);
  EXPECT_EQ(scheduler_->waiting(), 0);
  // Each sequence has its own seq id.
  EXPECT_NE(s4.plan.seqs(0).seq_id(), s4.plan.seqs(1).seq_id());
  EXPECT_NE(s4.plan.seqs(1).seq_id(), s4.plan.seqs(2).seq_id());
}

// A step that carries decodes takes at most the prefill budget (chunks of running prefills and
// admissions alike), and at least 1 token of it; a step with no decode fills max_batch_tokens.
TEST_F(SchedulerTest, PrefillBudgetBoundsStepsWithDecodesOnly) {
  Init(4, 200, /*budget=*/64);
  for (Key k : {1, 2, 3}) ASSERT_TRUE(Add(k, 2).ok());
  Scheduler::Step s1 = Schedule(/*prefill_budget=*/5);  // no decode yet: unbounded
  EXPECT_THAT(Keys(s1), ElementsAre(1u, 2u, 3u));
  Complete(s1);
  EXPECT_EQ(scheduler_->decoding(), 3);
  ASSERT_TRUE(Add(4, 100).ok());
  ASSERT_TRUE(Add(5, 100).ok());

  auto tokens = [](const Scheduler::Step& step) {
    int64_t n = 0;
    for (const worker::v1::SeqStep& s : step.plan.seqs()) n += s.tokens_size();
    return n;
  };
  Scheduler::Step s2 = Schedule(5);  // 3 decodes + an admission of 5 tokens
  EXPECT_THAT(Keys(s2), ElementsAre(1u, 2u, 3u, 4u));
  EXPECT_THAT(s2.admitted, ElementsAre(4u));
  EXPECT_EQ(s2.plan.seqs(3).tokens_size(), 5);
  EXPECT_EQ(scheduler_->waiting(), 1);
  Complete(s2);
  Scheduler::Step s3 = Schedule(7);  // a running prefill's chunk: 7 tokens
  EXPECT_THAT(Keys(s3), ElementsAre(1u, 2u, 3u, 4u));
  EXPECT_EQ(s3.plan.seqs(3).start_pos(), 5);
  EXPECT_EQ(tokens(s3), 3 + 7);
  Complete(s3);
  Scheduler::Step s4 = Schedule(0);  // never less than 1: prefills progress
  ASSERT_EQ(s4.plan.seqs_size(), 4);
  EXPECT_EQ(s4.plan.seqs(3).start_pos(), 12);
  EXPECT_EQ(s4.plan.seqs(3).tokens_size(), 1);
  EXPECT_FALSE(s4.plan.seqs(3).sample());
  Complete(s4);

  // The decodes leave: the next steps are all prefill and fill max_batch_tokens, however small
  // the budget.
  for (Key k : {1, 2, 3}) scheduler_->Remove(k);
  EXPECT_EQ(scheduler_->decoding(), 0);
  Scheduler::Step s5 = Schedule(5);
  EXPECT_THAT(Keys(s5), ElementsAre(4u));
  EXPECT_EQ(tokens(s5), 64);
  Complete(s5);
  Scheduler::Step s6 = Schedule(5);  // the rest of 4's prompt, 5 joins with 41
  EXPECT_THAT(Keys(s6), ElementsAre(4u, 5u));
  EXPECT_EQ(s6.plan.seqs(0).tokens_size(), 23);
  EXPECT_TRUE(s6.plan.seqs(0).sample());
  EXPECT_EQ(tokens(s6), 64);
}

TEST_F(SchedulerTest, MaxRunningHoldsTheQueueAndLeaversFreeTheirPlaces) {
  Init(4, 100, 64, /*max_running=*/2);
  for (Key k = 1; k <= 3; ++k) ASSERT_TRUE(Add(k, 3).ok());
  Scheduler::Step s1 = Schedule();
  EXPECT_THAT(Keys(s1), ElementsAre(1u, 2u));
  EXPECT_EQ(scheduler_->waiting(), 1);
  const uint64_t seq1 = s1.plan.seqs(0).seq_id();
  Complete(s1);
  const int64_t free_before = blocks_->free();
  ASSERT_TRUE(scheduler_->Remove(1));  // finished or cancelled: leaves at once
  EXPECT_EQ(blocks_->free(), free_before + 1);
  EXPECT_FALSE(scheduler_->Remove(1));
  Scheduler::Step s2 = Schedule();
  EXPECT_THAT(Keys(s2), ElementsAre(2u, 3u));
  EXPECT_THAT(s2.plan.released(), ElementsAre(seq1));
  Complete(s2);
  // A queued request can be removed too (never seen by the workers: no release).
  ASSERT_TRUE(Add(4, 3).ok());
  ASSERT_TRUE(scheduler_->Remove(4));
  Scheduler::Step s3 = Schedule();
  EXPECT_TRUE(s3.plan.released().empty());
}

TEST_F(SchedulerTest, RemovedWhileInFlightIsSkippedAndMissingTokensReported) {
  Init(4, 100, 64);
  ASSERT_TRUE(Add(1, 3).ok());
  ASSERT_TRUE(Add(2, 3).ok());
  Scheduler::Step s1 = Schedule();
  ASSERT_EQ(s1.plan.seqs_size(), 2);
  scheduler_->Remove(1);  // cancelled while the step runs
  worker::v1::StepResult result;
  result.set_step_id(s1.plan.step_id());
  worker::v1::SeqResult* r = result.add_results();
  r->set_seq_id(s1.plan.seqs(0).seq_id());
  r->set_token(5);
  // Nothing for request 2.
  Scheduler::Outcome outcome = CompleteWith(s1, result);
  EXPECT_TRUE(outcome.sampled.empty());
  EXPECT_THAT(outcome.missing, ElementsAre(2u));
}

TEST_F(SchedulerTest, ASequenceThatFailedOnTheWorkersGetsNoToken) {
  Init(4, 100, 64);
  ASSERT_TRUE(Add(1, 3).ok());
  ASSERT_TRUE(Add(2, 3).ok());
  Scheduler::Step s1 = Schedule();
  ASSERT_EQ(s1.plan.seqs_size(), 2);
  worker::v1::StepResult result;
  result.set_step_id(s1.plan.step_id());
  worker::v1::SeqResult* bad = result.add_results();
  bad->set_seq_id(s1.plan.seqs(0).seq_id());
  bad->set_error("its logits are not finite (NaN or Inf)");
  worker::v1::SeqResult* good = result.add_results();
  good->set_seq_id(s1.plan.seqs(1).seq_id());
  good->set_token(5);
  Scheduler::Outcome outcome = CompleteWith(s1, result);
  ASSERT_EQ(outcome.failed.size(), 1u);
  EXPECT_EQ(outcome.failed[0].first, 1u);
  EXPECT_THAT(outcome.failed[0].second, HasSubstr("not finite"));
  ASSERT_EQ(outcome.sampled.size(), 1u);
  EXPECT_EQ(outcome.sampled[0].key, 2u);
  EXPECT_TRUE(outcome.missing.empty());
  EXPECT_EQ(scheduler_->TokensOf(1)->size(), 3u) << "no token appended to the failed sequence";
  EXPECT_EQ(scheduler_->TokensOf(2)->size(), 4u);
}

TEST_F(SchedulerTest, OutOfBlocksPreemptsTheNewestAndRecomputesItFirst) {
  // Blocks of 2 tokens, 6 in all. A, B, C (prompts of 2) join; D must wait (no headroom).
  Init(2, 6, 64);
  for (Key k = 1; k <= 4; ++k) ASSERT_TRUE(Add(k, 2).ok());
  Scheduler::Step s1 = Schedule();
  EXPECT_THAT(Keys(s1), ElementsAre(1u, 2u, 3u));
  EXPECT_EQ(scheduler_->waiting(), 1);
  const uint64_t c_seq = s1.plan.seqs(2).seq_id();
  Complete(s1, 11);  // position 2 needs a second block each: 3 left
  Scheduler::Step s2 = Schedule();
  EXPECT_THAT(Keys(s2), ElementsAre(1u, 2u, 3u));
  EXPECT_EQ(blocks_->free(), 0);
  Complete(s2, 12);
  Scheduler::Step s3 = Schedule();  // position 3 fits the second blocks
  EXPECT_THAT(Keys(s3), ElementsAre(1u, 2u, 3u));
  Complete(s3, 13);
  // Position 4 needs a third block each, none is free: C (the newest) makes room for A and B.
  Scheduler::Step s4 = Schedule();
  EXPECT_THAT(Keys(s4), ElementsAre(1u, 2u));
  EXPECT_THAT(s4.preempted, ElementsAre(3u));
  EXPECT_THAT(s4.plan.released(), ElementsAre(c_seq));
  EXPECT_TRUE(s4.failed.empty());
  EXPECT_EQ(scheduler_->waiting(), 2);
  EXPECT_EQ(scheduler_->ComputedOf(3), 0);
  Complete(s4, 14);
  // C is recomputed before D when room comes back: prompt + what it generated, from position 0,
  // under a new seq id, with the original prompt_len.
  scheduler_->Remove(1);
  scheduler_->Remove(2);
  Scheduler::Step s5 = Schedule();
  ASSERT_EQ(Keys(s5), (std::vector<Key>{3u, 4u}));
  const worker::v1::SeqStep& c = s5.plan.seqs(0);
  EXPECT_THAT(Tokens(c), ElementsAre(300, 301, 11, 12, 13));
  EXPECT_EQ(c.start_pos(), 0);
  EXPECT_EQ(c.prompt_len(), 2);
  EXPECT_TRUE(c.sample());
  EXPECT_NE(c.seq_id(), c_seq);
  EXPECT_EQ(c.block_table_size(), 3);
  EXPECT_THAT(s5.admitted, ElementsAre(3u, 4u));
  Scheduler::Outcome o5 = Complete(s5, 15);
  ASSERT_EQ(o5.sampled.size(), 2u);
  EXPECT_THAT(*scheduler_->TokensOf(3), ElementsAre(300, 301, 11, 12, 13, 15));
}

TEST_F(SchedulerTest, ASequenceThatOutgrowsTheWholeCacheFails) {
  Init(2, 2, 64);  // 4 positions in all
  ASSERT_TRUE(Add(1, 3).ok());
  Complete(Schedule());  // positions 0-2, token 7
  Scheduler::Step s2 = Schedule();  // position 3: still 2 blocks
  ASSERT_EQ(s2.plan.seqs_size(), 1);
  Complete(s2);
  Scheduler::Step s3 = Schedule();  // position 4 needs a third block
  EXPECT_EQ(s3.plan.seqs_size(), 0);
  EXPECT_THAT(s3.preempted, ElementsAre(1u));
  ASSERT_EQ(s3.failed.size(), 1u);
  EXPECT_EQ(s3.failed[0].first, 1u);
  EXPECT_EQ(s3.failed[0].second.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(s3.failed[0].second.message(), HasSubstr("needs 3 KV blocks"));
  EXPECT_FALSE(scheduler_->Contains(1));
  EXPECT_FALSE(scheduler_->HasWork());
  EXPECT_EQ(blocks_->free(), 2);
  // Its old seq id is released with the next plan that is sent.
  ASSERT_TRUE(Add(2, 1).ok());
  Scheduler::Step s4 = Schedule();
  EXPECT_EQ(s4.plan.released_size(), 1);
}

TEST_F(SchedulerTest, RefusesWhatCanNeverRunAndAFullQueue) {
  Init(4, 2, 64, 64, /*max_queue=*/2);
  absl::Status too_long = Add(1, 9);
  EXPECT_EQ(too_long.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(too_long.message(), HasSubstr("9 tokens needs 3 KV blocks of 4 tokens"));
  EXPECT_THAT(too_long.message(), HasSubstr("only 2 blocks"));
  EXPECT_TRUE(Add(1, 8).ok());
  EXPECT_TRUE(Add(2, 1).ok());
  absl::Status full = Add(3, 1);
  EXPECT_EQ(full.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(full.message(), HasSubstr("queue full"));
  EXPECT_EQ(Add(2, 1).code(), absl::StatusCode::kAlreadyExists);

  Init(4, 0, 64);
  EXPECT_EQ(Add(1, 1).code(), absl::StatusCode::kFailedPrecondition);
}

TEST_F(SchedulerTest, AdmissionWaitsForBlocksAndKeepsFifoOrder) {
  Init(4, 4, 64);  // 16 positions
  ASSERT_TRUE(Add(1, 12).ok());  // 3 blocks
  ASSERT_TRUE(Add(2, 4).ok());   // 1 block, but one block is A's decode headroom
  ASSERT_TRUE(Add(3, 1).ok());   // would fit, but FIFO: it does not pass B
  Scheduler::Step s1 = Schedule();
  EXPECT_THAT(Keys(s1), ElementsAre(1u));
  EXPECT_EQ(scheduler_->waiting(), 2);
  Complete(s1);
  scheduler_->Remove(1);
  Scheduler::Step s2 = Schedule();
  EXPECT_THAT(Keys(s2), ElementsAre(2u, 3u));
}

TEST_F(SchedulerTest, ResetForgetsEverything) {
  Init(4, 10, 64);
  ASSERT_TRUE(Add(1, 5).ok());
  ASSERT_TRUE(Add(2, 5).ok());
  Schedule();
  scheduler_->Reset();
  blocks_->Reset(10);
  EXPECT_FALSE(scheduler_->HasWork());
  EXPECT_FALSE(scheduler_->Contains(1));
  EXPECT_EQ(scheduler_->running(), 0);
  ASSERT_TRUE(Add(1, 5).ok());
  Scheduler::Step s = Schedule();
  EXPECT_TRUE(s.plan.released().empty());
  EXPECT_EQ(s.plan.seqs(0).start_pos(), 0);
}

// The worker job is lost with a step in flight: every request goes back to the queue in its
// order (running ones first), keeps the tokens it generated, and the next job (another cache
// size) recomputes them under fresh seq ids from position 0; the old ids are never released
// (the job that knew them is gone), and the in-flight step's token never counts.
TEST_F(SchedulerTest, RequeueAllHoldsEveryRequestForTheNextJob) {
  Init(4, 100, /*budget=*/16, /*max_running=*/2);
  ASSERT_TRUE(Add(1, 5).ok());
  ASSERT_TRUE(Add(2, 3).ok());
  ASSERT_TRUE(Add(3, 4).ok());
  Scheduler::Step s1 = Schedule();
  ASSERT_THAT(Keys(s1), ElementsAre(1u, 2u));
  Complete(s1, 7);
  Scheduler::Step s2 = Schedule();  // the decodes of 7: lost in flight
  ASSERT_THAT(Keys(s2), ElementsAre(1u, 2u));
  std::set<uint64_t> old_ids;
  for (const auto& s : {s1, s2}) {
    for (const worker::v1::SeqStep& seq : s.plan.seqs()) old_ids.insert(seq.seq_id());
  }

  EXPECT_EQ(scheduler_->RequeueAll(), 2);
  EXPECT_EQ(scheduler_->running(), 0);
  EXPECT_EQ(scheduler_->waiting(), 3);
  EXPECT_TRUE(scheduler_->HasWork());
  EXPECT_EQ(scheduler_->ComputedOf(1), 0);
  std::vector<int32_t> expected1 = Prompt(1, 5);
  expected1.push_back(7);
  EXPECT_EQ(*scheduler_->TokensOf(1), expected1);
  // The result of the lost step is for a sequence that is gone: it is dropped.
  EXPECT_TRUE(Complete(s2, 8).sampled.empty());

  blocks_->Reset(6);  // the next job, with a smaller cache
  Scheduler::Step s3 = Schedule();
  ASSERT_THAT(Keys(s3), ElementsAre(1u, 2u));  // in order; 3 still waits (max_running)
  EXPECT_TRUE(s3.plan.released().empty());
  EXPECT_EQ(scheduler_->waiting(), 1);
  for (int i = 0; i < 2; ++i) {
    const worker::v1::SeqStep& seq = s3.plan.seqs(i);
    EXPECT_EQ(old_ids.count(seq.seq_id()), 0u) << "seq_id " << seq.seq_id() << " reused";
    EXPECT_EQ(seq.start_pos(), 0);
    EXPECT_TRUE(seq.sample());
    for (int32_t b : seq.block_table()) EXPECT_LT(b, 6);
  }
  EXPECT_EQ(Tokens(s3.plan.seqs(0)), expected1);
  EXPECT_EQ(s3.plan.seqs(0).prompt_len(), 5);
  std::vector<int32_t> expected2 = Prompt(2, 3);
  expected2.push_back(7);
  EXPECT_EQ(Tokens(s3.plan.seqs(1)), expected2);
  EXPECT_EQ(s3.plan.seqs(1).prompt_len(), 3);
  EXPECT_EQ(blocks_->free(), 6 - 2 - 1);
  Scheduler::Outcome o3 = Complete(s3, 9);
  ASSERT_EQ(o3.sampled.size(), 2u);
  expected1.push_back(9);
  EXPECT_EQ(*scheduler_->TokensOf(1), expected1);

  // Lost again, before 3 ever ran: a held request that leaves is released nowhere.
  scheduler_->RequeueAll();
  EXPECT_TRUE(scheduler_->Remove(2));
  blocks_->Reset(6);
  Scheduler::Step s4 = Schedule();
  EXPECT_THAT(Keys(s4), ElementsAre(1u, 3u));
  EXPECT_TRUE(s4.plan.released().empty());
  EXPECT_EQ(Tokens(s4.plan.seqs(0)), expected1);
  EXPECT_EQ(Tokens(s4.plan.seqs(1)), Prompt(3, 4));
}

// Many requests of random lengths through a small cache: every step stays within the budget,
// no block is in two tables, and every request ends with all its tokens.
TEST_F(SchedulerTest, StressKeepsInvariants) {
  Init(2, 24, 16, 8, 1000);
  uint32_t rng = 12345;
  auto next = [&] { return rng = rng * 1664525u + 1013904223u; };
  std::unordered_map<Key, int> remaining;  // tokens still to generate
  for (Key k = 1; k <= 40; ++k) {
    const int len = 1 + static_cast<int>(next() % 20);
    ASSERT_TRUE(Add(k, len).ok());
    remaining[k] = 1 + static_cast<int>(next() % 12);
  }
  int steps = 0, preemptions = 0;
  while (scheduler_->HasWork() && steps < 5000) {
    Scheduler::Step s = Schedule();
    ++steps;
    preemptions += static_cast<int>(s.preempted.size());
    for (auto& [key, status] : s.failed) remaining.erase(key);
    int tokens = 0;
    std::set<int32_t> used;
    for (const worker::v1::SeqStep& seq : s.plan.seqs()) {
      tokens += seq.tokens_size();
      EXPECT_EQ(seq.block_table_size(), (seq.start_pos() + seq.tokens_size() + 1) / 2);
      for (int32_t b : seq.block_table()) EXPECT_TRUE(used.insert(b).second) << "block " << b;
    }
    EXPECT_LE(tokens, 16);
    CompleteAndRetire(s, &remaining);
  }
  EXPECT_FALSE(scheduler_->HasWork());
  EXPECT_TRUE(remaining.empty());
  EXPECT_EQ(blocks_->free(), 24);
  EXPECT_GT(preemptions, 0);  // the cache is small enough to force some
}

// A later prompt that starts with the full blocks of an earlier one attaches them: its first
// step starts past them, carries their tokens as history, and queries / hits count tokens.
TEST_F(SchedulerTest, PrefixHitSkipsTheCachedBlocks) {
  Init(4, 20, 64);
  const std::vector<int32_t> shared = Prompt(1, 8);  // 2 blocks of 4
  ASSERT_TRUE(AddTokens(1, Concat(shared, {50, 51})).ok());
  Scheduler::Step s1 = Schedule();
  EXPECT_EQ(s1.prefix_query_tokens, 10);
  EXPECT_EQ(s1.prefix_hit_tokens, 0);
  EXPECT_TRUE(s1.plan.seqs(0).history().empty());
  Complete(s1);
  const std::vector<int32_t> first_blocks = scheduler_->BlocksOf(1);
  EXPECT_EQ(blocks_->cached(), 2);  // the third block is partial
  // A second request hits while the first still runs: the two full blocks are shared.
  ASSERT_TRUE(AddTokens(2, Concat(shared, {60, 61, 62, 63, 64})).ok());
  Scheduler::Step s2 = Schedule();
  ASSERT_THAT(Keys(s2), ElementsAre(1u, 2u));
  const worker::v1::SeqStep& hit = s2.plan.seqs(1);
  EXPECT_EQ(hit.start_pos(), 8);
  EXPECT_THAT(Tokens(hit), ElementsAre(60, 61, 62, 63, 64));
  EXPECT_EQ(History(hit), shared);
  EXPECT_EQ(hit.prompt_len(), 13);
  ASSERT_EQ(hit.block_table_size(), 4);
  EXPECT_EQ(hit.block_table(0), first_blocks[0]);
  EXPECT_EQ(hit.block_table(1), first_blocks[1]);
  EXPECT_NE(hit.block_table(2), first_blocks[2]);  // the partial block is never shared
  EXPECT_EQ(blocks_->RefCount(first_blocks[0]), 2);
  EXPECT_EQ(s2.prefix_query_tokens, 13);
  EXPECT_EQ(s2.prefix_hit_tokens, 8);
  Complete(s2);
  // History goes with the first step only.
  Scheduler::Step s3 = Schedule();
  for (const worker::v1::SeqStep& seq : s3.plan.seqs()) EXPECT_TRUE(seq.history().empty());
  Complete(s3);
  // Both end: the shared blocks are released by both, then evictable; nothing leaks.
  scheduler_->Remove(1);
  EXPECT_EQ(blocks_->RefCount(first_blocks[0]), 1);
  scheduler_->Remove(2);
  EXPECT_EQ(blocks_->RefCount(first_blocks[0]), 0);
  EXPECT_EQ(blocks_->free(), 20);
  EXPECT_GE(blocks_->evictable(), 3);  // 2 shared + 2's full third block (60..63)
  // A prompt of exactly the cached blocks recomputes its last one, so that it has logits.
  ASSERT_TRUE(AddTokens(3, shared).ok());
  Scheduler::Step s4 = Schedule();
  EXPECT_EQ(s4.plan.seqs(0).start_pos(), 4);
  EXPECT_THAT(Tokens(s4.plan.seqs(0)), ElementsAreArray(shared.begin() + 4, shared.end()));
  EXPECT_TRUE(s4.plan.seqs(0).sample());
  EXPECT_EQ(s4.prefix_hit_tokens, 4);
}

// A preempted sequence's blocks stay cached (evictable); readmitted, it finds them, generated
// tokens included (their history tells the workers which positions were generated).
TEST_F(SchedulerTest, APreemptedSequenceFindsItsOwnBlocksAgain) {
  Init(2, 6, 64);
  ASSERT_TRUE(Add(1, 4).ok());
  ASSERT_TRUE(Add(2, 3).ok());
  Complete(Schedule(), 11);  // 1: 2 blocks, 2: 2 blocks (4 of 6)
  Complete(Schedule(), 12);  // 1 at position 4: a third block; 2 at 3
  Complete(Schedule(), 13);  // 1 at 5; 2 at 4: its third block (6 of 6)
  EXPECT_EQ(blocks_->free(), 0);
  // 1 at position 6 needs a fourth block: 2 (the newest) is preempted.
  Scheduler::Step s4 = Schedule();
  EXPECT_THAT(s4.preempted, ElementsAre(2u));
  // 2 held positions 0-4 (200 201 202 11 12), its two full blocks cached; one of its three
  // blocks went to 1, taken from the end of its chain (the partial one, freed).
  EXPECT_EQ(blocks_->evictable(), 2);
  Complete(s4, 14);
  scheduler_->Remove(1);
  Scheduler::Step s5 = Schedule();
  ASSERT_THAT(Keys(s5), ElementsAre(2u));
  const worker::v1::SeqStep& again = s5.plan.seqs(0);
  EXPECT_EQ(again.start_pos(), 4);
  EXPECT_THAT(History(again), ElementsAre(200, 201, 202, 11));
  EXPECT_THAT(Tokens(again), ElementsAre(12, 13));
  EXPECT_EQ(again.prompt_len(), 3);
  EXPECT_EQ(s5.prefix_hit_tokens, 4);
  EXPECT_EQ(s5.prefix_query_tokens, 6);
  for (int32_t b : again.block_table()) EXPECT_EQ(blocks_->RefCount(b), 1);
  Complete(s5, 15);
  EXPECT_THAT(*scheduler_->TokensOf(2), ElementsAre(200, 201, 202, 11, 12, 13, 15));
  scheduler_->Remove(2);
  EXPECT_EQ(blocks_->free(), 6);
}

// The worker job is lost: its memory is gone, so nothing cached may be hit on the next one.
TEST_F(SchedulerTest, NoHitAfterTheJobIsLost) {
  Init(4, 20, 64);
  ASSERT_TRUE(Add(1, 9).ok());
  Complete(Schedule());
  EXPECT_EQ(blocks_->cached(), 2);
  ASSERT_TRUE(Add(2, 9).ok());  // other tokens
  scheduler_->RequeueAll();
  blocks_->Reset(20);  // as the engine does (Detach, then the next job's Activate)
  Scheduler::Step s = Schedule();
  ASSERT_THAT(Keys(s), ElementsAre(1u, 2u));
  EXPECT_EQ(s.plan.seqs(0).start_pos(), 0);
  EXPECT_TRUE(s.plan.seqs(0).history().empty());
  EXPECT_EQ(s.prefix_hit_tokens, 0);
  EXPECT_EQ(s.prefix_query_tokens, 10 + 9);
}

// Cached blocks nobody holds count as free for admission: a new prompt evicts them.
TEST_F(SchedulerTest, EvictableBlocksAreFreeForAdmission) {
  Init(4, 4, 64);
  ASSERT_TRUE(Add(1, 12).ok());
  Complete(Schedule());
  scheduler_->Remove(1);
  EXPECT_EQ(blocks_->evictable(), 3);
  EXPECT_EQ(blocks_->free(), 4);
  ASSERT_TRUE(Add(2, 12).ok());
  Scheduler::Step s = Schedule();
  ASSERT_THAT(Keys(s), ElementsAre(2u));
  EXPECT_EQ(s.plan.seqs(0).start_pos(), 0);
  EXPECT_EQ(blocks_->free(), 1);
}

TEST_F(SchedulerTest, NoPrefixCachingNoHits) {
  Init(4, 20, 64, 64, 64, /*prefix_caching=*/false);
  ASSERT_TRUE(AddTokens(1, Prompt(1, 10)).ok());
  Complete(Schedule());
  scheduler_->Remove(1);
  ASSERT_TRUE(AddTokens(2, Prompt(1, 10)).ok());
  Scheduler::Step s = Schedule();
  EXPECT_EQ(s.plan.seqs(0).start_pos(), 0);
  EXPECT_TRUE(s.plan.seqs(0).history().empty());
  EXPECT_EQ(s.prefix_query_tokens, 0);
  EXPECT_EQ(s.prefix_hit_tokens, 0);
  EXPECT_EQ(blocks_->cached(), 0);
}

// Requests sharing prefixes through a small cache, with preemptions: no block is written by
// one sequence while another holds it, every table is whole, and everything is freed at the end.
TEST_F(SchedulerTest, StressWithSharedPrefixesKeepsInvariants) {
  Init(2, 24, 16, 8, 1000);
  uint32_t rng = 777;
  auto next = [&] { return rng = rng * 1664525u + 1013904223u; };
  std::unordered_map<Key, int> remaining;
  int64_t hits = 0;
  for (Key k = 1; k <= 40; ++k) {
    std::vector<int32_t> prompt = Prompt(next() % 3, static_cast<int>(next() % 8));
    const int tail = 1 + static_cast<int>(next() % 6);
    for (int i = 0; i < tail; ++i) prompt.push_back(static_cast<int32_t>(1000 + next() % 3));
    ASSERT_TRUE(AddTokens(k, prompt).ok());
    remaining[k] = 1 + static_cast<int>(next() % 8);
  }
  int steps = 0, preemptions = 0;
  while (scheduler_->HasWork() && steps < 5000) {
    Scheduler::Step s = Schedule();
    ++steps;
    hits += s.prefix_hit_tokens;
    preemptions += static_cast<int>(s.preempted.size());
    for (auto& [key, status] : s.failed) remaining.erase(key);
    std::map<int32_t, uint64_t> written;
    for (const worker::v1::SeqStep& seq : s.plan.seqs()) {
      EXPECT_EQ(seq.block_table_size(), (seq.start_pos() + seq.tokens_size() + 1) / 2);
      EXPECT_TRUE(seq.history().empty() || seq.history_size() == seq.start_pos());
      for (int p = seq.start_pos(); p < seq.start_pos() + seq.tokens_size(); ++p) {
        EXPECT_TRUE(written.emplace(seq.block_table(p / 2), seq.seq_id()).second ||
                    written[seq.block_table(p / 2)] == seq.seq_id());
      }
    }
    for (const worker::v1::SeqStep& seq : s.plan.seqs()) {
      for (int32_t b : seq.block_table()) {
        auto w = written.find(b);
        EXPECT_TRUE(w == written.end() || w->second == seq.seq_id()) << "block " << b;
      }
    }
    CompleteAndRetire(s, &remaining);
  }
  EXPECT_FALSE(scheduler_->HasWork());
  EXPECT_TRUE(remaining.empty());
  EXPECT_EQ(blocks_->free(), 24);
  EXPECT_GT(hits, 0);
  EXPECT_GT(preemptions, 0);
}

}  // namespace
}  // namespace shardlm::coordinator
