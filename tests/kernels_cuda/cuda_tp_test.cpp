// Tensor parallelism on one GPU, under mpirun -np 2 (tests/kernels_cuda/CMakeLists.txt): both
// ranks run the CUDA backend on device 0, set up by SetUpBackend with --nccl off, so that the
// activations are all-reduced through host memory over MPI (NCCL refuses two ranks on one
// device). The tp=2 model, run through the step engine as the worker runs it (runtime/generator.h;
// the logits rows gathered over the TP ranks and returned on rank 0), must match one CPU rank
// running the same tiny checkpoint: logits of a 40-token prompt (every row, one prefill step) and
// of 8 decode steps fed the CPU's greedy tokens within 2e-2 x max |CPU logit|, the same greedy
// ids wherever the CPU's top-2 margin is > 0.05 (and > twice that row's diff), and free-running
// Generate giving the CPU's ids (a first difference only where the CPU's margin is
// <= max(0.05, 4 x that row's diff): a near-tie). Without a device on every rank, every rank skips (mpirun exits 0; ctest: Skipped).
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "kernels/cpu/cpu_backend.h"
#include "kernels/cuda/cuda_backend.h"
#include "formats/checkpoint_loader.h"
#include "runtime/decode_graphs.h"
#include "runtime/generator.h"
#include "model/llama.h"
#include "formats/random_weights.h"
#include "runtime/backend_setup.h"
#include "tests/kernels_cuda/logit_compare.h"
#include "tests/parallel/mpi_gtest_main.h"

namespace shardlm {
namespace {

constexpr double kTol = 2e-2;
constexpr double kMinMargin = 0.05;
constexpr int64_t kPrompt = 40, kSteps = 8;

std::shared_ptr<Communicator> WorldPtr() {
  // The test main owns the world communicator.
  return std::shared_ptr<Communicator>(&mpitest::World(), [](Communicator*) {});
}

struct TpCase {
  std::string name;
  TinyModelSpec spec;
};

std::vector<TpCase> Cases() {
  return {{"llama-bf16", cudatest::GpuTestSpec(Arch::kLlama, DType::kBF16, 51)},
          {"qwen2-bias-bf16", cudatest::GpuTestSpec(Arch::kQwen2, DType::kBF16, 52)}};
}

// Rank 0 writes the checkpoint; every rank gets its directory after a barrier.
std::string ModelDir(const TpCase& c) {
  const std::string dir =
      absl::StrCat(SHARDLM_BINARY_DIR, "/tests/kernels_cuda/tp-models/", c.name);
  if (mpitest::World().rank() == 0) {
    const absl::Status s = WriteTinyModel(c.spec, dir);
    EXPECT_TRUE(s.ok()) << s;
  }
  EXPECT_TRUE(mpitest::World().Barrier().ok());
  return dir;
}

// The argmax of every row of `rows` [n, vocab].
std::vector<int32_t> RowArgmax(const std::vector<float>& rows, int64_t vocab) {
  std::vector<int32_t> ids;
  for (size_t r = 0; (r + 1) * vocab <= rows.size(); ++r) {
    const float* row = rows.data() + r * vocab;
    ids.push_back(static_cast<int32_t>(std::max_element(row, row + vocab) - row));
  }
  return ids;
}

std::vector<int32_t> Prompt(int64_t vocab) {
  std::vector<int32_t> p(kPrompt);
  for (int64_t i = 0; i < kPrompt; ++i) p[i] = static_cast<int32_t>((i * 37 + 16) % vocab);
  return p;
}

// The single-rank CPU reference: every prompt row's logits, then kSteps decode steps fed its own
// greedy ids; `ids` holds the greedy id of every row (kPrompt + kSteps).
struct Reference {
  std::vector<float> logits;
  std::vector<int32_t> ids;
};

Reference CpuReference(const ModelConfig& config, const WeightSource& weights,
                       const std::vector<int32_t>& prompt) {
  Reference ref;
  auto backend = CreateCpuBackend(1);
  auto model = LlamaModel::Load(config, weights, *backend);
  EXPECT_TRUE(model.ok()) << model.status();
  if (!model.ok()) return ref;
  SequenceRunner run(**model, kPrompt + kSteps);
  auto first = run.Step(prompt, /*sample=*/true, worker::v1::LOGITS_ALL);
  EXPECT_TRUE(first.ok()) << first.status();
  if (!first.ok()) return ref;
  ref.logits = first->logits;
  int32_t next = first->token;
  for (int64_t s = 0; s < kSteps; ++s) {
    auto step = run.Step(std::span<const int32_t>(&next, 1), /*sample=*/true,
                         worker::v1::LOGITS_SAMPLED);
    EXPECT_TRUE(step.ok()) << step.status();
    if (!step.ok()) return ref;
    ref.logits.insert(ref.logits.end(), step->logits.begin(), step->logits.end());
    next = step->token;
  }
  ref.ids = RowArgmax(ref.logits, config.vocab_size);
  return ref;
}

TEST(CudaTpSingleGpuTest, Tp2OnOneDeviceMatchesCpu) {
  Communicator& world = mpitest::World();
  // Every rank takes the same decision, so that all of them skip or none does.
  float with_device = CudaDeviceCount() > 0 ? 1.0f : 0.0f;
  ASSERT_TRUE(world.AllReduceSum(&with_device, 1).ok());
  if (with_device < static_cast<float>(world.size())) {
    GTEST_SKIP() << "no CUDA device: cudaGetDeviceCount gives 0 or an error on "
                 << world.size() - static_cast<int>(with_device) << " of " << world.size()
                 << " ranks";
  }
  if (world.size() != 2) GTEST_SKIP() << "run at np 2 (tp=2), not " << world.size();

  for (const TpCase& c : Cases()) {
    SCOPED_TRACE(c.name);
    const std::string dir = ModelDir(c);
    auto checkpoint = OpenCheckpoint(dir);
    ASSERT_TRUE(checkpoint.ok()) << checkpoint.status();
    const ModelConfig& config = checkpoint->config;
    const int64_t vocab = config.vocab_size;
    const std::vector<int32_t> prompt = Prompt(vocab);

    Reference ref;
    if (world.rank() == 0) ref = CpuReference(config, *checkpoint->weights, prompt);
    // The decode steps' tokens (the CPU's greedy ids), on every rank.
    std::vector<int32_t> fed(kSteps, 0);
    int32_t ok = world.rank() != 0 || ref.ids.size() == static_cast<size_t>(kPrompt + kSteps);
    if (world.rank() == 0 && ok) std::copy(ref.ids.begin() + kPrompt - 1, ref.ids.end() - 1, fed.begin());
    ASSERT_TRUE(world.Broadcast(&ok, sizeof(ok), 0).ok());
    ASSERT_TRUE(ok) << "the CPU reference failed on rank 0";
    ASSERT_TRUE(world.Broadcast(fed.data(), fed.size() * sizeof(int32_t), 0).ok());

    auto plan = MakeShardPlan(PlanInputFor(config, 2, 1, {}, &*checkpoint->weights));
    ASSERT_TRUE(plan.ok()) << plan.status();
    auto ctx = ParallelContext::Create(*plan, WorldPtr());
    ASSERT_TRUE(ctx.ok()) << ctx.status();
    BackendOptions options;
    options.kind = "cuda";
    options.device = 0;  // both ranks on one GPU
    options.nccl = "off";
    auto setup = SetUpBackend(options, *ctx);
    ASSERT_TRUE(setup.ok()) << setup.status();
    EXPECT_TRUE(setup->cuda);
    EXPECT_EQ(setup->device, 0);
    EXPECT_TRUE(ctx->tp_device == nullptr) << "--nccl off must keep the host path";
    EXPECT_NE(setup->description.find("activations through MPI"), std::string::npos)
        << setup->description;
    Backend& backend = *setup->backend;
    auto loaded = LlamaModel::Load(config, *checkpoint->weights, backend, std::move(*ctx));
    ASSERT_TRUE(loaded.ok()) << loaded.status();
    LlamaModel& model = **loaded;
    EXPECT_FALSE(model.parallel().device_resident());

    // Teacher-forced: the prompt, then the CPU's tokens (collective; the rows arrive on rank 0).
    std::vector<float> got;
    {
      SequenceRunner run(model, kPrompt + kSteps);
      auto first = run.Step(prompt, /*sample=*/true, worker::v1::LOGITS_ALL);
      ASSERT_TRUE(first.ok()) << first.status();
      got = first->logits;
      for (int64_t s = 0; s < kSteps; ++s) {
        auto step = run.Step(std::span<const int32_t>(&fed[s], 1), /*sample=*/true,
                             worker::v1::LOGITS_SAMPLED);
        ASSERT_TRUE(step.ok()) << step.status();
        got.insert(got.end(), step->logits.begin(), step->logits.end());
      }
    }
    const std::vector<int32_t> ids = RowArgmax(got, vocab);
    // Free-running greedy generation, collective.
    GenerateOptions gen_options;
    gen_options.max_new_tokens = kSteps + 1;
    gen_options.stop_at_eos = false;
    auto gen = Generate(model, prompt, gen_options);
    ASSERT_TRUE(gen.ok()) << gen.status();

    // Decode graphs need a device-resident step: not with activations through the host.
    PagedKvCache paged = model.NewPagedCache(8, 8);
    DecodeGraphs graphs(model, paged, {1, 2, 4}, 4, 7);
    EXPECT_FALSE(graphs.enabled());

    if (world.rank() != 0) continue;
    const cudatest::LogitReport rep =
        cudatest::CompareLogits(got, ref.logits, ids, vocab, kTol, kMinMargin, c.name + " tp=2");
    EXPECT_GE(rep.ids_compared, kPrompt / 2) << "too few confident rows to compare greedy ids";
    const std::vector<int32_t> cpu_gen(ref.ids.begin() + (kPrompt - 1), ref.ids.end());
    ASSERT_EQ(gen->tokens.size(), cpu_gen.size());
    const size_t same = cudatest::CompareGenerated(gen->tokens, cpu_gen, rep.confident,
                                                   kPrompt - 1, c.name + " tp=2 Generate");
    std::printf("%-16s tp=2 on one GPU (%s): max |logit diff| %.3g x max|logit| (%.3g); greedy "
                "ids equal on %d of %d confident rows; generation: %zu of %zu ids equal\n",
                c.name.c_str(), setup->description.c_str(), rep.max_diff / rep.scale, rep.scale,
                rep.ids_equal, rep.ids_compared, same, cpu_gen.size());
  }
}

}  // namespace
}  // namespace shardlm
