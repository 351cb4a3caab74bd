// The same tiny model as safetensors (HF layout) and as GGUF (written like llama.cpp's converter:
// Q/K rows permuted for `llama`, not for the others; Gemma's norms as 1 + w; Phi-3's fused
// tensors and rope factor tensors) must give the same logits. A control shows the llama
// permutation matters: reading the GGUF with HF (rotate-half) RoPE gives other logits. A GGUF of
// each 32-element block type runs on the quantized kernels and must give the logits of its own
// weights dequantized to f32. Mixtures (Mixtral, Qwen3-MoE) too, with their 3-D expert tensors.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <string>
#include <string_view>
#include <vector>

#include "formats/gguf_export.h"
#include "gtest/gtest.h"
#include "kernels/cpu/cpu_backend.h"
#include "kernels/quant/codec.h"
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
  int64_t intermediate = 96;
};

class GgufEquivalenceTest : public ::testing::TestWithParam<Case> {};

TEST_P(GgufEquivalenceTest, SameLogitsAsSafetensors) {
  const Case& c = GetParam();
  TinyModelSpec spec;
  spec.arch = c.arch;
  spec.hidden = c.hidden;
  spec.heads = c.heads;
  spec.kv_heads = c.kv_heads;
  spec.intermediate = c.intermediate;
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
  EXPECT_EQ(gguf->config.rope.interleaved, c.arch == Arch::kLlama || c.arch == Arch::kMixtral ||
                                               c.arch == Arch::kGlm || c.arch == Arch::kGlm4);
  EXPECT_EQ(gguf->config.arch, c.arch);
  // A mixture's fields from the expert keys and from which blocks have a router.
  EXPECT_EQ(gguf->config.num_experts, config->num_experts);
  EXPECT_EQ(gguf->config.experts_per_token, config->experts_per_token);
  EXPECT_EQ(gguf->config.moe_intermediate_size, config->moe_intermediate_size);
  EXPECT_EQ(gguf->config.norm_topk_prob, config->norm_topk_prob);
  EXPECT_EQ(gguf->config.moe_layers, config->moe_layers);
  const std::vector<float> got = Logits(gguf->config, *gguf->weights, ids);
  EXPECT_LE(MaxDiff(want, got), 1e-4 * MaxAbs(want));

  if (c.arch == Arch::kLlama || c.arch == Arch::kMixtral) {
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

// `inner` with every quantized tensor served as f32: its blocks decoded by the reference decoder.
class DequantizedWeights final : public WeightSource {
 public:
  explicit DequantizedWeights(const WeightSource& inner) : inner_(inner) {}
  std::string Describe() const override { return "dequantized " + inner_.Describe(); }
  std::vector<std::string> Names() const override { return inner_.Names(); }
  absl::StatusOr<TensorInfo> Info(std::string_view name) const override {
    absl::StatusOr<TensorInfo> info = inner_.Info(name);
    if (info.ok() && IsQuantized(info->dtype)) {
      int64_t n = 1;
      for (int64_t d : info->shape) n *= d;
      info->dtype = DType::kF32;
      info->size = static_cast<uint64_t>(n) * sizeof(float);
    }
    return info;
  }
  absl::StatusOr<Tensor> Load(std::string_view name) const override {
    return Dequantize(inner_.Load(name));
  }
  absl::StatusOr<Tensor> LoadRows(std::string_view name, int64_t b, int64_t e) const override {
    return Dequantize(inner_.LoadRows(name, b, e));
  }
  absl::StatusOr<Tensor> LoadColumns(std::string_view name, int64_t b, int64_t e) const override {
    absl::StatusOr<Tensor> whole = Load(name);
    if (!whole.ok()) return whole;
    const int64_t rows = whole->dim(0), cols = whole->dim(1);
    Tensor out = Tensor::Empty({rows, e - b}, DType::kF32);
    for (int64_t r = 0; r < rows; ++r) {
      std::memcpy(out.data<float>() + r * (e - b), whole->data<float>() + r * cols + b,
                  static_cast<size_t>(e - b) * sizeof(float));
    }
    return out;
  }

 private:
  static absl::StatusOr<Tensor> Dequantize(absl::StatusOr<Tensor> t) {
    if (!t.ok() || !IsQuantized(t->dtype())) return t;
    Tensor out = Tensor::Empty(t->shape(), DType::kF32);
    quant::DequantizeRowReference(t->dtype(), t->raw(), out.data<float>(), t->numel());
    return out;
  }
  const WeightSource& inner_;
};

class GgufQuantizedTest : public ::testing::TestWithParam<DType> {};

// Every matrix of the tiny model (rows of 64 and 96 elements) stored in the block type: the
// logits of the quantized kernels are those of the same weights in f32, to f32 rounding.
TEST_P(GgufQuantizedTest, SameLogitsAsItsDequantizedWeights) {
  const DType dt = GetParam();
  TinyModelSpec spec;
  spec.arch = Arch::kLlama;
  spec.hidden = 64;
  spec.heads = 8;
  spec.kv_heads = 2;
  spec.intermediate = 96;
  spec.vocab = 128;
  spec.seed = 33;
  auto config = TinyModelConfig(spec);
  ASSERT_TRUE(config.ok());
  RandomWeightSource hf(*config, spec.seed, DType::kF32);
  const std::string path = ::testing::TempDir() + "/quantized_" + DTypeName(dt) + ".gguf";
  ASSERT_TRUE(ExportGguf(*config, hf, path, dt).ok());
  auto gguf = OpenCheckpoint(path);
  ASSERT_TRUE(gguf.ok()) << gguf.status();
  for (const char* name : {"model.layers.0.self_attn.q_proj.weight",
                           "model.layers.1.mlp.down_proj.weight", "model.embed_tokens.weight"}) {
    auto info = gguf->weights->Info(name);
    ASSERT_TRUE(info.ok()) << info.status();
    EXPECT_EQ(info->dtype, dt) << name << " is not stored as " << DTypeName(dt);
  }
  const DequantizedWeights f32(*gguf->weights);
  // Prompts of 1, 10 and 40 tokens: the matrix-vector, small-batch and dequantize + sgemm paths.
  for (int64_t len : {1, 10, 40}) {
    std::vector<int32_t> ids(static_cast<size_t>(len));
    for (int64_t i = 0; i < len; ++i) ids[i] = static_cast<int32_t>((i * 37 + 5) % spec.vocab);
    const std::vector<float> got = Logits(gguf->config, *gguf->weights, ids);
    const std::vector<float> want = Logits(gguf->config, f32, ids);
    EXPECT_LE(MaxDiff(want, got), 1e-4 * MaxAbs(want)) << DTypeName(dt) << " prompt " << len;
    // The original f32 weights give other logits: the file really holds the coarser values.
    const std::vector<float> original = Logits(*config, hf, ids);
    EXPECT_GT(MaxDiff(original, got), 1e-4 * MaxAbs(original)) << DTypeName(dt);
  }
  std::filesystem::remove(path);
}

// The same for mixtures: every expert (a slice of a quantized 3-D tensor, read as a view) runs on
// the quantized kernels and gives the logits of its own weights dequantized.
TEST(GgufQuantizedMoeTest, SameLogitsAsItsDequantizedWeights) {
  for (Arch arch : {Arch::kMixtral, Arch::kQwen3Moe}) {
    SCOPED_TRACE(std::string(ArchName(arch)));
    TinyModelSpec spec;
    spec.arch = arch;
    spec.hidden = 64;
    spec.heads = 4;
    spec.kv_heads = 2;
    spec.intermediate = arch == Arch::kMixtral ? 64 : 128;  // experts of 64
    spec.layers = 3;
    spec.vocab = 128;
    spec.seed = 35;
    auto config = TinyModelConfig(spec);
    ASSERT_TRUE(config.ok());
    RandomWeightSource hf(*config, spec.seed, DType::kF32);
    const std::string path = ::testing::TempDir() + "/quantized_moe.gguf";
    ASSERT_TRUE(ExportGguf(*config, hf, path, DType::kQ4_0).ok());
    auto gguf = OpenCheckpoint(path);
    ASSERT_TRUE(gguf.ok()) << gguf.status();
    auto info = gguf->weights->Info(MoeTensorName(arch, 1, 2, MoePart::kDown));
    ASSERT_TRUE(info.ok()) << info.status();
    EXPECT_EQ(info->dtype, DType::kQ4_0);
    const DequantizedWeights f32(*gguf->weights);
    for (int64_t len : {1, 10, 40}) {
      std::vector<int32_t> ids(static_cast<size_t>(len));
      for (int64_t i = 0; i < len; ++i) ids[i] = static_cast<int32_t>((i * 29 + 3) % spec.vocab);
      const std::vector<float> got = Logits(gguf->config, *gguf->weights, ids);
      const std::vector<float> want = Logits(gguf->config, f32, ids);
      EXPECT_LE(MaxDiff(want, got), 1e-4 * MaxAbs(want)) << "prompt " << len;
    }
    std::filesystem::remove(path);
  }
}

INSTANTIATE_TEST_SUITE_P(BlockTypes, GgufQuantizedTest,
                         ::testing::Values(DType::kQ8_0, DType::kQ4_0, DType::kQ4_1, DType::kQ5_0,
                                           DType::kQ5_1),
                         [](const auto& info) { return std::string(DTypeName(info.param)); });

INSTANTIATE_TEST_SUITE_P(Archs, GgufEquivalenceTest,
                         ::testing::Values(Case{"llama_8_2", Arch::kLlama, 64, 8, 2},
                                           Case{"llama_9_3", Arch::kLlama, 72, 9, 3},
                                           Case{"qwen2_4_1", Arch::kQwen2, 64, 4, 1},
                                           // Issue 15: names, fused tensors, (1 + w) norms stored
                                           // as llama.cpp stores them, longrope factor tensors.
                                           Case{"qwen3_4_2", Arch::kQwen3, 64, 4, 2},
                                           Case{"gemma3_4_1", Arch::kGemma3, 64, 4, 1},
                                           Case{"phi3_9_3", Arch::kPhi3, 72, 9, 3},
                                           Case{"glm4_4_2", Arch::kGlm4, 64, 4, 2},
                                           // GlmForCausalLM as `chatglm` (attn_qkv + bias).
                                           Case{"glm_4_2", Arch::kGlm, 64, 4, 2},
                                           // Issue 16: 3-D expert tensors and routers; Mixtral
                                           // as `llama` (permuted Q/K); Qwen3-MoE with a dense
                                           // last layer and norm_topk_prob false. Experts of 64
                                           // so that Q8_0 covers all three expert tensors.
                                           Case{"mixtral_8_2", Arch::kMixtral, 64, 8, 2, 64},
                                           Case{"qwen3_moe_4_2", Arch::kQwen3Moe, 64, 4, 2, 128}),
                         [](const auto& info) { return std::string(info.param.name); });

}  // namespace
}  // namespace shardlm
