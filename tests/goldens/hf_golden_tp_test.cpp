// Run under mpirun (tests/goldens/CMakeLists.txt): the HF transformers goldens of the tiny models
// (tests/goldens/hf, as hf_golden_test checks them on one rank) with the model split over the
// job's ranks by tensor parallelism, tp = the world size (2 and 3: uneven head and vocabulary
// splits), and for the mixtures of experts also by expert parallelism at every ep > 1 that divides
// the world size and the experts (tp = world, ep = 2: whole experts per rank, tokens exchanged by
// all-to-all). The same greedy ids as HF on every rank and, on rank 0, logits within
// 1e-4 x max|logit| of HF's.
#include <filesystem>
#include <string>

#include "absl/strings/str_cat.h"
#include "formats/checkpoint_loader.h"
#include "gtest/gtest.h"
#include "kernels/cpu/cpu_backend.h"
#include "tests/goldens/hf_goldens.h"
#include "tests/parallel/mpi_gtest_main.h"

namespace shardlm {
namespace {

std::shared_ptr<Communicator> WorldPtr() {
  // The test main owns the world communicator.
  return std::shared_ptr<Communicator>(&mpitest::World(), [](Communicator*) {});
}

TEST(HfGoldenTpTest, EveryGoldenModelAtTpWorldSize) {
  Communicator& world = mpitest::World();
  const nlohmann::json manifest = ReadManifest();
  for (const auto& entry : manifest["models"]) {
    const std::string name = entry["name"];
    const std::string label = absl::StrCat(name, " tp=", world.size());
    SCOPED_TRACE(label);
    const std::string dir = absl::StrCat(SHARDLM_BINARY_DIR, "/tests/goldens/tp-np", world.size(),
                                         "/", name);
    if (world.rank() == 0) {
      ASSERT_TRUE(WriteTinyModel(SpecFromArgs(entry["make_tiny_model_args"]), dir).ok());
    }
    ASSERT_TRUE(world.Barrier().ok());
    auto checkpoint = OpenCheckpoint(dir);
    ASSERT_TRUE(checkpoint.ok()) << checkpoint.status();
    const int64_t experts = checkpoint->config.num_experts;
    for (int ep = 1; ep <= world.size(); ++ep) {
      if (world.size() % ep != 0 || (ep > 1 && (experts == 0 || experts % ep != 0))) continue;
      const std::string layout = absl::StrCat(label, " ep=", ep);
      SCOPED_TRACE(layout);
      auto plan = MakeShardPlan(PlanInputFor(checkpoint->config, world.size(), 1, {},
                                             &*checkpoint->weights, ep));
      ASSERT_TRUE(plan.ok()) << plan.status();
      auto ctx = ParallelContext::Create(*plan, WorldPtr());
      ASSERT_TRUE(ctx.ok()) << ctx.status();
      auto backend = CreateCpuBackend(1);
      auto model = LlamaModel::Load(checkpoint->config, *checkpoint->weights, *backend,
                                    std::move(*ctx));
      ASSERT_TRUE(model.ok()) << model.status();
      ExpectMatchesGoldens(**model, manifest, entry, layout, /*compare_logits=*/world.rank() == 0);
    }
  }
}

}  // namespace
}  // namespace shardlm
