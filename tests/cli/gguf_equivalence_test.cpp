// The same tiny model as safetensors (HF layout) and as GGUF (written like llama.cpp's converter:
// Q/K rows permuted for `llama`, not for the others; Gemma's norms as 1 + w; Phi-3's fused
// tensors and rope factor tensors) must give the same logits. A control shows the
// llama permutation matters: reading the GGUF with HF (rotate-half) RoPE gives other logits.
#include <algorithm>
#include <cmath>
#include <filesystem>
#include <string>
#include <vector>

#include "formats/gguf_export.h"
#include "gtest/gtest.h"
#include "kernels/cpu/cpu_backend.h"
#include "formats/checkpoint_loader.h"
#include "model/llama.h"
#include "formats/random_weights.h"
#include "runtime/generator.h"

namespace shardlm {
namespace {

std::vector<float> Logits(const ModelConfig& config, const WeightSource& weights,
                          const std::vector<int32_t>& ids) {
  auto backend = CreateCpuBackend(2);
  auto model = LlamaModel::Load(config, weights, *backend);
  EXPECT_TRUE(model.ok()) << model.status();
  if (!model.ok()) return {};
  auto logits = PromptLogits(**model, ids);
  EXPECT_TRUE(logits.ok()) << logits.status();
  if (!logits.ok()) return {};
  EXPECT_EQ(logits->size(), ids.size() * config.vocab_size);
  return *std::move(logits);
}

double MaxAbs(const std::vector<float>& v) {
  double m = 0;
  for (float x : v) m = std::max(m, static_cast<double>(std::abs(x)));
  return m;
}

double MaxDiff(const std::vector<float>& a, const std::vector<float>& b) {
  EXPECT_EQ(a.size(), b.size());
  double m = 0;
  for (size_t i = 0; i < a.size() && i < b.size(); ++i) m = std::max(m, std::abs(double(a[i]) - b[i]));
  return m;
}

struct Case {
  const char* name;
  Arch arch;
  int64_t hidden, heads, kv_heads;
};

class GgufEquivalenceTest : public ::testing::TestWithParam<Case> {};

TEST_P(GgufEquivalenceTest, SameLogitsAsSafetensors) {
  const Case& c = GetParam();
  TinyModelSpec spec;
  spec.arch = c.arch;
  spec.hidden = c.hidden;
  spec.heads = c.heads;
  spec.kv_heads = c.kv_heads;
  spec.intermediate = 96;
  spec.vocab = 128;
  spec.seed = 21;
  auto config = TinyModelConfig(spec);
  ASSERT_TRUE(config.ok());
  RandomWeightSource hf(*config, spec.seed, DType::kF32);
  const std::vector<int32_t> ids = {1, 5, 9, 77, 3, 100, 42, 8, 64, 2};
  const std::vector<float> want = Logits(*config, hf, ids);

  const std::string path = ::testing::TempDir() + "/equiv_" + c.name + ".gguf";
  ASSERT_TRUE(ExportGguf(*config, hf, path).ok());
  auto gguf = OpenCheckpoint(path);
  ASSERT_TRUE(gguf.ok()) << gguf.status();
  // llama: permuted Q/K rows, read with interleaved rope; GLM-4 is interleaved in HF already.
  EXPECT_EQ(gguf->config.rope.interleaved, c.arch == Arch::kLlama || c.arch == Arch::kGlm4);
  EXPECT_EQ(gguf->config.arch, c.arch);
  const std::vector<float> got = Logits(gguf->config, *gguf->weights, ids);
  EXPECT_LE(MaxDiff(want, got), 1e-4 * MaxAbs(want));

  if (c.arch == Arch::kLlama) {
    ModelConfig wrong = gguf->config;
    wrong.rope.interleaved = false;  // as if the converter's permutation were ignored
    EXPECT_GT(MaxDiff(want, Logits(wrong, *gguf->weights, ids)), 1e-2 * MaxAbs(want));
  }

  // Q8_0 matrices (where the row length allows) stay close to f32.
  ASSERT_TRUE(ExportGguf(*config, hf, path, DType::kQ8_0).ok());
  auto q8 = OpenCheckpoint(path);
  ASSERT_TRUE(q8.ok()) << q8.status();
  EXPECT_LE(MaxDiff(want, Logits(q8->config, *q8->weights, ids)), 5e-2 * MaxAbs(want));
  std::filesystem::remove(path);
}

INSTANTIATE_TEST_SUITE_P(Archs, GgufEquivalenceTest,
                         ::testing::Values(Case{"llama_8_2", Arch::kLlama, 64, 8, 2},
                                           Case{"llama_9_3", Arch::kLlama, 72, 9, 3},
                                           Case{"qwen2_4_1", Arch::kQwen2, 64, 4, 1},
                                           // Issue 15: names, fused tensors, (1 + w) norms stored
                                           // as llama.cpp stores them, longrope factor tensors.
                                           Case{"qwen3_4_2", Arch::kQwen3, 64, 4, 2},
                                           Case{"gemma3_4_1", Arch::kGemma3, 64, 4, 1},
                                           Case{"phi3_9_3", Arch::kPhi3, 72, 9, 3},
                                           Case{"glm4_4_2", Arch::kGlm4, 64, 4, 2}),
                         [](const auto& info) { return std::string(info.param.name); });

}  // namespace
}  // namespace shardlm
