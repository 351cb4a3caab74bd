// Shared pieces of the commands that talk to a running coordinator over gRPC (generate --server,
// chat, bench, info): the channel, sampling flags, one streamed Generate call and error lines.
#pragma once

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include <grpcpp/grpcpp.h>

#include "CLI/CLI.hpp"
#include "absl/status/statusor.h"
#include "shardlm/v1/generation.grpc.pb.h"

namespace shardlm::cli {

using Clock = std::chrono::steady_clock;

// How a command reaches a secured coordinator (README "Security"): paths, "" for unset.
struct ClientSecurityFlags {
  std::string tls_ca;           // TLS, trusting this CA
  std::string tls_cert;         // with tls_key: a client certificate (mTLS)
  std::string tls_key;
  std::string auth_token_file;  // "authorization: Bearer TOKEN" on every call
};
// Registers --tls-ca --tls-cert --tls-key --auth-token-file.
void AddClientSecurityOptions(CLI::App& app, ClientSecurityFlags& flags);

// A channel to `server` ("host:port", "dns:///host:port", "unix:/path"): TLS when --tls-ca or
// --tls-cert is given, plaintext otherwise, the token on every call. An unreadable or invalid
// file is an error naming its flag.
absl::StatusOr<std::shared_ptr<grpc::Channel>> MakeChannel(const std::string& server,
                                                           const ClientSecurityFlags& security);

// "UNAVAILABLE", "INVALID_ARGUMENT", ... for a status code.
std::string StatusCodeName(grpc::StatusCode code);

// Prints "shardlm <command>: error: <CODE>: <message>" on stderr and returns 1.
int FailRpc(const std::string& command, const grpc::Status& status);

// "length", "stop", "eos", "cancelled", "error" ("" while unfinished).
std::string FinishReasonName(shardlm::v1::FinishReason reason);

// A request id unique among this process's requests and unlikely to collide with other clients':
// "<prefix>-<pid>-<random>-<counter>".
std::string NewRequestId(const std::string& prefix);

// Sampling and stopping flags shared by `generate` (with --server, and offline but for --stop,
// --logprobs and --timeout-ms) and `chat`. Unset flags leave the proto field unset, so the
// server (or the offline engine) applies its defaults.
struct SamplingFlags {
  float temperature = 1, top_p = 1, min_p = 0, repetition_penalty = 1;
  float presence_penalty = 0, frequency_penalty = 0;
  int32_t top_k = 0;
  uint64_t seed = 0;
  std::vector<std::string> stop;
  bool ignore_eos = false;
  int32_t logprobs = 0;
  int64_t timeout_ms = 0;
  std::string chat_template;

  // The options that were registered (to tell which were given).
  std::vector<CLI::Option*> options;
};
// Registers --temperature --top-k --top-p --min-p --repetition-penalty --presence-penalty
// --frequency-penalty --seed --stop --logprobs --timeout-ms. --ignore-eos and --chat-template
// are registered by the caller (the offline path of generate shares them).
void AddSamplingOptions(CLI::App& app, SamplingFlags& flags);
// Copies the given flags into `request` (sampling, stop, ignore_eos, logprobs, chat_template).
void ApplySamplingFlags(const SamplingFlags& flags, shardlm::v1::GenerateRequest& request);

// The outcome of one streamed Generate call.
struct StreamOutcome {
  grpc::Status status;
  std::vector<int32_t> ids;
  std::string text;
  shardlm::v1::FinishReason finish_reason = shardlm::v1::FINISH_REASON_UNSPECIFIED;
  shardlm::v1::Usage usage;
  bool has_usage = false;
  std::string error;          // with FINISH_REASON_ERROR
  double client_ttft_ms = -1; // send to the first message carrying ids, as the client saw it
  double client_total_ms = 0;
};

// Runs `request` on `stub`, calling `on_message` for every streamed message as it arrives.
// timeout_ms > 0 sets a deadline.
StreamOutcome StreamGenerate(
    shardlm::v1::Generation::Stub& stub, const shardlm::v1::GenerateRequest& request,
    int64_t timeout_ms,
    const std::function<void(const shardlm::v1::GenerateResponse&)>& on_message);

// Writes the top-n logprobs of each id in `message` to `out`, one line per token.
void PrintLogprobs(std::FILE* out, const shardlm::v1::GenerateResponse& message);

// "prompt_tokens=.. completion_tokens=.. finish=.. ttft_ms=.. total_ms=.." to `out`.
void PrintUsage(std::FILE* out, const StreamOutcome& outcome);

}  // namespace shardlm::cli

namespace shardlm::cli {

// `shardlm generate --server`: one request (exactly one of prompt_ids / prompt / chat non-empty),
// text streamed to stdout; with prompt_ids the last stdout line is the generated ids.
int RunRemoteGenerate(const std::string& server, const ClientSecurityFlags& security,
                      const std::string& prompt_ids, const std::string& prompt,
                      const std::string& chat, int64_t max_new_tokens, const SamplingFlags& flags);

}  // namespace shardlm::cli
