// The OpenAI-compatible API as pure functions (no sockets): a /v1/completions or
// /v1/chat/completions JSON body -> one v1::GenerateRequest per sample, the shared gRPC validator
// (PrepareGenerateRequest) with its field names turned into OpenAI's, and the response JSON (whole
// or as SSE chunks) from v1::GenerateResponse messages. http_server.cpp does the I/O.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "coordinator/model_context.h"
#include "coordinator/validation.h"
#include "nlohmann/json.hpp"
#include "shardlm/v1/generation.pb.h"

namespace shardlm::coordinator::openai {

enum class Api { kCompletions, kChat };

// Samples of one request at most (`n`): each is a request of its own in the engine.
inline constexpr int kMaxSamples = 128;

// An HTTP error with OpenAI's body {"error": {"message", "type", "param", "code"}}.
struct ApiError {
  int status = 400;
  std::string message;
  std::string param;  // the OpenAI field ("temperature", "messages[1].content"); "" = null
};
nlohmann::json ErrorBody(const ApiError& error);

// A status whose message may start with a field ("temperature: expected ..."): the HTTP status
// for its code (INVALID_ARGUMENT / FAILED_PRECONDITION 400, NOT_FOUND 404, UNAUTHENTICATED 401,
// RESOURCE_EXHAUSTED 429, UNAVAILABLE 503, others 500) and the field as param (a leading word
// without spaces before ": ").
ApiError ToApiError(const absl::Status& status);

struct CompletionRequest {
  Api api = Api::kCompletions;
  std::string model;  // "" when not sent
  // One per sample (n), the same prompt; with a seed, sample i has seed + i. max_new_tokens is 0
  // when neither max_tokens nor max_completion_tokens was sent: the rest of the context
  // (PrepareSamples).
  std::vector<v1::GenerateRequest> samples;
  std::string max_tokens_field;  // the field that gave max_new_tokens, "" when unset
  bool stream = false;
  bool include_usage = false;  // stream_options.include_usage
  // Alternatives to report per token; -1: no logprobs. Completions: `logprobs`; chat:
  // `top_logprobs` (0 when absent) once `logprobs` is true.
  int32_t logprobs = -1;
};

// The body's fields, type-checked; unknown fields are ignored. Errors are INVALID_ARGUMENT
// naming the OpenAI field ("max_tokens: expected an integer, got string").
absl::StatusOr<CompletionRequest> ParseCompletionRequest(Api api, const nlohmann::json& body);

// Each sample through PrepareGenerateRequest, the validator the gRPC API uses. Its errors name
// the OpenAI fields ("sampling.temperature" -> "temperature", "max_new_tokens" -> "max_tokens",
// "text" / "token_ids.ids" -> "prompt", "chat" -> "messages", ...).
absl::StatusOr<std::vector<PreparedRequest>> PrepareSamples(const CompletionRequest& request,
                                                            const ModelContext& model);

// A validator error (generation.proto's field names) with the OpenAI field instead, for `api`;
// max_new_tokens becomes `max_tokens_field` ("" : the prompt's field).
absl::Status RenameFields(const absl::Status& status, Api api,
                          const std::string& max_tokens_field = "");

// An Engine::Submit refusal as the API reports it: a prompt that can never fit the KV cache is a
// 400 on prompt/messages; a full queue 429; no workers or shutting down 503.
ApiError SubmitError(const absl::Status& status, const CompletionRequest& request);

// The messages of a chat body (shared with /tokenize): role and content strings, or content as
// a list of {"type": "text", "text"} parts, joined.
absl::StatusOr<v1::ChatMessages> ParseMessages(const nlohmann::json& messages);

// The model name clients may send: the --model path as given, or its last component.
bool ModelNameMatches(absl::string_view name, const std::string& model_path);

// "stop" (stop strings, stop tokens, EOS), "length", "abort" (cancelled), "error"; null while
// unfinished.
nlohmann::json FinishReasonJson(v1::FinishReason reason);

// Builds the response of one request from its samples' messages: SSE chunks as they come, or the
// whole body at the end.
class ResponseBuilder {
 public:
  // `id`: "cmpl-..." or "chatcmpl-..."; `created`: unix seconds; `model`: the name to report.
  ResponseBuilder(const CompletionRequest& request, std::string id, int64_t created,
                  std::string model);

  // Streaming: the chunk for `message` of sample `index`, or null when it carries nothing to
  // send (no text, logprobs or finish reason, and its role was already sent).
  nlohmann::json Chunk(int index, const v1::GenerateResponse& message);
  // stream_options.include_usage: the last chunk, with empty choices and the usage.
  nlohmann::json UsageChunk() const;

  // Whole responses: accumulates `message` of sample `index`.
  void Add(int index, const v1::GenerateResponse& message);
  nlohmann::json Response() const;

  // prompt tokens (once, the samples share the prompt), completion tokens (all samples), total.
  nlohmann::json Usage() const;

 private:
  struct Choice {
    std::string text;
    nlohmann::json logprobs;  // the API's logprobs object, accumulated
    v1::FinishReason finish = v1::FINISH_REASON_UNSPECIFIED;
    bool role_sent = false;
    int64_t text_offset = 0;  // completions' text_offset: characters before the next token
    int32_t prompt_tokens = 0;
    int32_t completion_tokens = 0;
    bool has_usage = false;
  };
  nlohmann::json Envelope(const char* object) const;
  // The logprobs object for the tokens of `message` (null when not requested), appended to
  // `choice`'s running state.
  nlohmann::json Logprobs(Choice& choice, const v1::GenerateResponse& message);
  void Record(Choice& choice, const v1::GenerateResponse& message);

  Api api_;
  int32_t logprobs_;
  bool include_usage_;
  std::string id_;
  int64_t created_;
  std::string model_;
  std::vector<Choice> choices_;
};

}  // namespace shardlm::coordinator::openai
