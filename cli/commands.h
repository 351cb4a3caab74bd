// Subcommands of the `shardlm` binary. Each Add*Command registers its options on `app` and
// returns a callback that runs it and yields the process exit code.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

#include "CLI/CLI.hpp"

namespace shardlm::cli {

using RunFn = std::function<int()>;

RunFn AddMakeTinyModelCommand(CLI::App& app);
RunFn AddGenerateCommand(CLI::App& app);
RunFn AddPlanCommand(CLI::App& app);
RunFn AddTokenizeCommand(CLI::App& app);
RunFn AddDetokenizeCommand(CLI::App& app);
// Clients of a running coordinator (gRPC): chat, bench, info (generate --server is in generate).
RunFn AddChatCommand(CLI::App& app);
RunFn AddBenchCommand(CLI::App& app);
RunFn AddInfoCommand(CLI::App& app);

// Prints "shardlm <command>: error: <message>" as one line on stderr and returns 1.
int Fail(const std::string& command, const std::string& message);

// Parses "1,2,3" (spaces allowed); errors name `flag` and the bad element.
absl::StatusOr<std::vector<int32_t>> ParseIds(const std::string& text, const std::string& flag);

}  // namespace shardlm::cli
