// Failures inside the step engine, through a FaultyBackend that fails on demand, under mpirun at
// np 1 and 2: a backend op that throws on every rank (a device out of memory) fails that step
// with a message naming the rank and the op, and the next step gives the tokens a fault-free
// engine gives; non-finite logits fail only their sequence. Also prints what the step agreement
// costs per step.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <chrono>
#include <iostream>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "base/check.h"
#include "formats/random_weights.h"
#include "kernels/cpu/cpu_backend.h"
#include "model/llama.h"
#include "runtime/engine.h"
#include "runtime/faulty_backend.h"
#include "tests/parallel/mpi_gtest_main.h"

namespace shardlm {
namespace {

using ::testing::HasSubstr;
using worker::v1::StepPlan;
using worker::v1::StepResult;

constexpr int kBlock = 4;

struct Fixture {
  ModelConfig config;
  std::unique_ptr<RandomWeightSource> weights;
};

Fixture TinyModel() {
  TinyModelSpec spec;
  spec.layers = 2;
  spec.heads = 4;
  spec.kv_heads = 2;
  spec.hidden = 32;
  spec.intermediate = 48;
  spec.vocab = 97;
  spec.seed = 7;
  Fixture f;
  f.config = *TinyModelConfig(spec);
  f.weights = std::make_unique<RandomWeightSource>(f.config, spec.seed, DType::kF32);
  return f;
}

std::unique_ptr<LlamaModel> LoadModel(const Fixture& f, Backend& backend, int tp, int pp) {
  auto plan = MakeShardPlan(PlanInputFor(f.config, tp, pp));
  EXPECT_TRUE(plan.ok()) << plan.status();
  auto ctx = ParallelContext::Create(*plan, std::shared_ptr<Communicator>(&mpitest::World(),
                                                                          [](Communicator*) {}));
  EXPECT_TRUE(ctx.ok()) << ctx.status();
  auto model = LlamaModel::Load(f.config, *f.weights, backend, std::move(*ctx));
  EXPECT_TRUE(model.ok()) << model.status();
  return model.ok() ? std::move(*model) : nullptr;
}

// Layouts of the world: every split at np 2; `with_pp` false leaves out pipeline stages (a
// stage that throws leaves the next one waiting for its activations: the job then ends, which a
// test in one process cannot survive; the end-to-end test covers it).
std::vector<std::pair<int, int>> Layouts(bool with_pp) {
  const int world = mpitest::World().size();
  if (world == 1) return {{1, 1}};
  if (world == 2 && with_pp) return {{2, 1}, {1, 2}};
  return {{world, 1}};
}

// One sequence's share of a step: `tokens` from `start`, greedy, sampling after the last.
worker::v1::SeqStep Seq(uint64_t id, std::vector<int32_t> tokens, int start,
                        std::vector<int32_t> blocks, int prompt_len) {
  worker::v1::SeqStep s;
  s.set_seq_id(id);
  for (int32_t t : tokens) s.add_tokens(t);
  s.set_start_pos(start);
  for (int32_t b : blocks) s.add_block_table(b);
  s.set_sample(true);
  s.set_prompt_len(prompt_len);
  s.mutable_sampling()->set_temperature(0.0f);
  return s;
}

StepPlan Plan(uint64_t step, std::vector<worker::v1::SeqStep> seqs,
              std::vector<uint64_t> released = {}) {
  StepPlan p;
  p.set_step_id(step);
  for (auto& s : seqs) *p.add_seqs() = std::move(s);
  for (uint64_t r : released) p.add_released(r);
  return p;
}

// Rank 0's result of a step that must succeed on every rank (others get an empty one).
StepResult MustStep(WorkerEngine& engine, const StepPlan& plan) {
  absl::StatusOr<StepResult> r = engine.Step(plan);
  EXPECT_TRUE(r.ok()) << r.status();
  if (!r.ok()) return StepResult();
  EXPECT_EQ(r->error(), "") << "step " << plan.step_id();
  return *r;
}

bool IsRank0() { return mpitest::World().rank() == 0; }

TEST(EngineFaultTest, FailedStepNamesRankAndOpAndTheNextStepWorks) {
  SetCheckWorldRank(mpitest::World().rank());  // as the worker does
  const Fixture f = TinyModel();
  for (auto [tp, pp] : Layouts(/*with_pp=*/false)) {
    SCOPED_TRACE(absl::StrCat("tp=", tp, " pp=", pp));
    auto cpu = CreateCpuBackend(1);
    FaultyBackend faulty(*cpu, mpitest::World().rank());
    auto model = LoadModel(f, faulty, tp, pp);
    ASSERT_NE(model, nullptr);
    WorkerEngine reference(*model, model->NewPagedCache(kBlock, 16));
    WorkerEngine engine(*model, model->NewPagedCache(kBlock, 16));
    const StepPlan a = Plan(1, {Seq(10, {1, 17, 42, 90, 3}, 0, {0, 1}, 5)});
    const StepPlan b = Plan(2, {Seq(11, {5, 9, 60}, 0, {2}, 3)}, {10});
    const StepResult want = MustStep(reference, b);

    // Every rank: the third Linear (layer 0's fused gate/up projection, between the layer's two
    // all-reduces).
    for (const auto& [op, call] : std::vector<std::pair<std::string, int>>{{"Linear", 3},
                                                                           {"Argmax", 1}}) {
      SCOPED_TRACE(op);
      faulty.Arm({op, call});
      absl::StatusOr<StepResult> failed = engine.Step(a);
      ASSERT_TRUE(failed.ok()) << failed.status();
      if (IsRank0()) {
        EXPECT_THAT(failed->error(),
                    HasSubstr(absl::StrCat("rank 0 failed in ", op, ": cudaMallocAsync")));
        EXPECT_THAT(failed->error(), HasSubstr("(out of memory) [CUDA, rank 0, "));
        if (tp > 1) {
          EXPECT_THAT(failed->error(), HasSubstr("(2 ranks failed)"));
        }
        EXPECT_EQ(failed->results_size(), 0);
      } else {
        EXPECT_EQ(failed->error(), "");
      }
      // The job goes on: the next step gives the fault-free engine's token.
      const StepResult next = MustStep(engine, b);
      if (IsRank0()) {
        ASSERT_EQ(next.results_size(), 1);
        EXPECT_EQ(next.results(0).token(), want.results(0).token());
      }
    }
  }
}

TEST(EngineFaultTest, NonFiniteLogitsFailOnlyTheirSequence) {
  const Fixture f = TinyModel();
  for (auto [tp, pp] : Layouts(/*with_pp=*/true)) {
    SCOPED_TRACE(absl::StrCat("tp=", tp, " pp=", pp));
    auto cpu = CreateCpuBackend(1);
    FaultyBackend faulty(*cpu, mpitest::World().rank());
    auto model = LoadModel(f, faulty, tp, pp);
    ASSERT_NE(model, nullptr);
    WorkerEngine reference(*model, model->NewPagedCache(kBlock, 16));
    WorkerEngine engine(*model, model->NewPagedCache(kBlock, 16));
    const StepPlan both = Plan(1, {Seq(20, {3, 1, 4, 1, 5}, 0, {0, 1}, 5),
                                   Seq(21, {9, 2, 6}, 0, {2}, 3)});
    const StepResult want = MustStep(reference, both);

    // Rank 0's first Embedding is stage 0's: its first row is sequence 20's first token, whose
    // NaN reaches only sequence 20's logits (attention stays within a sequence).
    faulty.Arm({"Embedding", 1, /*rank=*/0, FaultSpec::Kind::kNan});
    const StepResult got = MustStep(engine, both);
    if (IsRank0()) {
      ASSERT_EQ(got.results_size(), 2);
      EXPECT_EQ(got.results(0).seq_id(), 20u);
      EXPECT_THAT(got.results(0).error(), HasSubstr("logits are not finite (NaN or Inf)"));
      EXPECT_EQ(got.results(1).seq_id(), 21u);
      EXPECT_EQ(got.results(1).error(), "");
      EXPECT_EQ(got.results(1).token(), want.results(1).token());
    }
    // Sequence 21 decodes on as in the fault-free engine; 20 is released.
    int32_t token = 0;
    if (IsRank0()) token = want.results(1).token();
    ASSERT_TRUE(mpitest::World().Broadcast(&token, sizeof(token), 0).ok());
    const StepPlan decode = Plan(2, {Seq(21, {token}, 3, {2}, 3)}, {20});
    const StepResult want_next = MustStep(reference, decode);
    const StepResult got_next = MustStep(engine, decode);
    if (IsRank0()) {
      ASSERT_EQ(got_next.results_size(), 1);
      EXPECT_EQ(got_next.results(0).error(), "");
      EXPECT_EQ(got_next.results(0).token(), want_next.results(0).token());
    }
  }
}

// What the agreement after every step costs, next to the step itself (decode steps of 4
// sequences on the tiny model). Prints both; fails only if the agreement is not recorded.
TEST(EngineFaultTest, AgreementCostPerStep) {
  const Fixture f = TinyModel();
  const auto [tp, pp] = Layouts(/*with_pp=*/false).front();
  auto cpu = CreateCpuBackend(1);
  auto model = LoadModel(f, *cpu, tp, pp);
  ASSERT_NE(model, nullptr);
  WorkerEngine engine(*model, model->NewPagedCache(kBlock, 64));
  std::vector<worker::v1::SeqStep> prefill;
  for (int s = 0; s < 4; ++s) prefill.push_back(Seq(30 + s, {s + 1, 2, 3}, 0, {s}, 3));
  MustStep(engine, Plan(1, prefill));
  constexpr int kSteps = 200;
  const auto t0 = std::chrono::steady_clock::now();
  const absl::Duration before = engine.agreement()->total_wait();
  for (int step = 0; step < kSteps; ++step) {
    std::vector<worker::v1::SeqStep> seqs;
    const int pos = 3 + step % 12;  // within the 16 positions of each sequence's 4 blocks
    for (int s = 0; s < 4; ++s) {
      seqs.push_back(Seq(30 + s, {7}, pos, {s, 4 + s, 8 + s, 12 + s}, 3));
    }
    MustStep(engine, Plan(2 + step, seqs));
  }
  const double step_us =
      std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - t0).count() /
      kSteps;
  const double agree_us =
      absl::ToDoubleMicroseconds(engine.agreement()->total_wait() - before) / kSteps;
  // Each rank's wait: the rank that comes last waits for the reduction alone (its cost); the
  // others also wait for it to come.
  std::vector<double> waits(static_cast<size_t>(mpitest::World().size()));
  ASSERT_TRUE(mpitest::World().AllGather(&agree_us, waits.data(), sizeof(double)).ok());
  if (IsRank0()) {
    std::cout << "np " << mpitest::World().size() << " (tp " << tp << "): whole step " << step_us
              << " us; step agreement wait per step on each rank (us):";
    for (double w : waits) std::cout << " " << w;
    std::cout << std::endl;
  }
  EXPECT_EQ(engine.agreement()->agreements(), kSteps + 1);
}

}  // namespace
}  // namespace shardlm
