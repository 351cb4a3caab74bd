// The HF transformers goldens of tests/goldens/hf (scripts/make-goldens.py): the manifest, the
// tiny models' make-tiny-model arguments, and the comparison of a model's greedy decoding with
// them (the same ids, logits within 1e-4 x max|logit|). Shared by hf_golden_test (one rank) and
// hf_golden_tp_test (tensor parallel, under mpirun).
#pragma once

#include <cmath>
#include <cstdio>
#include <fstream>
#include <map>
#include <string>
#include <vector>

#include "absl/strings/str_format.h"
#include "formats/config.h"
#include "formats/random_weights.h"
#include "gtest/gtest.h"
#include "model/llama.h"
#include "nlohmann/json.hpp"
#include "runtime/generator.h"

namespace shardlm {

inline const std::string kGoldenDir = std::string(SHARDLM_SOURCE_DIR) + "/tests/goldens/hf";

inline nlohmann::json ReadManifest() {
  std::ifstream in(kGoldenDir + "/manifest.json");
  return nlohmann::json::parse(in);
}

inline std::string Fnv1a64OfFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  uint64_t h = 0xcbf29ce484222325ull;
  char c;
  while (in.get(c)) {
    h ^= static_cast<unsigned char>(c);
    h *= 0x100000001b3ull;
  }
  return absl::StrFormat("%016x", h);
}

inline std::vector<float> ReadF32(const std::string& path) {
  std::ifstream in(path, std::ios::binary | std::ios::ate);
  std::vector<float> v(static_cast<size_t>(in.tellg()) / sizeof(float));
  in.seekg(0);
  in.read(reinterpret_cast<char*>(v.data()), static_cast<std::streamsize>(v.size() * 4));
  return v;
}

// Parses make-tiny-model's arguments (as recorded in the manifest) into a spec.
inline TinyModelSpec SpecFromArgs(const std::vector<std::string>& args) {
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

// The manifest entry of model `name`, or null.
inline const nlohmann::json* FindGolden(const nlohmann::json& manifest, const std::string& name) {
  for (const auto& m : manifest["models"]) {
    if (m["name"] == name) return &m;
  }
  return nullptr;
}

// Greedy decoding of every golden prompt through the served path (runtime/generator.h) against
// HF's ids and logits. With several ranks every rank decodes and asks for the logits (gathering
// them is collective); they arrive on rank 0, which compares them (`compare_logits`).
inline void ExpectMatchesGoldens(LlamaModel& model, const nlohmann::json& manifest,
                                 const nlohmann::json& entry, const std::string& label,
                                 bool compare_logits = true) {
  const std::vector<float> golden =
      ReadF32(kGoldenDir + "/" + entry["logits_file"].get<std::string>());
  const int64_t vocab = model.config().vocab_size;
  const int steps = manifest["steps"];
  size_t row0 = 0;
  for (size_t p = 0; p < manifest["prompts"].size(); ++p) {
    const std::vector<int32_t> prompt = manifest["prompts"][p];
    const auto& want = entry["outputs"][p];
    GenerateOptions options;
    options.max_new_tokens = steps;
    options.keep_logits = true;
    options.stop_at_eos = false;
    auto result = Generate(model, prompt, options);
    ASSERT_TRUE(result.ok()) << result.status();
    EXPECT_EQ(result->tokens, want["ids"].get<std::vector<int32_t>>()) << label << " prompt " << p;
    if (!compare_logits) continue;

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
    std::printf("%-22s prompt %zu: max|diff| %.3g (%.3g x max|logit| %.3g)\n", label.c_str(), p,
                max_diff, max_diff / max_abs, max_abs);
    EXPECT_LE(max_diff, tolerance) << label << " step " << worst / vocab << " token "
                                   << worst % vocab << ": want " << golden[row0 * vocab + worst]
                                   << " got " << result->logits[worst];
    row0 += steps;
  }
}

}  // namespace shardlm
