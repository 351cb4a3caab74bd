#include "cli/client_common.h"

#include <unistd.h>

#include <atomic>
#include <random>

#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "cli/commands.h"
#include "coordinator/auth.h"

namespace shardlm::cli {

void AddClientSecurityOptions(CLI::App& app, ClientSecurityFlags& f) {
  app.add_option("--tls-ca", f.tls_ca,
                 "PEM CA certificates: connect over TLS, trusting the server certificates they "
                 "signed");
  app.add_option("--tls-cert", f.tls_cert,
                 "PEM client certificate for a server that requires one (mTLS; with --tls-key)");
  app.add_option("--tls-key", f.tls_key, "PEM private key of --tls-cert");
  app.add_option("--auth-token-file", f.auth_token_file,
                 "File holding the server's bearer token (one trailing newline ignored), sent "
                 "as 'authorization: Bearer TOKEN' on every call");
}

absl::StatusOr<std::shared_ptr<grpc::Channel>> MakeChannel(const std::string& server,
                                                           const ClientSecurityFlags& security) {
  absl::StatusOr<coordinator::ClientSecurity> loaded = coordinator::LoadClientSecurity(
      security.tls_ca, security.tls_cert, security.tls_key, security.auth_token_file);
  if (!loaded.ok()) return loaded.status();
  grpc::ChannelArguments args;
  args.SetMaxReceiveMessageSize(64 << 20);
  // Long generations may stream nothing for a while (queued behind others): keep the
  // connection alive without tripping servers' ping limits.
  args.SetInt(GRPC_ARG_KEEPALIVE_TIME_MS, 60000);
  // Scripts poll a server that is still starting: retry the connection often, not after minutes.
  args.SetInt(GRPC_ARG_INITIAL_RECONNECT_BACKOFF_MS, 250);
  args.SetInt(GRPC_ARG_MAX_RECONNECT_BACKOFF_MS, 2000);
  return coordinator::CreateClientChannel(server, *loaded, args);
}

std::string StatusCodeName(grpc::StatusCode code) {
  switch (code) {
    case grpc::StatusCode::OK: return "OK";
    case grpc::StatusCode::CANCELLED: return "CANCELLED";
    case grpc::StatusCode::UNKNOWN: return "UNKNOWN";
    case grpc::StatusCode::INVALID_ARGUMENT: return "INVALID_ARGUMENT";
    case grpc::StatusCode::DEADLINE_EXCEEDED: return "DEADLINE_EXCEEDED";
    case grpc::StatusCode::NOT_FOUND: return "NOT_FOUND";
    case grpc::StatusCode::ALREADY_EXISTS: return "ALREADY_EXISTS";
    case grpc::StatusCode::PERMISSION_DENIED: return "PERMISSION_DENIED";
    case grpc::StatusCode::UNAUTHENTICATED: return "UNAUTHENTICATED";
    case grpc::StatusCode::RESOURCE_EXHAUSTED: return "RESOURCE_EXHAUSTED";
    case grpc::StatusCode::FAILED_PRECONDITION: return "FAILED_PRECONDITION";
    case grpc::StatusCode::ABORTED: return "ABORTED";
    case grpc::StatusCode::OUT_OF_RANGE: return "OUT_OF_RANGE";
    case grpc::StatusCode::UNIMPLEMENTED: return "UNIMPLEMENTED";
    case grpc::StatusCode::INTERNAL: return "INTERNAL";
    case grpc::StatusCode::UNAVAILABLE: return "UNAVAILABLE";
    case grpc::StatusCode::DATA_LOSS: return "DATA_LOSS";
    default: return absl::StrCat("CODE_", static_cast<int>(code));
  }
}

int FailRpc(const std::string& command, const grpc::Status& status) {
  return Fail(command, StatusCodeName(status.error_code()) + ": " + status.error_message());
}

std::string FinishReasonName(shardlm::v1::FinishReason reason) {
  switch (reason) {
    case shardlm::v1::FINISH_REASON_LENGTH: return "length";
    case shardlm::v1::FINISH_REASON_STOP: return "stop";
    case shardlm::v1::FINISH_REASON_EOS: return "eos";
    case shardlm::v1::FINISH_REASON_CANCELLED: return "cancelled";
    case shardlm::v1::FINISH_REASON_ERROR: return "error";
    default: return "";
  }
}

std::string NewRequestId(const std::string& prefix) {
  static const uint32_t salt = std::random_device{}();
  static std::atomic<uint64_t> counter{0};
  return absl::StrCat(prefix, "-", ::getpid(), "-", absl::Hex(salt), "-", counter.fetch_add(1));
}

void AddSamplingOptions(CLI::App& app, SamplingFlags& f) {
  auto& o = f.options;
  o.push_back(app.add_option("--temperature", f.temperature,
                             "Sampling temperature >= 0 (0: greedy; generate defaults to 0, chat to the server's 1)"));
  o.push_back(app.add_option("--top-k", f.top_k, "Keep the K most likely tokens (0: off)"));
  o.push_back(app.add_option("--top-p", f.top_p, "Nucleus sampling mass in (0, 1]"));
  o.push_back(app.add_option("--min-p", f.min_p, "Drop tokens below min_p x the top probability"));
  o.push_back(app.add_option("--repetition-penalty", f.repetition_penalty,
                             "In [0.01, 100]; 1: off (HF: prompt and generated ids)"));
  o.push_back(app.add_option("--presence-penalty", f.presence_penalty,
                             "In [-2, 2] (OpenAI: generated ids)"));
  o.push_back(app.add_option("--frequency-penalty", f.frequency_penalty,
                             "In [-2, 2] (OpenAI: generated ids)"));
  o.push_back(app.add_option("--seed", f.seed, "Sampling seed (same seed, same tokens)"));
  o.push_back(app.add_option("--stop", f.stop, "Stop string (repeatable; not in the output)")
                  ->allow_extra_args(false));
  o.push_back(app.add_option("--logprobs", f.logprobs,
                             "Print the chosen token's and the top N logprobs (1..20) to stderr"));
  o.push_back(app.add_option("--timeout-ms", f.timeout_ms,
                             "Deadline of each request in milliseconds (0: none)"));
}

void ApplySamplingFlags(const SamplingFlags& f, shardlm::v1::GenerateRequest& request) {
  auto given = [&](const char* name) {
    for (CLI::Option* o : f.options) {
      if (o->check_name(name)) return o->count() > 0;
    }
    return false;
  };
  shardlm::v1::SamplingParams* s = request.mutable_sampling();
  if (given("--temperature")) s->set_temperature(f.temperature);
  if (given("--top-k")) s->set_top_k(f.top_k);
  if (given("--top-p")) s->set_top_p(f.top_p);
  if (given("--min-p")) s->set_min_p(f.min_p);
  if (given("--repetition-penalty")) s->set_repetition_penalty(f.repetition_penalty);
  if (given("--presence-penalty")) s->set_presence_penalty(f.presence_penalty);
  if (given("--frequency-penalty")) s->set_frequency_penalty(f.frequency_penalty);
  if (given("--seed")) s->set_seed(f.seed);
  for (const std::string& stop : f.stop) request.add_stop(stop);
  request.set_ignore_eos(f.ignore_eos);
  request.set_logprobs(f.logprobs);
  if (!f.chat_template.empty()) request.set_chat_template(f.chat_template);
}

StreamOutcome StreamGenerate(
    shardlm::v1::Generation::Stub& stub, const shardlm::v1::GenerateRequest& request,
    int64_t timeout_ms,
    const std::function<void(const shardlm::v1::GenerateResponse&)>& on_message) {
  StreamOutcome out;
  grpc::ClientContext context;
  if (timeout_ms > 0) {
    context.set_deadline(std::chrono::system_clock::now() + std::chrono::milliseconds(timeout_ms));
  }
  const Clock::time_point start = Clock::now();
  auto ms_since_start = [&] {
    return std::chrono::duration<double, std::milli>(Clock::now() - start).count();
  };
  std::unique_ptr<grpc::ClientReader<shardlm::v1::GenerateResponse>> reader =
      stub.Generate(&context, request);
  shardlm::v1::GenerateResponse message;
  while (reader->Read(&message)) {
    if (out.client_ttft_ms < 0 && message.token_ids_size() > 0) {
      out.client_ttft_ms = ms_since_start();
    }
    out.ids.insert(out.ids.end(), message.token_ids().begin(), message.token_ids().end());
    out.text += message.text();
    if (message.finish_reason() != shardlm::v1::FINISH_REASON_UNSPECIFIED) {
      out.finish_reason = message.finish_reason();
      out.error = message.error();
    }
    if (message.has_usage()) {
      out.usage = message.usage();
      out.has_usage = true;
    }
    if (on_message) on_message(message);
  }
  out.status = reader->Finish();
  out.client_total_ms = ms_since_start();
  return out;
}

void PrintLogprobs(std::FILE* out, const shardlm::v1::GenerateResponse& message) {
  for (const shardlm::v1::Logprobs& lp : message.logprobs()) {
    std::fprintf(out, "logprob: id=%d %.4f %s |", lp.chosen().id(), lp.chosen().logprob(),
                 absl::CEscape(lp.chosen().text()).c_str());
    for (const shardlm::v1::TokenLogprob& t : lp.top()) {
      std::fprintf(out, " %d:%.4f:%s", t.id(), t.logprob(), absl::CEscape(t.text()).c_str());
    }
    std::fprintf(out, "\n");
  }
}

void PrintUsage(std::FILE* out, const StreamOutcome& o) {
  const shardlm::v1::Usage& u = o.usage;
  std::fprintf(out,
               "usage: prompt_tokens=%d completion_tokens=%d finish=%s queue_ms=%.1f "
               "ttft_ms=%.1f total_ms=%.1f (client: ttft_ms=%.1f total_ms=%.1f)\n",
               u.prompt_tokens(), u.completion_tokens(),
               FinishReasonName(o.finish_reason).c_str(), u.queue_ms(), u.ttft_ms(),
               u.total_ms(), o.client_ttft_ms, o.client_total_ms);
}

}  // namespace shardlm::cli
