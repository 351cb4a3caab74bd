#include <cstdio>
#include <filesystem>
#include <fstream>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "cli/commands.h"
#include "kernels/cpu/cpu_backend.h"
#include "kernels/status_macros.h"
#include "model/config.h"
#include "model/generator.h"
#include "model/llama.h"
#include "spdlog/spdlog.h"

namespace shardlm::cli {

namespace {

struct GenerateArgs {
  std::string model;
  std::string prompt_ids;
  int64_t max_new_tokens = 16;
  std::string dump_logits;
  int threads = 0;
  bool ignore_eos = false;
};

absl::StatusOr<std::vector<int32_t>> ParseIds(const std::string& text) {
  std::vector<int32_t> ids;
  int index = 0;
  for (absl::string_view piece : absl::StrSplit(text, ',')) {
    piece = absl::StripAsciiWhitespace(piece);
    int32_t id;
    if (!absl::SimpleAtoi(piece, &id)) {
      return absl::InvalidArgumentError(absl::StrCat(
          "--prompt-ids: element ", index, " is '", piece, "', expected an integer token id"));
    }
    ids.push_back(id);
    ++index;
  }
  return ids;
}

absl::Status WriteLogits(const std::string& path, const std::vector<float>& logits) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  // x86-64 and aarch64 are little-endian, the format the file promises.
  out.write(reinterpret_cast<const char*>(logits.data()),
            static_cast<std::streamsize>(logits.size() * sizeof(float)));
  if (!out) return absl::InternalError(absl::StrCat("--dump-logits: cannot write ", path));
  return absl::OkStatus();
}

absl::Status RunGenerate(const GenerateArgs& args) {
  SHARDLM_ASSIGN_OR_RETURN(std::vector<int32_t> prompt, ParseIds(args.prompt_ids));
  const std::string dir = std::filesystem::is_directory(args.model)
                              ? args.model
                              : std::filesystem::path(args.model).parent_path().string();
  SHARDLM_ASSIGN_OR_RETURN(ModelConfig config, LoadModelConfig(dir + "/config.json"));
  SHARDLM_RETURN_IF_ERROR(ValidateGenerateRequest(config, prompt, args.max_new_tokens));
  SHARDLM_ASSIGN_OR_RETURN(std::unique_ptr<WeightSource> weights,
                           OpenSafetensorsCheckpoint(args.model));
  std::unique_ptr<Backend> backend = CreateCpuBackend(args.threads);
  SHARDLM_ASSIGN_OR_RETURN(std::unique_ptr<LlamaModel> model,
                           LlamaModel::Load(config, *weights, *backend));
  spdlog::info("loaded {} ({}, {} layers) on {}: {:.1f} MiB of weights", weights->Describe(),
               ArchName(config.arch), config.num_layers, backend->name(),
               model->weight_bytes() / 1048576.0);

  GenerateOptions options;
  options.max_new_tokens = args.max_new_tokens;
  options.keep_logits = !args.dump_logits.empty();
  options.stop_at_eos = !args.ignore_eos;
  SHARDLM_ASSIGN_OR_RETURN(GenerateResult result, GenerateGreedy(*model, prompt, options));

  const size_t decoded = result.tokens.size() - 1;
  std::fprintf(stderr, "prefill: %zu tokens in %.2f ms (%.1f tok/s)\n", prompt.size(),
               result.prefill_ms, prompt.size() * 1000.0 / std::max(result.prefill_ms, 1e-9));
  std::fprintf(stderr, "decode: %zu tokens in %.2f ms (%.1f tok/s)\n", decoded, result.decode_ms,
               decoded == 0 ? 0.0 : decoded * 1000.0 / std::max(result.decode_ms, 1e-9));
  if (options.keep_logits) SHARDLM_RETURN_IF_ERROR(WriteLogits(args.dump_logits, result.logits));
  std::printf("%s\n", absl::StrJoin(result.tokens, ",").c_str());
  return absl::OkStatus();
}

}  // namespace

RunFn AddGenerateCommand(CLI::App& app) {
  auto args = std::make_shared<GenerateArgs>();
  app.add_option("--model", args->model, "Model directory (config.json + safetensors)")
      ->required();
  app.add_option("--prompt-ids", args->prompt_ids, "Prompt token ids, comma separated")
      ->required();
  app.add_option("--max-new-tokens", args->max_new_tokens, "Tokens to generate")
      ->default_val(16);
  app.add_option("--dump-logits", args->dump_logits,
                 "Write the logits row of each generated token (little-endian f32) to FILE");
  app.add_option("--threads", args->threads, "CPU threads (0: all cores)")->default_val(0);
  app.add_flag("--ignore-eos", args->ignore_eos, "Do not stop at an end-of-sequence token");
  return [args]() -> int {
    absl::Status status = RunGenerate(*args);
    return status.ok() ? 0 : Fail("generate", std::string(status.message()));
  };
}

}  // namespace shardlm::cli
