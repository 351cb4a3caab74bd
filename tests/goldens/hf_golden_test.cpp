// shardlm against HF transformers (float64) on the tiny models of scripts/make-goldens.py.
// Each model is regenerated here from its make-tiny-model arguments; its bytes must hash as they
// did where the goldens were made (determinism across machines), then greedy decoding through the
// served path (runtime/generator.h: WorkerEngine steps over the paged KV cache, the logits rows
// returned by the engine) must give the same ids and logits within 1e-4 x max|logit|.
#include <filesystem>
#include <string>

#include "gtest/gtest.h"
#include "kernels/cpu/cpu_backend.h"
#include "formats/weight_source.h"
#include "tests/goldens/hf_goldens.h"

namespace shardlm {
namespace {

class HfGoldenTest : public ::testing::TestWithParam<std::string> {};

TEST_P(HfGoldenTest, MatchesTransformers) {
  const nlohmann::json manifest = ReadManifest();
  const nlohmann::json* entry = FindGolden(manifest, GetParam());
  ASSERT_NE(entry, nullptr) << GetParam() << " missing from manifest.json";

  const std::string dir = ::testing::TempDir() + "/hf_golden_" + GetParam();
  const TinyModelSpec spec = SpecFromArgs((*entry)["make_tiny_model_args"]);
  ASSERT_TRUE(WriteTinyModel(spec, dir).ok());
  EXPECT_EQ(Fnv1a64OfFile(dir + "/model.safetensors"),
            (*entry)["safetensors_fnv1a64"].get<std::string>())
      << "make-tiny-model no longer writes the bytes the goldens were made from";

  auto config = LoadModelConfig(dir + "/config.json");
  ASSERT_TRUE(config.ok()) << config.status();
  auto weights = OpenSafetensorsCheckpoint(dir);
  ASSERT_TRUE(weights.ok()) << weights.status();
  auto backend = CreateCpuBackend(2);
  auto model = LlamaModel::Load(*config, **weights, *backend);
  ASSERT_TRUE(model.ok()) << model.status();

  ExpectMatchesGoldens(**model, manifest, *entry, GetParam());
  std::filesystem::remove_all(dir);
}

INSTANTIATE_TEST_SUITE_P(TinyModels, HfGoldenTest,
                         ::testing::Values("llama-8h-2kv", "llama-9h-3kv", "llama-4h-1kv",
                                           "qwen2-bias", "mistral-swa", "llama-bf16",
                                           "llama-f16", "llama-tied", "qwen3-hd24", "gemma3",
                                           "phi3-longrope", "glm", "glm4", "mixtral",
                                           "qwen3-moe"),
                         [](const auto& info) {
                           std::string n = info.param;
                           for (char& c : n) if (c == '-') c = '_';
                           return n;
                         });

}  // namespace
}  // namespace shardlm
