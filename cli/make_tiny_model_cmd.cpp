#include <cstdio>
#include <map>
#include <string>

#include "cli/commands.h"
#include "model/random_weights.h"

namespace shardlm::cli {

RunFn AddMakeTinyModelCommand(CLI::App& app) {
  auto spec = std::make_shared<TinyModelSpec>();
  auto out = std::make_shared<std::string>();
  app.add_option("--arch", spec->arch, "Architecture")
      ->transform(CLI::CheckedTransformer(
          std::map<std::string, Arch>{
              {"llama", Arch::kLlama}, {"mistral", Arch::kMistral}, {"qwen2", Arch::kQwen2}},
          CLI::ignore_case))
      ->required();
  app.add_option("--out", *out, "Output directory")->required();
  app.add_option("--layers", spec->layers, "Decoder layers")->required();
  app.add_option("--hidden", spec->hidden, "Hidden size")->required();
  app.add_option("--heads", spec->heads, "Attention (query) heads")->required();
  app.add_option("--kv-heads", spec->kv_heads, "KV heads (GQA)")->required();
  app.add_option("--intermediate", spec->intermediate, "MLP intermediate size")->required();
  app.add_option("--vocab", spec->vocab, "Vocabulary size")->required();
  app.add_option("--seed", spec->seed, "Random seed")->required();
  app.add_option("--dtype", spec->dtype, "Weight dtype")
      ->transform(CLI::CheckedTransformer(
          std::map<std::string, DType>{
              {"f32", DType::kF32}, {"bf16", DType::kBF16}, {"f16", DType::kF16}},
          CLI::ignore_case))
      ->default_str("f32");
  app.add_flag("--tie-embeddings", spec->tie_embeddings, "Share the embedding with the LM head");

  return [spec, out]() -> int {
    absl::Status status = WriteTinyModel(*spec, *out);
    if (!status.ok()) return Fail("make-tiny-model", std::string(status.message()));
    std::printf("%s\n", out->c_str());
    return 0;
  };
}

}  // namespace shardlm::cli
