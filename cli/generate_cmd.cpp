#include <cstdio>
#include <fstream>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "cli/client_common.h"
#include "cli/commands.h"
#include "coordinator/validation.h"
#include "runtime/ranks.h"
#include "base/status_macros.h"
#include "formats/checkpoint_loader.h"
#include "tokenizer/loader.h"
#include "runtime/generator.h"
#include "model/llama.h"
#include "runtime/backend_setup.h"
#include "runtime/faulty_backend.h"
#include "spdlog/spdlog.h"

namespace shardlm::cli {

namespace {

struct GenerateArgs {
  std::string model;
  std::string server;        // --server: run on a coordinator instead of in this process
  SamplingFlags sampling;    // offline too, but for --stop, --logprobs, --timeout-ms
  ClientSecurityFlags security;  // --server only
  std::string prompt_ids;
  std::string prompt;
  std::string chat;
  std::string chat_template;
  int64_t max_new_tokens = 16;
  std::string dump_logits;
  int threads = 0;
  bool ignore_eos = false;
  ParallelArgs parallel;
  BackendOptions backend;
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
  SHARDLM_ASSIGN_OR_RETURN(RenderedChat chat, chat_template.RenderChat({{"user", args.chat}}));
  spdlog::debug("chat template {}: {}", chat_template.name(), chat.text);
  // As the coordinator does: only the template's markup may hold special tokens, and templates
  // that write the BOS text themselves get no second BOS from the tokenizer.
  return tokenizer->EncodeWithSpecialSpans(chat.text, !chat_template.renders_bos(), chat.markup);
}

// Everything up to and including loading: a failure here may differ between ranks (a missing
// file on one node), so the caller makes the ranks agree on it before any collective.
struct Loaded {
  OpenedCheckpoint checkpoint;
  std::unique_ptr<Tokenizer> tokenizer;
  std::vector<int32_t> prompt;
  BackendSetup setup;
  std::unique_ptr<LlamaModel> model;
};

absl::Status Load(const GenerateArgs& args, ParallelRun& run, Loaded& out) {
  const ModelConfig& config = out.checkpoint.config;
  if (!args.prompt_ids.empty()) {
    SHARDLM_ASSIGN_OR_RETURN(out.prompt, ParseIds(args.prompt_ids, "--prompt-ids"));
  } else {
    SHARDLM_ASSIGN_OR_RETURN(out.tokenizer, LoadTokenizer(out.checkpoint));
    SHARDLM_ASSIGN_OR_RETURN(out.prompt, PromptIds(args, out.checkpoint, out.tokenizer.get()));
  }
  SHARDLM_RETURN_IF_ERROR(ValidateGenerateRequest(config, out.prompt, args.max_new_tokens));
  SHARDLM_ASSIGN_OR_RETURN(out.model, LlamaModel::Load(config, *out.checkpoint.weights,
                                                       *out.setup.backend, *run.context));
  const RankShard& shard = out.model->parallel().shard;
  if (run.distributed()) {
    spdlog::info(
        "rank {} (stage {}, tp rank {}): layers [{}, {}), q heads [{}, {}), kv heads [{}, {}), "
        "vocab [{}, {}): {:.2f} MiB of weights on {}",
        shard.rank, shard.stage, shard.tp_rank, shard.layers.begin, shard.layers.end,
        shard.q_heads.begin, shard.q_heads.end, shard.kv_heads.begin, shard.kv_heads.end,
        shard.vocab.begin, shard.vocab.end, out.model->weight_bytes() / 1048576.0,
        out.setup.description);
  } else {
    spdlog::info("loaded {} ({}, {} layers) on {}: {:.1f} MiB of weights", args.model,
                 std::string(ArchName(config.arch)), config.num_layers,
                 out.setup.description, out.model->weight_bytes() / 1048576.0);
  }
  return absl::OkStatus();
}

absl::Status RunGenerate(const GenerateArgs& args) {
  const int given = !args.prompt_ids.empty() + !args.prompt.empty() + !args.chat.empty();
  if (given != 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("expected exactly one of --prompt-ids, --prompt, --chat; got ", given));
  }
  // The request's sampling as the service would get it from `generate --server`, checked by the
  // service's own rules.
  shardlm::v1::GenerateRequest request;
  ApplySamplingFlags(args.sampling, request);
  shardlm::v1::SamplingParams sampling = request.sampling();
  if (!sampling.has_temperature()) sampling.set_temperature(0);  // greedy unless told otherwise
  SHARDLM_RETURN_IF_ERROR(coordinator::ValidateSamplingParams(sampling));
  Loaded loaded;
  SHARDLM_ASSIGN_OR_RETURN(loaded.checkpoint, OpenCheckpoint(args.model));
  SHARDLM_ASSIGN_OR_RETURN(ShardPlan plan, PlanFor(loaded.checkpoint.config,
                                                   *loaded.checkpoint.weights, args.parallel));
  SHARDLM_ASSIGN_OR_RETURN(ParallelRun run, StartParallel(plan, args.threads));
  // The backend first (collective over every rank, agreed inside), then the rest of loading.
  BackendOptions backend_options = args.backend;
  backend_options.threads = run.threads;
  SHARDLM_ASSIGN_OR_RETURN(loaded.setup, SetUpBackend(backend_options, *run.context));
  // A backend op that throws while loading (device memory for the weights) is this rank's load
  // error like any other, naming the op: the ranks agree on it rather than one leaving alone.
  absl::Status load_status;
  try {
    load_status = Load(args, run, loaded);
  } catch (const std::exception& e) {
    const std::string op = FailedBackendOp(*loaded.setup.backend);
    load_status = absl::InternalError(
        absl::StrCat("loading failed", op.empty() ? "" : " in ", op, ": ", e.what()));
  }
  SHARDLM_RETURN_IF_ERROR(run.Agree(load_status));
  const bool printer = run.rank == 0;  // rank 0 alone writes results
  Tokenizer* tokenizer = loaded.tokenizer.get();
  const bool text_mode = args.prompt_ids.empty();

  GenerateOptions options;
  options.max_new_tokens = args.max_new_tokens;
  options.keep_logits = !args.dump_logits.empty();
  options.stop_at_eos = !args.ignore_eos;
  options.sequence.sampling = sampling;
  options.sequence.cuda_graphs = args.backend.cuda_graphs;
  std::unique_ptr<Tokenizer::StreamDecoder> stream;
  if (tokenizer) {
    options.is_eog = [&](int32_t id) { return tokenizer->IsEog(id); };
    if (text_mode && printer) {
      stream = std::make_unique<Tokenizer::StreamDecoder>(tokenizer->NewStream());
      options.on_token = [&](int32_t id) {
        std::fputs(stream->Push(id).c_str(), stdout);
        std::fflush(stdout);
      };
    }
  }
  absl::StatusOr<GenerateResult> generated = Generate(*loaded.model, loaded.prompt, options);
  if (!generated.ok()) {
    // Peers may be blocked in a collective with this rank: end the whole job.
    std::fprintf(stderr, "shardlm generate: error (rank %d): %s\n", run.rank,
                 std::string(generated.status().message()).c_str());
    run.AbortIfDistributed(1);
    return generated.status();
  }
  const GenerateResult& result = *generated;
  if (!printer) return absl::OkStatus();
  if (stream) std::printf("%s\n", stream->Flush().c_str());

  const size_t decoded = result.tokens.size() - 1;
  const size_t n_prompt = loaded.prompt.size();
  std::fprintf(stderr, "prefill: %zu tokens in %.2f ms (%.1f tok/s)\n", n_prompt,
               result.prefill_ms, n_prompt * 1000.0 / std::max(result.prefill_ms, 1e-9));
  std::fprintf(stderr, "decode: %zu tokens in %.2f ms (%.1f tok/s)\n", decoded, result.decode_ms,
               decoded == 0 ? 0.0 : decoded * 1000.0 / std::max(result.decode_ms, 1e-9));
  if (options.keep_logits) SHARDLM_RETURN_IF_ERROR(WriteLogits(args.dump_logits, result.logits));
  if (!text_mode) std::printf("%s\n", absl::StrJoin(result.tokens, ",").c_str());
  return absl::OkStatus();
}

}  // namespace

RunFn AddGenerateCommand(CLI::App& app) {
  auto args = std::make_shared<GenerateArgs>();
  CLI::Option* model = app.add_option(
      "--model", args->model, "HF model directory (config.json + safetensors) or a .gguf file");
  CLI::Option* server =
      app.add_option("--server", args->server,
                     "Coordinator address HOST:PORT: generate there (streamed) instead of locally");
  model->excludes(server);
  app.add_option("--prompt-ids", args->prompt_ids, "Prompt token ids, comma separated");
  app.add_option("--prompt", args->prompt, "Prompt text (tokenized with the model's tokenizer)");
  app.add_option("--chat", args->chat, "A user message, wrapped in the model's chat template");
  app.add_option("--chat-template", args->chat_template,
                 "Override the chat template: chatml, llama3, llama2, mistral, gemma, glm4");
  app.add_option("--max-new-tokens", args->max_new_tokens, "Tokens to generate")
      ->default_val(16);
  app.add_option("--dump-logits", args->dump_logits,
                 "Write the logits row of each generated token (little-endian f32) to FILE");
  app.add_option("--threads", args->threads, "CPU threads per rank (0: the node's cores divided among its ranks)")->default_val(0);
  app.add_flag("--ignore-eos", args->ignore_eos, "Do not stop at an end-of-generation token");
  AddParallelOptions(app, args->parallel);
  AddBackendOptions(app, args->backend);
  AddSamplingOptions(app, args->sampling);
  AddClientSecurityOptions(app, args->security);
  return [args, &app]() -> int {
    if (args->model.empty() == args->server.empty()) {
      return Fail("generate", "expected exactly one of --model, --server");
    }
    if (!args->server.empty()) {
      for (const char* offline : {"--dump-logits", "--threads", "--tp", "--pp", "--pp-layers",
                                  "--backend", "--device", "--nccl", "--kv-dtype",
                                  "--gpu-memory-fraction", "--cuda-graphs"}) {
        if (app.count(offline) > 0) {
          return Fail("generate", std::string(offline) + " applies to --model only, not --server");
        }
      }
      SamplingFlags& flags = args->sampling;
      flags.ignore_eos = args->ignore_eos;
      flags.chat_template = args->chat_template;
      return RunRemoteGenerate(args->server, args->security, args->prompt_ids, args->prompt,
                               args->chat, args->max_new_tokens, flags);
    }
    for (const char* server_only : {"--tls-ca", "--tls-cert", "--tls-key", "--auth-token-file"}) {
      if (app.count(server_only) > 0) {
        return Fail("generate", std::string(server_only) + " needs --server");
      }
    }
    for (CLI::Option* option : args->sampling.options) {
      for (const char* server_only : {"--stop", "--logprobs", "--timeout-ms"}) {
        if (option->count() > 0 && option->check_name(server_only)) {
          return Fail("generate", std::string(server_only) + " needs --server");
        }
      }
    }
    absl::Status status = RunGenerate(*args);
    return status.ok() ? 0 : Fail("generate", std::string(status.message()));
  };
}

}  // namespace shardlm::cli
