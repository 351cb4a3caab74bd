// Client calls the end-to-end tests share: the coordinator's health, one greedy Generate by
// token ids collected whole, and the same offline (`shardlm generate`) to compare with.
#pragma once

#include <grpcpp/grpcpp.h>

#include <chrono>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "health.grpc.pb.h"
#include "shardlm/v1/generation.grpc.pb.h"
#include "tests/e2e/child_process.h"

namespace shardlm::e2e {

using Health = grpc::health::v1::HealthCheckResponse;

// The overall health status; UNKNOWN when the call fails.
inline Health::ServingStatus HealthStatus(grpc::health::v1::Health::Stub& health) {
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(2));
  grpc::health::v1::HealthCheckRequest req;
  Health resp;
  if (!health.Check(&ctx, req, &resp).ok()) return Health::UNKNOWN;
  return resp.status();
}

// Polls every 100 ms until the health is `want`; false after `timeout`.
inline bool WaitHealth(grpc::health::v1::Health::Stub& health, Health::ServingStatus want,
                       std::chrono::seconds timeout) {
  const auto end = std::chrono::steady_clock::now() + timeout;
  while (std::chrono::steady_clock::now() < end) {
    if (HealthStatus(health) == want) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  return false;
}

struct Outcome {
  grpc::Status status;
  std::vector<int32_t> ids;
  v1::FinishReason finish = v1::FINISH_REASON_UNSPECIFIED;
  std::string error;
};

// `req` streamed and read to its end.
inline Outcome Generate(v1::Generation::Stub& stub, const v1::GenerateRequest& req,
                        std::chrono::seconds deadline) {
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + deadline);
  auto reader = stub.Generate(&ctx, req);
  Outcome out;
  v1::GenerateResponse resp;
  while (reader->Read(&resp)) {
    out.ids.insert(out.ids.end(), resp.token_ids().begin(), resp.token_ids().end());
    if (resp.finish_reason() != v1::FINISH_REASON_UNSPECIFIED) out.finish = resp.finish_reason();
    if (!resp.error().empty()) out.error = resp.error();
  }
  out.status = reader->Finish();
  return out;
}

// A greedy request for `max_new` tokens after `prompt` (EOS ignored), read to its end.
inline Outcome GenerateIds(v1::Generation::Stub& stub, const std::vector<int32_t>& prompt,
                           int max_new, std::chrono::seconds deadline) {
  v1::GenerateRequest req;
  for (int32_t id : prompt) req.mutable_token_ids()->add_ids(id);
  req.set_max_new_tokens(max_new);
  req.set_ignore_eos(true);
  req.mutable_sampling()->set_temperature(0.0f);
  return Generate(stub, req, deadline);
}

// The ids `shardlm generate` (binary `shardlm`) prints for `max_new` tokens after `prompt` on
// one rank, EOS ignored: greedy unless `flags` say otherwise (empty when it failed).
inline std::vector<int32_t> OfflineIds(const std::string& shardlm, const std::string& model,
                                       const std::vector<int32_t>& prompt, int max_new,
                                       const std::string& flags = "") {
  const std::string out = Shell(shardlm + " generate --model " + model + " --prompt-ids " +
                                absl::StrJoin(prompt, ",") + " --max-new-tokens " +
                                std::to_string(max_new) + " --ignore-eos --threads 1 " + flags +
                                " 2>/dev/null");
  std::vector<int32_t> ids;
  std::vector<std::string> lines = absl::StrSplit(out, '\n', absl::SkipEmpty());
  if (lines.empty()) return ids;
  for (absl::string_view v : absl::StrSplit(lines.back(), ',')) {
    ids.push_back(std::stoi(std::string(v)));
  }
  return ids;
}

}  // namespace shardlm::e2e
