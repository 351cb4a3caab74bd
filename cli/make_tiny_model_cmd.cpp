#include <cstdio>
#include <filesystem>
#include <map>
#include <string>

#include "cli/commands.h"
#include "formats/gguf_export.h"
#include "formats/random_weights.h"

namespace shardlm::cli {

RunFn AddMakeTinyModelCommand(CLI::App& app) {
  auto spec = std::make_shared<TinyModelSpec>();
  auto out = std::make_shared<std::string>();
  app.add_option("--arch", spec->arch, "Architecture")
      ->transform(CLI::CheckedTransformer(
          std::map<std::string, Arch>{{"llama", Arch::kLlama},
                                      {"mistral", Arch::kMistral},
                                      {"qwen2", Arch::kQwen2},
                                      {"qwen3", Arch::kQwen3},
                                      {"gemma3", Arch::kGemma3},
                                      {"phi3", Arch::kPhi3},
                                      {"glm", Arch::kGlm},
                                      {"glm4", Arch::kGlm4},
                                      {"mixtral", Arch::kMixtral},
                                      {"qwen3_moe", Arch::kQwen3Moe}},
          CLI::ignore_case))
      ->required();
  app.add_option("--out", *out, "Output directory")->required();
  app.add_option("--layers", spec->layers, "Decoder layers")->required();
  app.add_option("--hidden", spec->hidden, "Hidden size")->required();
  app.add_option("--heads", spec->heads, "Attention (query) heads")->required();
  app.add_option("--kv-heads", spec->kv_heads, "KV heads (GQA)")->required();
  app.add_option("--intermediate", spec->intermediate, "MLP intermediate size")->required();
  app.add_option("--vocab", spec->vocab, "Vocabulary size")->required();
  app.add_option("--head-dim", spec->head_dim, "Head size (default: hidden / heads)");
  app.add_option("--seed", spec->seed, "Random seed")->required();
  app.add_option("--dtype", spec->dtype, "Weight dtype")
      ->transform(CLI::CheckedTransformer(
          std::map<std::string, DType>{
              {"f32", DType::kF32}, {"bf16", DType::kBF16}, {"f16", DType::kF16}},
          CLI::ignore_case))
      ->default_str("f32");
  app.add_flag("--tie-embeddings", spec->tie_embeddings, "Share the embedding with the LM head");
  auto gguf_type = std::make_shared<DType>(DType::kF32);
  auto format = std::make_shared<std::string>("safetensors");
  app.add_option("--format", *format,
                 "safetensors: DIR/config.json + DIR/model.safetensors; gguf: DIR/model.gguf "
                 "(written as llama.cpp's converter would)")
      ->check(CLI::IsMember({"safetensors", "gguf"}));
  app.add_option("--gguf-type", *gguf_type, "Type of the GGUF matrices")
      ->transform(CLI::CheckedTransformer(
          std::map<std::string, DType>{{"f32", DType::kF32}, {"f16", DType::kF16},
                                       {"bf16", DType::kBF16}, {"q8_0", DType::kQ8_0},
                                       {"q4_0", DType::kQ4_0}, {"q4_1", DType::kQ4_1},
                                       {"q5_0", DType::kQ5_0}, {"q5_1", DType::kQ5_1},
                                       {"q4_k", DType::kQ4_K}, {"q5_k", DType::kQ5_K},
                                       {"q6_k", DType::kQ6_K}},
          CLI::ignore_case));

  return [spec, out, format, gguf_type]() -> int {
    absl::Status status = WriteTinyModel(*spec, *out);
    std::string written = *out;
    if (status.ok() && *format == "gguf") {
      auto config = TinyModelConfig(*spec);
      RandomWeightSource weights(*config, spec->seed, spec->dtype);
      written = *out + "/model.gguf";
      status = ExportGguf(*config, weights, written, *gguf_type);
      std::filesystem::remove(*out + "/model.safetensors");
      std::filesystem::remove(*out + "/config.json");
    }
    if (!status.ok()) return Fail("make-tiny-model", std::string(status.message()));
    std::printf("%s\n", written.c_str());
    return 0;
  };
}

}  // namespace shardlm::cli
