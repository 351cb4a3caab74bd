// The `shardlm` command line: make-tiny-model, generate (and more with later issues).
#include <cstdio>
#include <exception>
#include <map>
#include <string>

#include "CLI/CLI.hpp"
#include "cli/commands.h"
#include "spdlog/sinks/stdout_color_sinks.h"
#include "spdlog/spdlog.h"

namespace shardlm::cli {

int Fail(const std::string& command, const std::string& message) {
  std::fprintf(stderr, "shardlm %s: error: %s\n", command.c_str(), message.c_str());
  return 1;
}

}  // namespace shardlm::cli

int main(int argc, char** argv) {
  // Logs go to stderr: stdout carries results (generated ids) only.
  spdlog::set_default_logger(spdlog::stderr_color_mt("shardlm"));
  spdlog::set_pattern("[%H:%M:%S.%e] [%^%l%$] %v");

  CLI::App app{"shardlm: serve large language models sharded across ranks"};
  app.require_subcommand(1);
  std::map<CLI::App*, shardlm::cli::RunFn> commands;
  auto add = [&](auto add_fn, const char* name, const char* help) {
    CLI::App* sub = app.add_subcommand(name, help);
    commands[sub] = add_fn(*sub);
  };
  add(shardlm::cli::AddMakeTinyModelCommand, "make-tiny-model",
      "Write a small model with seeded random weights (config.json + model.safetensors)");
  add(shardlm::cli::AddGenerateCommand, "generate", "Generate tokens greedily from a prompt");

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
