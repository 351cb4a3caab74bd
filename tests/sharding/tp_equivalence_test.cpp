// Run under mpirun (tests/sharding/CMakeLists.txt): the model split over the job's ranks gives the
// same greedy ids as one rank and logits within 1e-4 x max|logit|, for every (tp, pp) layout
// whose tp x pp is the world size: np 2 -> (2,1) and (1,2), np 3 -> (3,1), np 4 -> (2,2).
// Rank 0 also runs the unsplit model in-process as the reference. Both run the served path
// (runtime/generator.h: WorkerEngine steps; the logits rows gathered over the TP ranks and
// relayed from the last stage to rank 0 in the StepResult).
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <functional>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "formats/gguf_export.h"
#include "kernels/cpu/cpu_backend.h"
#include "formats/checkpoint_loader.h"
#include "tokenizer/loader.h"
#include "runtime/generator.h"
#include "model/llama.h"
#include "formats/random_weights.h"
#include "model/shard_loader.h"
#include "tests/parallel/mpi_gtest_main.h"

namespace shardlm {
namespace {

struct Layout {
  int tp, pp;
  int ep = 1;
};

// Every tp x pp = world (at 4 ranks only 2 x 2); for a mixture of `experts` also each of them
// with expert parallelism at every ep > 1 that divides tp and the experts, and at 4 ranks tp 4 with
// ep 2 (each expert split over 2 ranks of its group).
std::vector<Layout> LayoutsForWorld(int world, int64_t experts = 0) {
  std::vector<Layout> out;
  for (int tp = world; tp >= 1; --tp) {
    if (world % tp != 0 || (world == 4 && tp != 2)) continue;
    out.push_back({tp, world / tp});
    for (int ep = 2; ep <= tp && experts > 0; ++ep) {
      if (tp % ep == 0 && experts % ep == 0) out.push_back({tp, world / tp, ep});
    }
  }
  if (world == 4 && experts % 2 == 0 && experts > 0) out.push_back({4, 1, 2});
  return out;
}

std::shared_ptr<Communicator> WorldPtr() {
  // The test main owns the world communicator.
  return std::shared_ptr<Communicator>(&mpitest::World(), [](Communicator*) {});
}

struct RunResult {
  std::vector<int32_t> ids;
  std::vector<float> step_logits;     // rank 0: the logits row of each generated token
  std::vector<float> prefill_logits;  // rank 0: every prompt position, teacher forced
  uint64_t weight_bytes = 0;
};

RunResult RunModel(const ModelConfig& config, const WeightSource& weights,
                   std::optional<ParallelContext> ctx, std::span<const int32_t> prompt, int steps,
                   bool logits) {
  auto backend = CreateCpuBackend(1);
  auto model = LlamaModel::Load(config, weights, *backend, std::move(ctx));
  EXPECT_TRUE(model.ok()) << model.status();
  if (!model.ok()) return {};
  RunResult run;
  run.weight_bytes = (*model)->weight_bytes();
  GenerateOptions options;
  options.max_new_tokens = steps;
  options.keep_logits = logits;
  options.stop_at_eos = false;
  auto result = Generate(**model, prompt, options);
  EXPECT_TRUE(result.ok()) << result.status();
  if (!result.ok()) return run;
  run.ids = result->tokens;
  run.step_logits = result->logits;
  if (logits) {
    auto full = PromptLogits(**model, prompt);
    EXPECT_TRUE(full.ok()) << full.status();
    if (full.ok()) run.prefill_logits = *full;
    // The rows arrive on world rank 0 alone.
    const size_t want = mpitest::World().rank() == 0 ? prompt.size() * config.vocab_size : 0;
    EXPECT_EQ(run.prefill_logits.size(), want);
  }
  return run;
}

double MaxAbs(const std::vector<float>& v) {
  double m = 0;
  for (float x : v) m = std::max(m, std::fabs(static_cast<double>(x)));
  return m;
}
double MaxDiff(const std::vector<float>& a, const std::vector<float>& b) {
  double m = 0;
  for (size_t i = 0; i < a.size(); ++i) m = std::max(m, std::fabs(double(a[i]) - b[i]));
  return m;
}

struct Case {
  const char* name;
  TinyModelSpec spec;
};

std::vector<Case> TinyCases() {
  auto spec = [](Arch arch, int64_t heads, int64_t kv, int64_t hidden, int64_t inter,
                 uint64_t seed) {
    TinyModelSpec s;
    s.arch = arch;
    s.layers = 4;  // so that pp=2 stages hold two layers each
    s.heads = heads;
    s.kv_heads = kv;
    s.hidden = hidden;
    s.intermediate = inter;
    s.vocab = 257;  // uneven vocabulary shards
    s.seed = seed;
    return s;
  };
  std::vector<Case> cases = {
      {"llama-8h-8kv", spec(Arch::kLlama, 8, 8, 64, 100, 11)},
      {"llama-8h-2kv", spec(Arch::kLlama, 8, 2, 64, 128, 12)},
      {"llama-9h-3kv", spec(Arch::kLlama, 9, 3, 72, 160, 13)},
      {"llama-4h-1kv", spec(Arch::kLlama, 4, 1, 64, 96, 14)},
      {"qwen2-bias", spec(Arch::kQwen2, 8, 2, 64, 96, 15)},
      {"mistral-swa", spec(Arch::kMistral, 8, 2, 64, 96, 16)},
      // Issue 15's families: q/k norms and head_dim != hidden / heads (Qwen3), Gemma 3's
      // alternating sliding/global layers with post norms and GeGLU, Phi-3's fused qkv_proj /
      // gate_up_proj split unevenly (9 heads, 3 KV heads) and longrope, GLM's half-rotary heads.
      {"qwen3-hd24", spec(Arch::kQwen3, 4, 2, 64, 96, 18)},
      {"gemma3", spec(Arch::kGemma3, 4, 1, 64, 128, 19)},
      {"phi3-9h-3kv", spec(Arch::kPhi3, 9, 3, 72, 96, 20)},
      {"glm", spec(Arch::kGlm, 4, 2, 64, 96, 22)},
      {"glm4", spec(Arch::kGlm4, 4, 2, 64, 96, 23)},
      // Issue 16: mixtures of experts (each expert's gate/up split by columns, down by rows,
      // one all-reduce per layer; Qwen3-MoE's last layer dense).
      {"mixtral", spec(Arch::kMixtral, 4, 2, 64, 96, 25)},
      {"qwen3-moe", spec(Arch::kQwen3Moe, 4, 2, 64, 96, 26)},
  };
  cases[cases.size() - 7].spec.head_dim = 24;
  Case tied = {"llama-tied", spec(Arch::kLlama, 8, 2, 64, 96, 17)};
  tied.spec.tie_embeddings = true;
  cases.push_back(tied);
  return cases;
}

// Rank 0 writes each model once per world size (several mpirun tests may run at once).
std::string ModelDir(const std::string& name) {
  const int world = mpitest::World().size();
  const std::string dir =
      absl::StrCat(SHARDLM_BINARY_DIR, "/tests/sharding/models-np", world, "/", name);
  if (mpitest::World().rank() == 0) {
    absl::Status s = WriteTinyModel(
        [&] {
          for (const Case& c : TinyCases()) {
            if (name == c.name) return c.spec;
          }
          return TinyModelSpec{};
        }(),
        dir);
    EXPECT_TRUE(s.ok()) << s;
  }
  EXPECT_TRUE(mpitest::World().Barrier().ok());
  return dir;
}

TEST(TpEquivalenceTest, TinyModelsMatchOneRank) {
  Communicator& world = mpitest::World();
  const std::vector<int32_t> prompt = {1, 17, 42, 99, 3, 200, 31, 256, 7, 128, 64};
  for (const Case& c : TinyCases()) {
    const std::string dir = ModelDir(c.name);
    auto checkpoint = OpenCheckpoint(dir);
    ASSERT_TRUE(checkpoint.ok()) << checkpoint.status();
    const ModelConfig& config = checkpoint->config;
    RunResult single;
    uint64_t single_bytes = 0;
    {
      ShardLoader counter(config, *checkpoint->weights, nullptr);
      ASSERT_TRUE(LoadLlamaShard(config, SingleRankPlan(config).ranks[0], SingleRankPlan(config),
                                 counter).ok());
      single_bytes = counter.bytes();
    }
    if (world.rank() == 0) single = RunModel(config, *checkpoint->weights, {}, prompt, 8, true);
    for (const Layout& layout : LayoutsForWorld(world.size(), config.num_experts)) {
      SCOPED_TRACE(absl::StrCat(c.name, " tp=", layout.tp, " pp=", layout.pp, " ep=", layout.ep));
      auto plan = MakeShardPlan(
          PlanInputFor(config, layout.tp, layout.pp, {}, &*checkpoint->weights, layout.ep));
      ASSERT_TRUE(plan.ok()) << plan.status();
      auto ctx = ParallelContext::Create(*plan, WorldPtr());
      ASSERT_TRUE(ctx.ok()) << ctx.status();
      const RankShard shard = ctx->shard;
      RunResult split = RunModel(config, *checkpoint->weights, std::move(*ctx), prompt, 8, true);

      // Every rank gets the ids; the plan's byte count is what the rank really holds.
      ShardLoader counter(config, *checkpoint->weights, nullptr);
      ASSERT_TRUE(LoadLlamaShard(config, shard, *plan, counter).ok());
      EXPECT_EQ(counter.bytes(), split.weight_bytes);
      if (layout.tp == 2 && layout.pp == 1) {
        EXPECT_LE(split.weight_bytes, 0.6 * single_bytes)
            << "rank " << world.rank() << " holds " << split.weight_bytes << " of " << single_bytes;
      }
      if (world.rank() != 0) continue;
      EXPECT_EQ(split.ids, single.ids);
      ASSERT_EQ(split.step_logits.size(), single.step_logits.size());
      ASSERT_EQ(split.prefill_logits.size(), single.prefill_logits.size());
      const double scale = std::max(MaxAbs(single.step_logits), MaxAbs(single.prefill_logits));
      const double diff = std::max(MaxDiff(split.step_logits, single.step_logits),
                                   MaxDiff(split.prefill_logits, single.prefill_logits));
      EXPECT_LE(diff, 1e-4 * scale);
      std::printf("%-14s tp=%d pp=%d ep=%d: ids match: %s, max |logit diff| %.3g (%.3g x "
                  "max|logit|), rank 0 holds %.1f%% of the weight bytes\n",
                  c.name, layout.tp, layout.pp, layout.ep, split.ids == single.ids ? "yes" : "NO", diff,
                  diff / scale, 100.0 * split.weight_bytes / single_bytes);
    }
  }
}

// A Q8_0 / Q5_0 / Q5_1 GGUF whose head_dim (48) is not a multiple of the 32-element block: at tp=3
// the O projection's column slices cut through blocks, and those ranks dequantize just their
// slice; the other matrices are row slices of whole blocks, kept quantized.
TEST(TpEquivalenceTest, QuantizedSlicesThatCutBlocks) {
  Communicator& world = mpitest::World();
  TinyModelSpec spec;
  spec.layers = 4;
  spec.heads = 4;
  spec.kv_heads = 4;
  spec.hidden = 192;
  spec.intermediate = 96;
  spec.vocab = 257;
  spec.seed = 21;
  for (DType dt : {DType::kQ8_0, DType::kQ5_0, DType::kQ5_1}) {
    SCOPED_TRACE(DTypeName(dt));
    const std::string path = absl::StrCat(SHARDLM_BINARY_DIR, "/tests/sharding/models-np",
                                          world.size(), "/", DTypeName(dt), "-hd48.gguf");
    if (world.rank() == 0) {
      auto config = TinyModelConfig(spec);
      ASSERT_TRUE(config.ok()) << config.status();
      RandomWeightSource random(*config, spec.seed, DType::kF32);
      std::filesystem::create_directories(std::filesystem::path(path).parent_path());
      absl::Status s = ExportGguf(*config, random, path, dt);
      ASSERT_TRUE(s.ok()) << s;
    }
    ASSERT_TRUE(world.Barrier().ok());
    auto checkpoint = OpenCheckpoint(path);
    ASSERT_TRUE(checkpoint.ok()) << checkpoint.status();
    const ModelConfig& config = checkpoint->config;
    auto o_proj = checkpoint->weights->Info("model.layers.0.self_attn.o_proj.weight");
    ASSERT_TRUE(o_proj.ok()) << o_proj.status();
    ASSERT_EQ(o_proj->dtype, dt);
    const std::vector<int32_t> prompt = {3, 1, 4, 1, 5, 9, 2, 6};
    RunResult single;
    if (world.rank() == 0) single = RunModel(config, *checkpoint->weights, {}, prompt, 8, true);
    for (const Layout& layout : LayoutsForWorld(world.size(), config.num_experts)) {
      SCOPED_TRACE(absl::StrCat("tp=", layout.tp, " pp=", layout.pp, " ep=", layout.ep));
      auto plan = MakeShardPlan(
          PlanInputFor(config, layout.tp, layout.pp, {}, &*checkpoint->weights, layout.ep));
      ASSERT_TRUE(plan.ok()) << plan.status();
      auto ctx = ParallelContext::Create(*plan, WorldPtr());
      ASSERT_TRUE(ctx.ok()) << ctx.status();
      const RankShard shard = ctx->shard;
      ShardLoader counter(config, *checkpoint->weights, nullptr);
      ASSERT_TRUE(LoadLlamaShard(config, shard, *plan, counter).ok());
      const bool cuts = (shard.q_heads.begin * 48) % 32 != 0 || (shard.q_heads.end * 48) % 32 != 0;
      EXPECT_EQ(counter.dequantized().size(), cuts ? shard.layers.size() : 0u);
      RunResult split = RunModel(config, *checkpoint->weights, std::move(*ctx), prompt, 8, true);
      if (world.rank() != 0) continue;
      EXPECT_EQ(split.ids, single.ids);
      const double scale = std::max(MaxAbs(single.step_logits), MaxAbs(single.prefill_logits));
      const double diff = std::max(MaxDiff(split.step_logits, single.step_logits),
                                   MaxDiff(split.prefill_logits, single.prefill_logits));
      EXPECT_LE(diff, 1e-4 * scale);
      std::printf("%s hd48 tp=%d pp=%d: ids match: %s, max |logit diff| %.3g x max|logit|\n",
                  DTypeName(dt), layout.tp, layout.pp, split.ids == single.ids ? "yes" : "NO",
                  diff / scale);
    }
  }
}

// `spec` written as GGUF (matrices in `type`) by rank 0 and read back by every rank, run at every
// layout of this world (the expert-parallel ones too for a mixture): the greedy ids of one rank and
// logits within 1e-4 x max|logit|. `check` looks at the config read back.
void ExpectGgufLayoutsMatchOneRank(const TinyModelSpec& spec, DType type, const std::string& name,
                                   const std::vector<int32_t>& prompt,
                                   const std::function<void(const ModelConfig&)>& check) {
  Communicator& world = mpitest::World();
  const std::string path = absl::StrCat(SHARDLM_BINARY_DIR, "/tests/sharding/models-np",
                                        world.size(), "/", name, ".gguf");
  if (world.rank() == 0) {
    auto config = TinyModelConfig(spec);
    ASSERT_TRUE(config.ok()) << config.status();
    RandomWeightSource random(*config, spec.seed, DType::kF32);
    std::filesystem::create_directories(std::filesystem::path(path).parent_path());
    absl::Status s = ExportGguf(*config, random, path, type);
    ASSERT_TRUE(s.ok()) << s;
  }
  ASSERT_TRUE(world.Barrier().ok());
  auto checkpoint = OpenCheckpoint(path);
  ASSERT_TRUE(checkpoint.ok()) << checkpoint.status();
  const ModelConfig& config = checkpoint->config;
  check(config);
  RunResult single;
  if (world.rank() == 0) single = RunModel(config, *checkpoint->weights, {}, prompt, 8, true);
  for (const Layout& layout : LayoutsForWorld(world.size(), config.num_experts)) {
    SCOPED_TRACE(absl::StrCat(name, " tp=", layout.tp, " pp=", layout.pp, " ep=", layout.ep));
    auto plan = MakeShardPlan(
        PlanInputFor(config, layout.tp, layout.pp, {}, &*checkpoint->weights, layout.ep));
    ASSERT_TRUE(plan.ok()) << plan.status();
    auto ctx = ParallelContext::Create(*plan, WorldPtr());
    ASSERT_TRUE(ctx.ok()) << ctx.status();
    RunResult split = RunModel(config, *checkpoint->weights, std::move(*ctx), prompt, 8, true);
    if (world.rank() != 0) continue;
    EXPECT_EQ(split.ids, single.ids);
    const double scale = std::max(MaxAbs(single.step_logits), MaxAbs(single.prefill_logits));
    const double diff = std::max(MaxDiff(split.step_logits, single.step_logits),
                                 MaxDiff(split.prefill_logits, single.prefill_logits));
    EXPECT_LE(diff, 1e-4 * scale);
    std::printf("%s gguf tp=%d pp=%d ep=%d: ids match: %s, max |logit diff| %.3g x max|logit|\n",
                name.c_str(), layout.tp, layout.pp, layout.ep,
                split.ids == single.ids ? "yes" : "NO", diff / scale);
  }
}

// GLM as llama.cpp's `chatglm` GGUF: Q, K, V and their biases in one attn_qkv, cut into each
// rank's uneven head ranges at load (9 heads, 3 KV heads).
TEST(TpEquivalenceTest, FusedQkvWithBiasFromGguf) {
  TinyModelSpec spec;
  spec.arch = Arch::kGlm;
  spec.layers = 4;
  spec.heads = 9;
  spec.kv_heads = 3;
  spec.hidden = 72;
  spec.intermediate = 96;
  spec.vocab = 257;
  spec.seed = 24;
  ExpectGgufLayoutsMatchOneRank(spec, DType::kF32, "chatglm-9h-3kv", {3, 1, 4, 1, 5, 9, 2, 6},
                                [](const ModelConfig& config) {
                                  ASSERT_TRUE(config.fused_qkv_proj && config.qkv_bias);
                                });
}

// Mixtral and Qwen3-MoE as llama.cpp's GGUF (3-D Q8_0 expert tensors, f32 routers): each rank
// reads its rows / columns of every expert from the expert's slice of the 3-D tensor (at tp=3 the
// down projections' column slices cut Q8_0 blocks and are dequantized for just that slice), or
// whole experts with expert parallelism.
TEST(TpEquivalenceTest, MixturesFromGguf) {
  for (Arch arch : {Arch::kMixtral, Arch::kQwen3Moe}) {
    TinyModelSpec spec;
    spec.arch = arch;
    spec.layers = 4;
    spec.heads = 4;
    spec.kv_heads = 2;
    spec.hidden = 64;
    spec.intermediate = arch == Arch::kMixtral ? 64 : 128;  // experts of 64: all of them Q8_0
    spec.vocab = 257;
    spec.seed = 27;
    ExpectGgufLayoutsMatchOneRank(spec, DType::kQ8_0,
                                  absl::StrCat(std::string(ArchName(arch)), "-q8_0"),
                                  {3, 1, 4, 1, 5, 9, 2, 6, 5, 3}, [&](const ModelConfig& config) {
                                    ASSERT_EQ(config.arch, arch);
                                    ASSERT_GT(config.num_experts, 0);
                                  });
  }
}

// SmolLM2-135M (Q4_1 GGUF, fetched by scripts/get-model.sh) at tp=2 and at pp=2: the same 64
// greedy ids as one rank.
TEST(TpEquivalenceTest, SmolLM2MatchesOneRank) {
  Communicator& world = mpitest::World();
  if (world.size() != 2) GTEST_SKIP() << "run at np 2 only";
  const std::string path =
      std::string(SHARDLM_SOURCE_DIR) + "/models/SmolLM2-135M-Instruct.Q4_1.gguf";
  if (!std::filesystem::exists(path)) {
    GTEST_SKIP() << path << " is absent: run scripts/get-model.sh";
  }
  auto checkpoint = OpenCheckpoint(path);
  ASSERT_TRUE(checkpoint.ok()) << checkpoint.status();
  const ModelConfig& config = checkpoint->config;
  auto tokenizer = LoadTokenizer(*checkpoint);
  ASSERT_TRUE(tokenizer.ok()) << tokenizer.status();
  const std::vector<int32_t> prompt =
      (*tokenizer)->Encode("The three largest cities of France are", true, true);
  RunResult single;
  if (world.rank() == 0) single = RunModel(config, *checkpoint->weights, {}, prompt, 64, false);
  for (const Layout& layout : LayoutsForWorld(2)) {
    SCOPED_TRACE(absl::StrCat("tp=", layout.tp, " pp=", layout.pp));
    auto plan = MakeShardPlan(PlanInputFor(config, layout.tp, layout.pp, {}, &*checkpoint->weights));
    ASSERT_TRUE(plan.ok()) << plan.status();
    auto ctx = ParallelContext::Create(*plan, WorldPtr());
    ASSERT_TRUE(ctx.ok()) << ctx.status();
    RunResult split = RunModel(config, *checkpoint->weights, std::move(*ctx), prompt, 64, false);
    if (world.rank() != 0) continue;
    EXPECT_EQ(split.ids, single.ids);
    std::printf("SmolLM2 tp=%d pp=%d: %zu greedy ids, match one rank: %s\n", layout.tp,
                layout.pp, split.ids.size(), split.ids == single.ids ? "yes" : "NO");
  }
}

}  // namespace
}  // namespace shardlm
