// The worker's step engine without a coordinator: plans built here as a scheduler would (chunked
// prefill, sequences joining and leaving, scattered KV blocks). Run under mpirun at np 1 and 2
// (tp=2 and pp=2 there): greedy tokens equal the offline generation of each sequence alone (one
// rank, one sequence per step), a seeded sampled sequence gives the same tokens alone and in a
// batch, and the logits rows a SeqStep asks for come back next to the sampled tokens. Prefix
// caching (PrefixCacheEngineTest): the coordinator's scheduler plans the steps, and a cache hit
// (its SeqStep.history) gives the same ids as no hit, greedy and seeded with penalties.
// Seq literals leave the progress fields at their defaults.
#pragma GCC diagnostic ignored "-Wmissing-field-initializers"
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <map>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "coordinator/kv_block_manager.h"
#include "coordinator/scheduler.h"
#include "kernels/cpu/cpu_backend.h"
#include "runtime/generator.h"
#include "model/llama.h"
#include "formats/random_weights.h"
#include "tests/parallel/mpi_gtest_main.h"
#include "runtime/engine.h"
#include "runtime/step_deltas.h"

namespace shardlm {
namespace {

struct Seq {
  uint64_t id;
  std::vector<int32_t> prompt;
  int join_step;        // first step it takes part in
  int chunk;            // prompt tokens per prefill step
  shardlm::v1::SamplingParams sampling;
  int max_new = 8;
  // progress
  int fed = 0;          // tokens already run
  std::vector<int32_t> generated;
  std::vector<int32_t> blocks;
};

constexpr int kBlock = 4;

// Runs `seqs` to completion through `engine`; blocks are handed out from a shuffled free list.
void RunAll(WorkerEngine& engine, std::vector<Seq>& seqs, int64_t num_blocks) {
  std::vector<int32_t> free_blocks;
  for (int64_t b = num_blocks - 1; b >= 0; --b) free_blocks.push_back(static_cast<int32_t>((b * 7) % num_blocks));
  std::vector<uint64_t> released;
  for (int step = 0; step < 100; ++step) {
    worker::v1::StepPlan plan;
    plan.set_step_id(step);
    for (uint64_t id : released) plan.add_released(id);
    released.clear();
    std::vector<Seq*> in_plan;
    for (Seq& s : seqs) {
      if (step < s.join_step || static_cast<int>(s.generated.size()) >= s.max_new) continue;
      const int prompt_len = static_cast<int>(s.prompt.size());
      worker::v1::SeqStep* st = plan.add_seqs();
      st->set_seq_id(s.id);
      st->set_start_pos(s.fed);
      st->set_prompt_len(prompt_len);
      *st->mutable_sampling() = s.sampling;
      int n;
      if (s.fed < prompt_len) {
        n = std::min(s.chunk, prompt_len - s.fed);
        for (int i = 0; i < n; ++i) st->add_tokens(s.prompt[s.fed + i]);
        st->set_sample(s.fed + n == prompt_len);
      } else {
        n = 1;
        st->add_tokens(s.generated.back());
        st->set_sample(true);
      }
      while (static_cast<int>(s.blocks.size()) * kBlock < s.fed + n) {
        s.blocks.push_back(free_blocks.back());
        free_blocks.pop_back();
      }
      for (int32_t b : s.blocks) st->add_block_table(b);
      s.fed += n;
      in_plan.push_back(&s);
    }
    if (in_plan.empty()) break;
    // Every rank computes; rank 0 gets the result and shares the ids so all ranks stay in step.
    auto result = engine.Step(plan);
    ASSERT_TRUE(result.ok()) << result.status();
    std::string bytes = result->SerializeAsString();
    uint64_t size = bytes.size();
    ASSERT_TRUE(mpitest::World().Broadcast(&size, sizeof(size), 0).ok());
    bytes.resize(size);
    ASSERT_TRUE(mpitest::World().Broadcast(bytes.data(), size, 0).ok());
    worker::v1::StepResult r;
    ASSERT_TRUE(r.ParseFromString(bytes));
    ASSERT_EQ(r.error(), "");
    for (const worker::v1::SeqResult& res : r.results()) {
      for (Seq* s : in_plan) {
        if (s->id != res.seq_id()) continue;
        s->generated.push_back(res.token());
        if (static_cast<int>(s->generated.size()) >= s->max_new) {
          free_blocks.insert(free_blocks.end(), s->blocks.begin(), s->blocks.end());
          released.push_back(s->id);
        }
      }
    }
  }
}

struct Fixture {
  ModelConfig config;
  std::unique_ptr<RandomWeightSource> weights;
};

Fixture TinyModel() {
  TinyModelSpec spec;
  spec.layers = 4;
  spec.heads = 8;
  spec.kv_heads = 2;
  spec.hidden = 64;
  spec.intermediate = 96;
  spec.vocab = 257;
  spec.seed = 31;
  Fixture f;
  f.config = *TinyModelConfig(spec);
  f.weights = std::make_unique<RandomWeightSource>(f.config, spec.seed, DType::kF32);
  return f;
}

std::vector<std::pair<int, int>> Layouts() {
  const int world = mpitest::World().size();
  if (world == 1) return {{1, 1}};
  if (world == 2) return {{2, 1}, {1, 2}};
  return {{world, 1}};
}

std::unique_ptr<LlamaModel> LoadModel(const Fixture& f, Backend& backend, int tp, int pp) {
  auto plan = MakeShardPlan(PlanInputFor(f.config, tp, pp));
  EXPECT_TRUE(plan.ok()) << plan.status();
  auto ctx = ParallelContext::Create(*plan, std::shared_ptr<Communicator>(&mpitest::World(),
                                                                          [](Communicator*) {}));
  EXPECT_TRUE(ctx.ok()) << ctx.status();
  auto model = LlamaModel::Load(f.config, *f.weights, backend, std::move(*ctx));
  EXPECT_TRUE(model.ok()) << model.status();
  return std::move(*model);
}

std::vector<int32_t> Offline(const Fixture& f, const std::vector<int32_t>& prompt, int n) {
  auto backend = CreateCpuBackend(1);
  auto model = LlamaModel::Load(f.config, *f.weights, *backend);
  GenerateOptions options;
  options.max_new_tokens = n;
  options.stop_at_eos = false;
  auto result = Generate(**model, prompt, options);
  EXPECT_TRUE(result.ok()) << result.status();
  return result->tokens;
}

TEST(WorkerEngineTest, BatchedGreedyEqualsOfflineGeneration) {
  Fixture f = TinyModel();
  for (auto [tp, pp] : Layouts()) {
    SCOPED_TRACE(absl::StrCat("tp=", tp, " pp=", pp));
    auto backend = CreateCpuBackend(1);
    auto model = LoadModel(f, *backend, tp, pp);
    WorkerEngine engine(*model, model->NewPagedCache(kBlock, 64));
    std::vector<Seq> seqs = {
        {1, {1, 17, 42, 99, 3, 200, 31, 256, 7, 128, 64}, 0, 4, {}},  // prefill in 3 chunks
        {2, {5, 9}, 0, 16, {}},
        {3, {250, 4, 4, 4, 8, 16, 23}, 3, 16, {}},                    // joins later
        {4, {77}, 5, 1, {}},
    };
    for (Seq& s : seqs) s.sampling.set_temperature(0.0f);
    seqs[1].max_new = 3;  // leaves early; its blocks go to others
    RunAll(engine, seqs, 64);
    for (const Seq& s : seqs) {
      EXPECT_EQ(s.generated, Offline(f, s.prompt, s.max_new)) << "seq " << s.id;
    }
  }
}

TEST(WorkerEngineTest, SeededSamplingDoesNotDependOnTheBatch) {
  Fixture f = TinyModel();
  for (auto [tp, pp] : Layouts()) {
    SCOPED_TRACE(absl::StrCat("tp=", tp, " pp=", pp));
    auto backend = CreateCpuBackend(1);
    auto model = LoadModel(f, *backend, tp, pp);
    shardlm::v1::SamplingParams sampling;
    sampling.set_temperature(0.9f);
    sampling.set_top_p(0.95f);
    sampling.set_top_k(50);
    sampling.set_repetition_penalty(1.1f);
    sampling.set_presence_penalty(0.2f);
    sampling.set_seed(1234);
    const std::vector<int32_t> prompt = {3, 1, 4, 1, 5, 9, 2, 6};
    std::vector<Seq> alone = {{10, prompt, 0, 8, sampling, 12}};
    {
      WorkerEngine engine(*model, model->NewPagedCache(kBlock, 64));
      RunAll(engine, alone, 64);
    }
    std::vector<Seq> crowd;
    for (int i = 0; i < 6; ++i) {
      shardlm::v1::SamplingParams other = sampling;
      other.set_seed(99 + i);
      crowd.push_back({static_cast<uint64_t>(20 + i), {static_cast<int32_t>(7 + i), 8, 9}, i % 3, 2, other, 12});
    }
    crowd.push_back({10, prompt, 2, 3, sampling, 12});  // other chunking, later start
    {
      WorkerEngine engine(*model, model->NewPagedCache(kBlock, 64));
      RunAll(engine, crowd, 64);
    }
    EXPECT_EQ(crowd.back().generated, alone[0].generated);
    // And sampling did something other than greedy.
    EXPECT_NE(alone[0].generated, Offline(f, prompt, 12));
  }
}

// Every row of a prompt chunk (LOGITS_ALL, without and with sampling) and the sampled row of
// another sequence in the same step (LOGITS_SAMPLED) come back on rank 0, equal to the rows of
// each sequence run alone on one rank (within 1e-4 x max|logit|: other batch shapes sum in
// another order); each greedy token is the argmax of the row returned for it.
TEST(WorkerEngineTest, ReturnsTheLogitsRowsAskedFor) {
  Fixture f = TinyModel();
  const int64_t vocab = f.config.vocab_size;
  const std::vector<int32_t> a = {1, 17, 42, 99, 3, 200, 31};  // in chunks of 4 and 3
  const std::vector<int32_t> b = {5, 9, 250};
  std::vector<float> want_a, want_b;
  {
    auto backend = CreateCpuBackend(1);
    auto model = LlamaModel::Load(f.config, *f.weights, *backend);
    ASSERT_TRUE(model.ok()) << model.status();
    auto la = PromptLogits(**model, a), lb = PromptLogits(**model, b);
    ASSERT_TRUE(la.ok() && lb.ok()) << la.status() << lb.status();
    want_a = *la;
    want_b = std::vector<float>(lb->end() - vocab, lb->end());  // the row after b's last token
  }
  auto argmax = [&](const float* row) {
    return static_cast<int32_t>(std::max_element(row, row + vocab) - row);
  };
  // |got - want| <= 1e-4 x max|want| over rows [first, first + rows) of `want`.
  auto expect_rows = [&](const google::protobuf::RepeatedField<float>& got,
                         const std::vector<float>& want, int64_t first, int64_t rows) {
    ASSERT_EQ(got.size(), rows * vocab);
    double scale = 0, diff = 0;
    for (int64_t i = 0; i < rows * vocab; ++i) {
      const double w = want[first * vocab + i];
      scale = std::max(scale, std::abs(w));
      diff = std::max(diff, std::abs(got[static_cast<int>(i)] - w));
    }
    EXPECT_LE(diff, 1e-4 * scale);
  };
  for (auto [tp, pp] : Layouts()) {
    SCOPED_TRACE(absl::StrCat("tp=", tp, " pp=", pp));
    auto backend = CreateCpuBackend(1);
    auto model = LoadModel(f, *backend, tp, pp);
    WorkerEngine engine(*model, model->NewPagedCache(kBlock, 16));
    auto seq = [](worker::v1::StepPlan& plan, uint64_t id, std::vector<int32_t> tokens,
                  int start, int prompt_len, std::vector<int32_t> blocks, bool sample,
                  worker::v1::LogitsRows logits) {
      worker::v1::SeqStep* s = plan.add_seqs();
      s->set_seq_id(id);
      s->mutable_tokens()->Add(tokens.begin(), tokens.end());
      s->set_start_pos(start);
      s->set_prompt_len(prompt_len);
      s->mutable_block_table()->Add(blocks.begin(), blocks.end());
      s->set_sample(sample);
      s->mutable_sampling()->set_temperature(0.0f);
      s->set_logits(logits);
    };
    worker::v1::StepPlan first;
    first.set_step_id(1);
    seq(first, 1, {a.begin(), a.begin() + 4}, 0, 7, {9}, false, worker::v1::LOGITS_ALL);
    seq(first, 2, b, 0, 3, {2}, true, worker::v1::LOGITS_SAMPLED);
    auto r1 = engine.Step(first);
    ASSERT_TRUE(r1.ok()) << r1.status();
    worker::v1::StepPlan second;
    second.set_step_id(2);
    seq(second, 1, {a.begin() + 4, a.end()}, 4, 7, {9, 4}, true, worker::v1::LOGITS_ALL);
    auto r2 = engine.Step(second);
    ASSERT_TRUE(r2.ok()) << r2.status();
    if (mpitest::World().rank() != 0) continue;
    ASSERT_EQ(r1->error(), "");
    ASSERT_EQ(r1->results_size(), 2);
    EXPECT_EQ(r1->results(0).seq_id(), 1u);
    expect_rows(r1->results(0).logits(), want_a, 0, 4);
    EXPECT_EQ(r1->results(1).seq_id(), 2u);
    expect_rows(r1->results(1).logits(), want_b, 0, 1);
    EXPECT_EQ(r1->results(1).token(), argmax(r1->results(1).logits().data()));
    ASSERT_EQ(r2->error(), "");
    ASSERT_EQ(r2->results_size(), 1);
    expect_rows(r2->results(0).logits(), want_a, 4, 3);
    EXPECT_EQ(r2->results(0).token(), argmax(r2->results(0).logits().data() + 2 * vocab));
    EXPECT_EQ(r2->results(0).token(), argmax(want_a.data() + 6 * vocab));
  }
}

TEST(WorkerEngineTest, BadPlanIsRefusedNotFatal) {
  Fixture f = TinyModel();
  auto [tp, pp] = Layouts()[0];
  auto backend = CreateCpuBackend(1);
  auto model = LoadModel(f, *backend, tp, pp);
  WorkerEngine engine(*model, model->NewPagedCache(kBlock, 8));
  worker::v1::StepPlan plan;
  plan.set_step_id(1);
  worker::v1::SeqStep* s = plan.add_seqs();
  s->set_seq_id(1);
  for (int i = 0; i < 6; ++i) s->add_tokens(1);
  s->add_block_table(0);  // 6 tokens need 2 blocks
  s->set_sample(true);
  auto result = engine.Step(plan);
  ASSERT_TRUE(result.ok()) << result.status();
  if (mpitest::World().rank() == 0) {
    EXPECT_THAT(result->error(), testing::HasSubstr("past its 1 blocks"));
  }
  s->clear_block_table();
  s->add_block_table(0);
  s->add_block_table(99);  // outside the cache
  result = engine.Step(plan);
  ASSERT_TRUE(result.ok());
  if (mpitest::World().rank() == 0) {
    EXPECT_THAT(result->error(), testing::HasSubstr("outside the cache"));
  }
  // The sampled row of a step that samples nothing.
  s->clear_block_table();
  s->add_block_table(0);
  s->add_block_table(1);
  s->set_sample(false);
  s->set_logits(worker::v1::LOGITS_SAMPLED);
  result = engine.Step(plan);
  ASSERT_TRUE(result.ok());
  EXPECT_THAT(result->error(), testing::HasSubstr("LOGITS_SAMPLED asks for the sampled row"));
  // A history that is not the tokens before start_pos.
  s->set_logits(worker::v1::LOGITS_NONE);
  s->set_start_pos(4);
  s->clear_tokens();
  s->add_tokens(1);
  s->add_history(1);
  result = engine.Step(plan);
  ASSERT_TRUE(result.ok());
  EXPECT_THAT(result->error(), testing::HasSubstr("history has 1 tokens, expected start_pos = 4"));
}

// --- Prefix caching through the real worker path: the coordinator's scheduler and block
// manager plan the steps, this engine runs them (every rank plans the same steps from the same
// results, as rank 0's result is shared).

struct Request {
  coordinator::Scheduler::Key key;
  std::vector<int32_t> prompt;
  shardlm::v1::SamplingParams sampling;
  int max_new = 6;
};

struct Served {
  std::map<coordinator::Scheduler::Key, std::vector<int32_t>> generated;
  int64_t hit_tokens = 0;
  int preemptions = 0;
};

// Serves `waves` of requests in order (a wave is queued once the previous one has ended) with
// `blocks` KV blocks of kBlock tokens.
Served Serve(LlamaModel& model, const std::vector<std::vector<Request>>& waves, int64_t blocks,
             bool prefix_caching, int32_t max_batch_tokens = 64) {
  WorkerEngine engine(model, model.NewPagedCache(kBlock, blocks));
  coordinator::KvBlockManager manager(kBlock, prefix_caching);
  manager.Reset(blocks);
  coordinator::Scheduler scheduler({max_batch_tokens, 64, 64}, &manager);
  StepDeltas deltas;  // the coordinator's plans are deltas: every rank expands them alike
  Served served;
  for (const std::vector<Request>& wave : waves) {
    std::map<coordinator::Scheduler::Key, int> left;
    for (const Request& r : wave) {
      EXPECT_TRUE(scheduler.Add(r.key, r.prompt, r.sampling, 0).ok());
      left[r.key] = r.max_new;
    }
    for (int step = 0; scheduler.HasWork() && step < 500; ++step) {
      coordinator::Scheduler::Step planned = scheduler.Schedule();
      EXPECT_TRUE(planned.failed.empty());
      served.hit_tokens += planned.prefix_hit_tokens;
      served.preemptions += static_cast<int>(planned.preempted.size());
      absl::StatusOr<worker::v1::StepPlan> expanded = deltas.Expand(planned.plan);
      EXPECT_TRUE(expanded.ok()) << expanded.status();
      if (!expanded.ok()) return served;
      auto result = engine.Step(*expanded);
      EXPECT_TRUE(result.ok()) << result.status();
      if (!result.ok()) return served;
      std::string bytes = result->SerializeAsString();
      uint64_t size = bytes.size();
      EXPECT_TRUE(mpitest::World().Broadcast(&size, sizeof(size), 0).ok());
      bytes.resize(size);
      EXPECT_TRUE(mpitest::World().Broadcast(bytes.data(), size, 0).ok());
      worker::v1::StepResult shared;
      EXPECT_TRUE(shared.ParseFromString(bytes));
      EXPECT_EQ(shared.error(), "");
      deltas.Record(*expanded, shared);
      for (const auto& sampled : scheduler.Complete(planned.plan, shared).sampled) {
        served.generated[sampled.key].push_back(sampled.token);
        if (--left[sampled.key] == 0) scheduler.Remove(sampled.key);
      }
    }
  }
  return served;
}

shardlm::v1::SamplingParams PenalizedSeeded(uint64_t seed) {
  shardlm::v1::SamplingParams p;
  p.set_temperature(0.9f);
  p.set_top_k(40);
  p.set_repetition_penalty(1.5f);
  p.set_presence_penalty(0.8f);
  p.set_frequency_penalty(0.6f);
  p.set_seed(seed);
  return p;
}

// Prompts that share 14 tokens (3 full blocks of 4), served one after another: the later ones
// hit the cached blocks and give the same ids as without the cache, greedy and seeded with
// penalties (whose state must see the cached prompt tokens: SeqStep.history).
TEST(PrefixCacheEngineTest, AHitGivesTheSameIdsAsNoHit) {
  Fixture f = TinyModel();
  std::vector<int32_t> prefix;
  for (int i = 0; i < 14; ++i) prefix.push_back(static_cast<int32_t>((i * 37 + 5) % 250));
  auto with = [&](std::vector<int32_t> tail) {
    std::vector<int32_t> p = prefix;
    p.insert(p.end(), tail.begin(), tail.end());
    return p;
  };
  shardlm::v1::SamplingParams greedy;
  greedy.set_temperature(0.0f);
  shardlm::v1::SamplingParams greedy_penalized;
  greedy_penalized.set_temperature(0.0f);
  greedy_penalized.set_repetition_penalty(1.8f);
  greedy_penalized.set_presence_penalty(1.0f);
  const std::vector<std::vector<Request>> waves = {
      {{1, with({1, 2}), greedy}},
      {{2, with({3, 4, 5}), greedy},
       {3, with({6}), PenalizedSeeded(7)},
       {4, with({9, 9, 8}), greedy_penalized},
       {5, prefix, PenalizedSeeded(8), 10}},  // exactly the prefix: its last block recomputed
  };
  for (auto [tp, pp] : Layouts()) {
    SCOPED_TRACE(absl::StrCat("tp=", tp, " pp=", pp));
    auto backend = CreateCpuBackend(1);
    auto model = LoadModel(f, *backend, tp, pp);
    const Served on = Serve(*model, waves, 64, true);
    const Served off = Serve(*model, waves, 64, false);
    EXPECT_EQ(on.hit_tokens, 4 * 12);  // wave 2: the 3 full blocks of the prefix, each
    EXPECT_EQ(off.hit_tokens, 0);
    ASSERT_EQ(on.generated.size(), 5u);
    EXPECT_EQ(on.generated, off.generated);
    // Sampling did something: the seeded request differs from its greedy run.
    std::vector<std::vector<Request>> plain = waves;
    plain[1][1].sampling = greedy;
    EXPECT_NE(Serve(*model, plain, 64, false).generated.at(3), on.generated.at(3));
  }
}

// Preemptions under a small cache: a preempted sequence finds its own blocks (generated
// tokens included) when it comes back, and every request still gets the ids it gets with a
// cache large enough for no preemption and no prefix cache.
TEST(PrefixCacheEngineTest, PreemptionWithHitsGivesTheSameIds) {
  Fixture f = TinyModel();
  shardlm::v1::SamplingParams greedy;
  greedy.set_temperature(0.0f);
  std::vector<Request> wave;
  for (int i = 0; i < 5; ++i) {
    std::vector<int32_t> prompt = {11, 22, 33, 44, 55};  // shared by all
    for (int j = 0; j <= i; ++j) prompt.push_back(static_cast<int32_t>(100 + 17 * i + j));
    wave.push_back({static_cast<uint64_t>(i + 1), prompt,
                    i % 2 == 0 ? PenalizedSeeded(100 + i) : greedy, 12});
  }
  for (auto [tp, pp] : Layouts()) {
    SCOPED_TRACE(absl::StrCat("tp=", tp, " pp=", pp));
    auto backend = CreateCpuBackend(1);
    auto model = LoadModel(f, *backend, tp, pp);
    const Served tight = Serve(*model, {wave}, 14, true, 16);
    const Served roomy = Serve(*model, {wave}, 64, false, 16);
    EXPECT_GT(tight.preemptions, 0);
    EXPECT_GT(tight.hit_tokens, 0);
    EXPECT_EQ(roomy.preemptions, 0);
    EXPECT_EQ(tight.generated, roomy.generated);
  }
}

}  // namespace
}  // namespace shardlm
