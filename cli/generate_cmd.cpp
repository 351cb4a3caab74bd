#include <cstdio>
#include <fstream>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "cli/commands.h"
#include "kernels/cpu/cpu_backend.h"
#include "kernels/status_macros.h"
#include "model/checkpoint_loader.h"
#include "model/generator.h"
#include "model/llama.h"
#include "spdlog/spdlog.h"

namespace shardlm::cli {

namespace {

struct GenerateArgs {
  std::string model;
  std::string prompt_ids;
  std::string prompt;
  std::string chat;
  std::string chat_template;
  int64_t max_new_tokens = 16;
  std::string dump_logits;
  int threads = 0;
  bool ignore_eos = false;
};

absl::Status WriteLogits(const std::string& path, const std::vector<float>& logits) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  // x86-64 and aarch64 are little-endian, the format the file promises.
  out.write(reinterpret_cast<const char*>(logits.data()),
            static_cast<std::streamsize>(logits.size() * sizeof(float)));
  if (!out) return absl::InternalError(absl::StrCat("--dump-logits: cannot write ", path));
  return absl::OkStatus();
}

// The prompt ids from whichever of --prompt-ids, --prompt, --chat was given.
absl::StatusOr<std::vector<int32_t>> PromptIds(const GenerateArgs& args,
                                               const OpenedCheckpoint& checkpoint,
                                               const Tokenizer* tokenizer) {
  if (!args.prompt_ids.empty()) return ParseIds(args.prompt_ids, "--prompt-ids");
  if (!args.prompt.empty()) return tokenizer->EncodeChecked(args.prompt, true, true);
  SHARDLM_ASSIGN_OR_RETURN(ChatTemplate chat_template,
                           LoadChatTemplate(checkpoint, args.chat_template));
  SHARDLM_ASSIGN_OR_RETURN(std::string text, chat_template.Render({{"user", args.chat}}));
  spdlog::debug("chat template {}: {}", chat_template.name(), text);
  // Templates that write the BOS text themselves get no second BOS from the tokenizer.
  return tokenizer->EncodeChecked(text, !chat_template.renders_bos(), true);
}

absl::Status RunGenerate(const GenerateArgs& args) {
  const int given = !args.prompt_ids.empty() + !args.prompt.empty() + !args.chat.empty();
  if (given != 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("expected exactly one of --prompt-ids, --prompt, --chat; got ", given));
  }
  SHARDLM_ASSIGN_OR_RETURN(OpenedCheckpoint checkpoint, OpenCheckpoint(args.model));
  const ModelConfig& config = checkpoint.config;
  std::unique_ptr<Tokenizer> tokenizer;
  const bool text_mode = args.prompt_ids.empty();
  if (text_mode) {
    SHARDLM_ASSIGN_OR_RETURN(tokenizer, LoadTokenizer(checkpoint));
  }
  SHARDLM_ASSIGN_OR_RETURN(std::vector<int32_t> prompt,
                           PromptIds(args, checkpoint, tokenizer.get()));
  SHARDLM_RETURN_IF_ERROR(ValidateGenerateRequest(config, prompt, args.max_new_tokens));

  std::unique_ptr<Backend> backend = CreateCpuBackend(args.threads);
  SHARDLM_ASSIGN_OR_RETURN(std::unique_ptr<LlamaModel> model,
                           LlamaModel::Load(config, *checkpoint.weights, *backend));
  spdlog::info("loaded {} ({}, {} layers) on {}: {:.1f} MiB of weights", args.model,
               std::string(ArchName(config.arch)), config.num_layers,
               std::string(backend->name()), model->weight_bytes() / 1048576.0);

  GenerateOptions options;
  options.max_new_tokens = args.max_new_tokens;
  options.keep_logits = !args.dump_logits.empty();
  options.stop_at_eos = !args.ignore_eos;
  std::unique_ptr<Tokenizer::StreamDecoder> stream;
  if (tokenizer) {
    options.is_eog = [&](int32_t id) { return tokenizer->IsEog(id); };
    if (text_mode) {
      stream = std::make_unique<Tokenizer::StreamDecoder>(tokenizer->NewStream());
      options.on_token = [&](int32_t id) {
        std::fputs(stream->Push(id).c_str(), stdout);
        std::fflush(stdout);
      };
    }
  }
  SHARDLM_ASSIGN_OR_RETURN(GenerateResult result, GenerateGreedy(*model, prompt, options));
  if (stream) std::printf("%s\n", stream->Flush().c_str());

  const size_t decoded = result.tokens.size() - 1;
  std::fprintf(stderr, "prefill: %zu tokens in %.2f ms (%.1f tok/s)\n", prompt.size(),
               result.prefill_ms, prompt.size() * 1000.0 / std::max(result.prefill_ms, 1e-9));
  std::fprintf(stderr, "decode: %zu tokens in %.2f ms (%.1f tok/s)\n", decoded, result.decode_ms,
               decoded == 0 ? 0.0 : decoded * 1000.0 / std::max(result.decode_ms, 1e-9));
  if (options.keep_logits) SHARDLM_RETURN_IF_ERROR(WriteLogits(args.dump_logits, result.logits));
  if (!text_mode) std::printf("%s\n", absl::StrJoin(result.tokens, ",").c_str());
  return absl::OkStatus();
}

}  // namespace

RunFn AddGenerateCommand(CLI::App& app) {
  auto args = std::make_shared<GenerateArgs>();
  app.add_option("--model", args->model,
                 "HF model directory (config.json + safetensors) or a .gguf file")
      ->required();
  app.add_option("--prompt-ids", args->prompt_ids, "Prompt token ids, comma separated");
  app.add_option("--prompt", args->prompt, "Prompt text (tokenized with the model's tokenizer)");
  app.add_option("--chat", args->chat, "A user message, wrapped in the model's chat template");
  app.add_option("--chat-template", args->chat_template,
                 "Override the chat template: chatml, llama3, llama2, mistral, gemma, glm4");
  app.add_option("--max-new-tokens", args->max_new_tokens, "Tokens to generate")
      ->default_val(16);
  app.add_option("--dump-logits", args->dump_logits,
                 "Write the logits row of each generated token (little-endian f32) to FILE");
  app.add_option("--threads", args->threads, "CPU threads (0: all cores)")->default_val(0);
  app.add_flag("--ignore-eos", args->ignore_eos, "Do not stop at an end-of-generation token");
  return [args]() -> int {
    absl::Status status = RunGenerate(*args);
    return status.ok() ? 0 : Fail("generate", std::string(status.message()));
  };
}

}  // namespace shardlm::cli
