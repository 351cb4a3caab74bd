// shardlm against HF transformers (float64) on the tiny models of scripts/make-goldens.py.
// Each model is regenerated here from its make-tiny-model arguments; its bytes must hash as they
// did where the goldens were made (determinism across machines), then greedy decoding through the
// served path (runtime/generator.h: WorkerEngine steps over the paged KV cache, the logits rows
// returned by the engine) must give the same ids and logits within 1e-4 x max|logit|.
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <string>
#include <vector>

#include "absl/strings/str_format.h"
#include "gtest/gtest.h"
#include "kernels/cpu/cpu_backend.h"
#include "formats/config.h"
#include "runtime/generator.h"
#include "model/llama.h"
#include "formats/random_weights.h"
#include "nlohmann/json.hpp"

namespace shardlm {
namespace {

const std::string kGoldenDir = std::string(SHARDLM_SOURCE_DIR) + "/tests/goldens/hf";

nlohmann::json ReadManifest() {
  std::ifstream in(kGoldenDir + "/manifest.json");
  return nlohmann::json::parse(in);
}

std::string Fnv1a64OfFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  uint64_t h = 0xcbf29ce484222325ull;
  char c;
  while (in.get(c)) {
    h ^= static_cast<unsigned char>(c);
    h *= 0x100000001b3ull;
  }
  return absl::StrFormat("%016x", h);
}

std::vector<float> ReadF32(const std::string& path) {
  std::ifstream in(path, std::ios::binary | std::ios::ate);
  std::vector<float> v(static_cast<size_t>(in.tellg()) / sizeof(float));
  in.seekg(0);
  in.read(reinterpret_cast<char*>(v.data()), static_cast<std::streamsize>(v.size() * 4));
  return v;
}

// Parses make-tiny-model's arguments (as recorded in the manifest) into a spec.
TinyModelSpec SpecFromArgs(const std::vector<std::string>& args) {
  TinyModelSpec spec;
  for (size_t i = 0; i < args.size(); ++i) {
    const std::string& flag = args[i];
    if (flag == "--tie-embeddings") {
      spec.tie_embeddings = true;
      continue;
    }
    const std::string& value = args.at(++i);
    if (flag == "--arch") {
      const std::optional<Arch> arch = ArchFromName(value == "gemma3" ? "gemma3_text" : value);
      if (!arch) ADD_FAILURE() << "unknown --arch in manifest: " << value;
      spec.arch = arch.value_or(Arch::kLlama);
    } else if (flag == "--dtype") {
      spec.dtype = value == "bf16" ? DType::kBF16 : value == "f16" ? DType::kF16 : DType::kF32;
    } else if (flag == "--seed") {
      spec.seed = std::stoull(value);
    } else {
      static const std::map<std::string, int64_t TinyModelSpec::*> kInts = {
          {"--layers", &TinyModelSpec::layers}, {"--hidden", &TinyModelSpec::hidden},
          {"--heads", &TinyModelSpec::heads}, {"--kv-heads", &TinyModelSpec::kv_heads},
          {"--intermediate", &TinyModelSpec::intermediate}, {"--vocab", &TinyModelSpec::vocab},
          {"--head-dim", &TinyModelSpec::head_dim}};
      auto it = kInts.find(flag);
      if (it == kInts.end()) ADD_FAILURE() << "unknown make-tiny-model flag in manifest: " << flag;
      else spec.*(it->second) = std::stoll(value);
    }
  }
  return spec;
}

class HfGoldenTest : public ::testing::TestWithParam<std::string> {};

TEST_P(HfGoldenTest, MatchesTransformers) {
  const nlohmann::json manifest = ReadManifest();
  const nlohmann::json* entry = nullptr;
  for (const auto& m : manifest["models"]) {
    if (m["name"] == GetParam()) entry = &m;
  }
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

  const std::vector<float> golden = ReadF32(kGoldenDir + "/" + (*entry)["logits_file"].get<std::string>());
  const int64_t vocab = config->vocab_size;
  const int steps = manifest["steps"];
  size_t row0 = 0;
  for (size_t p = 0; p < manifest["prompts"].size(); ++p) {
    const std::vector<int32_t> prompt = manifest["prompts"][p];
    const auto& want = (*entry)["outputs"][p];
    GenerateOptions options;
    options.max_new_tokens = steps;
    options.keep_logits = true;
    options.stop_at_eos = false;
    auto result = Generate(**model, prompt, options);
    ASSERT_TRUE(result.ok()) << result.status();
    EXPECT_EQ(result->tokens, want["ids"].get<std::vector<int32_t>>()) << "prompt " << p;

    const double max_abs = want["max_abs_logit"];
    const double tolerance = 1e-4 * max_abs;
    double max_diff = 0;
    size_t worst = 0;
    ASSERT_EQ(result->logits.size(), static_cast<size_t>(steps * vocab));
    for (size_t i = 0; i < result->logits.size(); ++i) {
      const double d = std::abs(double(result->logits[i]) - golden[row0 * vocab + i]);
      if (d > max_diff || std::isnan(d)) {
        max_diff = d;
        worst = i;
      }
    }
    std::printf("%-14s prompt %zu: max|diff| %.3g (%.3g x max|logit| %.3g)\n",
                GetParam().c_str(), p, max_diff, max_diff / max_abs, max_abs);
    EXPECT_LE(max_diff, tolerance) << "step " << worst / vocab << " token " << worst % vocab
                                   << ": want " << golden[row0 * vocab + worst] << " got "
                                   << result->logits[worst];
    row0 += steps;
  }
  std::filesystem::remove_all(dir);
}

INSTANTIATE_TEST_SUITE_P(TinyModels, HfGoldenTest,
                         ::testing::Values("llama-8h-2kv", "llama-9h-3kv", "llama-4h-1kv",
                                           "qwen2-bias", "mistral-swa", "llama-bf16",
                                           "llama-f16", "llama-tied", "qwen3-hd24", "gemma3",
                                           "phi3-longrope", "glm", "glm4"),
                         [](const auto& info) {
                           std::string n = info.param;
                           for (char& c : n) if (c == '-') c = '_';
                           return n;
                         });

}  // namespace
}  // namespace shardlm
