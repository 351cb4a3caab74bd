// The `shardlm` command line: make-tiny-model, generate, plan, tokenize, detokenize, and the
// clients of a running coordinator: generate --server, chat, bench, info.
#include <cstdio>
#include <exception>
#include <map>
#include <string>

#include "CLI/CLI.hpp"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "cli/commands.h"
#include "kernels/cpu/cpu_backend.h"
#include "spdlog/cfg/env.h"
#include "spdlog/sinks/stdout_color_sinks.h"
#include "spdlog/spdlog.h"

namespace shardlm::cli {

int Fail(const std::string& command, const std::string& message) {
  std::fprintf(stderr, "shardlm %s: error: %s\n", command.c_str(), message.c_str());
  return 1;
}

absl::StatusOr<std::vector<int32_t>> ParseIds(const std::string& text, const std::string& flag) {
  std::vector<int32_t> ids;
  int index = 0;
  for (absl::string_view piece : absl::StrSplit(text, ',')) {
    piece = absl::StripAsciiWhitespace(piece);
    int32_t id;
    if (!absl::SimpleAtoi(piece, &id)) {
      return absl::InvalidArgumentError(absl::StrCat(flag, ": element ", index, " is '",
                                                     std::string(piece),
                                                     "', expected an integer token id"));
    }
    ids.push_back(id);
    ++index;
  }
  return ids;
}

}  // namespace shardlm::cli

int main(int argc, char** argv) {
  shardlm::EnsureBlasKernelsMatchCpu(argv);  // may re-execute this process (cpu_backend.h)
  // Logs go to stderr: stdout carries results (generated ids) only.
  spdlog::set_default_logger(spdlog::stderr_color_mt("shardlm"));
  spdlog::set_pattern("[%H:%M:%S.%e] [%^%l%$] %v");
  spdlog::cfg::load_env_levels();  // SPDLOG_LEVEL=debug: per-step detail (experts' token counts)

  CLI::App app{"shardlm: serve large language models sharded across ranks"};
  app.require_subcommand(1);
  std::map<CLI::App*, shardlm::cli::RunFn> commands;
  auto add = [&](auto add_fn, const char* name, const char* help) {
    CLI::App* sub = app.add_subcommand(name, help);
    commands[sub] = add_fn(*sub);
  };
  add(shardlm::cli::AddMakeTinyModelCommand, "make-tiny-model",
      "Write a small model with seeded random weights (config.json + model.safetensors)");
  add(shardlm::cli::AddGenerateCommand, "generate",
      "Generate tokens from a prompt: greedily in this process (--model) or on a coordinator "
      "(--server)");
  add(shardlm::cli::AddPlanCommand, "plan",
      "Print what each rank holds at --tp T --pp P: layers, heads, KV heads, bytes of weights");
  add(shardlm::cli::AddTokenizeCommand, "tokenize",
      "Print the token ids of the UTF-8 text on stdin, separated by spaces");
  add(shardlm::cli::AddDetokenizeCommand, "detokenize", "Print the text of token ids");
  add(shardlm::cli::AddChatCommand, "chat",
      "Chat with a coordinator (--server): one user message per stdin line, answers streamed");
  add(shardlm::cli::AddBenchCommand, "bench",
      "Load-test a coordinator: N random-prompt requests, C in flight; TTFT, ITL, throughput");
  add(shardlm::cli::AddInfoCommand, "info",
      "Print a coordinator's model info as JSON (--wait-ready: wait for every worker rank)");

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  }
  try {
    for (auto& [sub, run] : commands) {
      if (sub->parsed()) return run();
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "shardlm: internal error: %s\n", e.what());
    return 70;
  }
  return 1;
}
