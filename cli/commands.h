// Subcommands of the `shardlm` binary. Each Add*Command registers its options on `app` and
// returns a callback that runs it and yields the process exit code.
#pragma once

#include <functional>

#include "CLI/CLI.hpp"

namespace shardlm::cli {

using RunFn = std::function<int()>;

RunFn AddMakeTinyModelCommand(CLI::App& app);
RunFn AddGenerateCommand(CLI::App& app);

// Prints "shardlm <command>: error: <message>" as one line on stderr and returns 1.
int Fail(const std::string& command, const std::string& message);

}  // namespace shardlm::cli
