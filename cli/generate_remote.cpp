// `shardlm generate --server ADDR`: one streamed request to a running coordinator.
#include <cstdio>
#include <limits>
#include <string>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "cli/client_common.h"
#include "cli/commands.h"

namespace shardlm::cli {

int RunRemoteGenerate(const std::string& server, const ClientSecurityFlags& security,
                      const std::string& prompt_ids, const std::string& prompt,
                      const std::string& chat, int64_t max_new_tokens, const SamplingFlags& flags) {
  const int given = !prompt_ids.empty() + !prompt.empty() + !chat.empty();
  if (given != 1) {
    return Fail("generate",
                absl::StrCat("expected exactly one of --prompt-ids, --prompt, --chat; got ", given));
  }
  if (max_new_tokens > std::numeric_limits<int32_t>::max()) {
    return Fail("generate", absl::StrCat("--max-new-tokens: ", max_new_tokens, " is too large"));
  }
  shardlm::v1::GenerateRequest request;
  request.set_request_id(NewRequestId("cli"));
  if (!prompt_ids.empty()) {
    auto ids = ParseIds(prompt_ids, "--prompt-ids");
    if (!ids.ok()) return Fail("generate", std::string(ids.status().message()));
    request.mutable_token_ids()->mutable_ids()->Add(ids->begin(), ids->end());
  } else if (!prompt.empty()) {
    request.set_text(prompt);
  } else {
    shardlm::v1::ChatMessage* m = request.mutable_chat()->add_messages();
    m->set_role("user");
    m->set_content(chat);
  }
  request.set_max_new_tokens(static_cast<int32_t>(max_new_tokens));
  ApplySamplingFlags(flags, request);
  // `shardlm generate` is greedy unless told otherwise, locally and on a server alike (the
  // server's own default temperature is 1).
  if (!request.sampling().has_temperature()) request.mutable_sampling()->set_temperature(0);

  auto channel = MakeChannel(server, security);
  if (!channel.ok()) return Fail("generate", std::string(channel.status().message()));
  auto stub = shardlm::v1::Generation::NewStub(*channel);
  StreamOutcome outcome = StreamGenerate(
      *stub, request, flags.timeout_ms, [&](const shardlm::v1::GenerateResponse& message) {
        if (!message.text().empty()) {
          std::fputs(message.text().c_str(), stdout);
          std::fflush(stdout);
        }
        if (flags.logprobs > 0) PrintLogprobs(stderr, message);
      });
  // End the streamed text's line even on failure, so the error line stands alone.
  if (!outcome.text.empty() || (outcome.status.ok() && prompt_ids.empty())) std::printf("\n");
  std::fflush(stdout);
  if (!outcome.status.ok()) return FailRpc("generate", outcome.status);
  PrintUsage(stderr, outcome);
  if (outcome.finish_reason == shardlm::v1::FINISH_REASON_ERROR) {
    return Fail("generate", "generation failed: " + outcome.error);
  }
  if (!prompt_ids.empty()) std::printf("%s\n", absl::StrJoin(outcome.ids, ",").c_str());
  return 0;
}

}  // namespace shardlm::cli
