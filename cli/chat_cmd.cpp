// `shardlm chat --server ADDR`: an interactive conversation with a running coordinator. Each
// stdin line is a user message; the whole history (system, user, assistant messages) goes with
// every request and the answer streams to stdout. EOF or "/exit" ends it; "/reset" forgets the
// history.
#include <unistd.h>

#include <cstdio>
#include <iostream>
#include <string>

#include "absl/strings/strip.h"
#include "cli/client_common.h"
#include "cli/commands.h"

namespace shardlm::cli {

namespace {

struct ChatArgs {
  std::string server;
  std::string system;
  int32_t max_new_tokens = 512;
  bool usage = false;
  SamplingFlags sampling;
  ClientSecurityFlags security;
};

int RunChat(ChatArgs& args) {
  auto channel = MakeChannel(args.server, args.security);
  if (!channel.ok()) return Fail("chat", std::string(channel.status().message()));
  auto stub = shardlm::v1::Generation::NewStub(*channel);
  shardlm::v1::ChatMessages history;
  auto reset = [&] {
    history.Clear();
    if (!args.system.empty()) {
      shardlm::v1::ChatMessage* m = history.add_messages();
      m->set_role("system");
      m->set_content(args.system);
    }
  };
  reset();
  const bool interactive = ::isatty(STDIN_FILENO) != 0;
  int failures = 0;
  std::string line;
  while (true) {
    if (interactive) {
      std::fputs("> ", stderr);
      std::fflush(stderr);
    }
    if (!std::getline(std::cin, line)) break;
    const std::string message(absl::StripAsciiWhitespace(line));
    if (message.empty()) continue;
    if (message == "/exit" || message == "/quit") break;
    if (message == "/reset") {
      reset();
      continue;
    }
    shardlm::v1::GenerateRequest request;
    request.set_request_id(NewRequestId("chat"));
    *request.mutable_chat() = history;
    shardlm::v1::ChatMessage* user = request.mutable_chat()->add_messages();
    user->set_role("user");
    user->set_content(message);
    request.set_max_new_tokens(args.max_new_tokens);
    ApplySamplingFlags(args.sampling, request);

    StreamOutcome outcome = StreamGenerate(
        *stub, request, args.sampling.timeout_ms,
        [&](const shardlm::v1::GenerateResponse& m) {
          if (!m.text().empty()) {
            std::fputs(m.text().c_str(), stdout);
            std::fflush(stdout);
          }
          if (args.sampling.logprobs > 0) PrintLogprobs(stderr, m);
        });
    std::printf("\n");
    std::fflush(stdout);
    if (!outcome.status.ok()) {
      FailRpc("chat", outcome.status);  // the turn is dropped; the conversation goes on
      ++failures;
      continue;
    }
    if (outcome.finish_reason == shardlm::v1::FINISH_REASON_ERROR) {
      Fail("chat", "generation failed: " + outcome.error);
      ++failures;
      continue;
    }
    if (args.usage) PrintUsage(stderr, outcome);
    *history.add_messages() = *user;
    shardlm::v1::ChatMessage* assistant = history.add_messages();
    assistant->set_role("assistant");
    assistant->set_content(outcome.text);
  }
  return failures == 0 ? 0 : 1;
}

}  // namespace

RunFn AddChatCommand(CLI::App& app) {
  auto args = std::make_shared<ChatArgs>();
  app.add_option("--server", args->server, "Coordinator address HOST:PORT")->required();
  app.add_option("--system", args->system, "A system message that starts the conversation");
  app.add_option("--max-new-tokens", args->max_new_tokens, "Tokens per answer at most")
      ->default_val(512);
  app.add_flag("--ignore-eos", args->sampling.ignore_eos,
               "Do not stop at an end-of-generation token");
  app.add_option("--chat-template", args->sampling.chat_template,
                 "Override the model's chat template: chatml, llama3, llama2, mistral, gemma, "
                 "glm4");
  app.add_flag("--usage", args->usage, "Print token counts and latencies of each answer to stderr");
  AddSamplingOptions(app, args->sampling);
  AddClientSecurityOptions(app, args->security);
  return [args]() -> int { return RunChat(*args); };
}

}  // namespace shardlm::cli
