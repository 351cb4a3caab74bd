// Overlapped steps and pipeline micro-batches against a fake worker job (fake_worker.h), over
// real gRPC streams: the coordinator keeps several steps in flight, plans are deltas (a
// sequence's whole state once, then only appended blocks; decodes planned before their input
// came back say sampled_input), and with --pp 2 the running sequences are split into two
// micro-batches. The fake job expands every plan as rank 0 of a real job does and checks it
// (block tables, positions, history), so any delta it cannot expand is an error there.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <map>
#include <mutex>
#include <set>
#include <thread>
#include <vector>

#include "tests/coordinator/fake_worker.h"
#include "tests/coordinator/service_fixture.h"

namespace shardlm::coordinator {
namespace {

using namespace std::chrono_literals;
using testing::FakeWorker;
using testing::FakeWorkerOptions;
using testing::IdsRequest;
using testing::Outcome;
using testing::Prompt;

// The plans as the coordinator sent them (deltas), in order.
struct Recorder {
  std::mutex mu;
  std::vector<worker::v1::StepPlan> plans;
  std::function<void(const worker::v1::StepPlan&, worker::v1::StepResult&)> Hook() {
    return [this](const worker::v1::StepPlan& plan, worker::v1::StepResult&) {
      std::lock_guard<std::mutex> lock(mu);
      plans.push_back(plan);
    };
  }
};

class StepsInFlightTest : public testing::ServiceTest {
 protected:
  // Runs `n` concurrent requests (prompt i of 6 + i tokens, `max_new` tokens each) and checks
  // their ids against the toy model.
  void RunConcurrent(int n, int max_new) {
    std::vector<Outcome> outcomes(static_cast<size_t>(n));
    std::vector<std::thread> threads;
    for (int i = 0; i < n; ++i) {
      threads.emplace_back(
          [&, i] { outcomes[i] = Generate(IdsRequest(Prompt(i + 1, 6 + i), max_new)); });
    }
    for (auto& th : threads) th.join();
    for (int i = 0; i < n; ++i) {
      ASSERT_TRUE(outcomes[i].status.ok()) << i << ": " << outcomes[i].status.error_message();
      EXPECT_EQ(outcomes[i].ids, FakeWorker::Reference(Prompt(i + 1, 6 + i), max_new))
          << "request " << i;
    }
  }
};

// What the deltas of one sequence (seq_id) look like over its steps: its first SeqStep has the
// whole state, later ones only new blocks (never one it had) and no sampling parameters.
void ExpectDeltas(const std::vector<worker::v1::StepPlan>& plans, int* sampled_inputs) {
  std::map<uint64_t, std::set<int32_t>> blocks;  // seq_id -> blocks sent so far
  for (const worker::v1::StepPlan& plan : plans) {
    for (const worker::v1::SeqStep& s : plan.seqs()) {
      SCOPED_TRACE(::testing::Message() << "step " << plan.step_id() << " seq " << s.seq_id());
      const bool first = blocks.count(s.seq_id()) == 0;
      EXPECT_EQ(s.continues(), !first);
      if (first) {
        EXPECT_GT(s.prompt_len(), 0);
        EXPECT_TRUE(s.has_sampling());
        EXPECT_FALSE(s.sampled_input());
      } else {
        EXPECT_EQ(s.prompt_len(), 0);
        EXPECT_FALSE(s.has_sampling());
        // Exactly the 4-token blocks its new positions open.
        const int32_t start = s.start_pos();
        const int32_t end = start + (s.sampled_input() ? 1 : s.tokens_size());
        EXPECT_EQ(s.block_table_size(), (end + 3) / 4 - (start + 3) / 4);
      }
      for (int32_t b : s.block_table()) {
        EXPECT_TRUE(blocks[s.seq_id()].insert(b).second) << "block " << b << " sent twice";
      }
      if (s.sampled_input()) {
        ++*sampled_inputs;
        EXPECT_EQ(s.tokens_size(), 0);
      }
    }
  }
}

TEST_F(StepsInFlightTest, OverlappedDecodesRunTheWorkersOwnSampleWithOneStage) {
  options_.max_batch_tokens = 64;
  StartServer();
  Recorder recorder;
  FakeWorkerOptions fo;
  fo.kv_blocks = 256;
  fo.step_delay = 2ms;  // the coordinator plans ahead while the job computes
  fo.spoil = recorder.Hook();
  Attach(fo);
  RunConcurrent(6, 12);
  int sampled_inputs = 0;
  ExpectDeltas(recorder.plans, &sampled_inputs);
  EXPECT_GT(sampled_inputs, 0) << "no decode was planned ahead of its input";
  // No step ran past a request's max_new_tokens, speculated decodes included: a sequence runs
  // at most its prompt + 12 - 1 positions (the 12th token is sampled, never run).
  std::map<uint64_t, int32_t> prompt_len;  // seq_id -> from its first SeqStep
  for (const worker::v1::StepPlan& plan : recorder.plans) {
    for (const worker::v1::SeqStep& s : plan.seqs()) {
      if (!s.continues()) prompt_len[s.seq_id()] = s.prompt_len();
      const int32_t end = s.start_pos() + (s.sampled_input() ? 1 : s.tokens_size());
      EXPECT_LE(end, prompt_len[s.seq_id()] + 12 - 1)
          << "step " << plan.step_id() << " seq " << s.seq_id();
    }
  }
  EXPECT_EQ(Info().kv_blocks_free(), 256);
  ExpectNoWorkerErrors();
}

TEST_F(StepsInFlightTest, TwoStagesSplitTheBatchIntoMicroBatches) {
  options_.pp = 2;
  options_.max_batch_tokens = 64;
  StartServer();
  Recorder recorder;
  FakeWorkerOptions fo;
  fo.world_size = 2;
  fo.kv_blocks = 256;
  fo.step_delay = 2ms;
  fo.spoil = recorder.Hook();
  FakeWorker& worker = Attach(fo);
  RunConcurrent(8, 16);
  int sampled_inputs = 0;
  ExpectDeltas(recorder.plans, &sampled_inputs);
  // Each step runs one of two micro-batches of about half the 8 sequences.
  EXPECT_LE(worker.max_batch(), 4);
  // While both micro-batches are full, steps alternate between them: a sequence is never in
  // two consecutive steps then.
  int alternating = 0;
  for (size_t i = 1; i < recorder.plans.size(); ++i) {
    std::set<uint64_t> before;
    for (const auto& s : recorder.plans[i - 1].seqs()) before.insert(s.seq_id());
    if (before.size() < 4 || recorder.plans[i].seqs_size() < 4) continue;
    bool shared = false;
    for (const auto& s : recorder.plans[i].seqs()) shared = shared || before.count(s.seq_id());
    EXPECT_FALSE(shared) << "steps " << recorder.plans[i - 1].step_id() << " and "
                         << recorder.plans[i].step_id() << " share a sequence";
    ++alternating;
  }
  EXPECT_GT(alternating, 4);
  EXPECT_EQ(Info().kv_blocks_free(), 256);
  ExpectNoWorkerErrors();
}

TEST_F(StepsInFlightTest, OneStepAtATimeSendsNoSampledInput) {
  options_.steps_in_flight = 1;
  StartServer();
  Recorder recorder;
  FakeWorkerOptions fo;
  fo.kv_blocks = 256;
  fo.spoil = recorder.Hook();
  Attach(fo);
  RunConcurrent(4, 8);
  int sampled_inputs = 0;
  ExpectDeltas(recorder.plans, &sampled_inputs);
  EXPECT_EQ(sampled_inputs, 0);
  ExpectNoWorkerErrors();
}

}  // namespace
}  // namespace shardlm::coordinator
