// Checks a GenerateRequest and turns its prompt into ids. Every error names the field, what was
// expected and what was found; codes: INVALID_ARGUMENT, or FAILED_PRECONDITION when the request
// needs something the model lacks (text prompts without a tokenizer).
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "coordinator/model_context.h"
#include "shardlm/v1/generation.pb.h"

namespace shardlm::coordinator {

// A request that passed validation, with its prompt as ids.
struct PreparedRequest {
  std::string request_id;  // as sent ("" = to be assigned)
  std::vector<int32_t> prompt;
  int32_t max_new_tokens = 0;
  v1::SamplingParams sampling;  // as sent: the workers apply the defaults of unset fields
  std::vector<std::string> stop;
  std::vector<int32_t> stop_token_ids;
  bool ignore_eos = false;
  int32_t logprobs = 0;
};

inline constexpr int32_t kMaxLogprobs = 20;
inline constexpr size_t kMaxRequestIdBytes = 256;
// Sampling bounds (stated in generation.proto too). With them, and finite logits (the worker
// fails a row that is not), the sampler's arithmetic stays finite: logprobs are reported at least
// kLogprobFloor (base/logprob.h), and the output processor fails a request whose worker sends a
// NaN or +inf logprob.
// sampling.temperature in [0, kMaxTemperature]: the draw divides logits by it in double, where
// any finite positive value is safe; above 100 the distribution is already flat for any logits
// a model produces, so larger values are more likely mistakes than intent.
inline constexpr float kMaxTemperature = 100.0f;
// sampling.repetition_penalty bounds: a logit divided or multiplied by it stays finite.
inline constexpr float kMinRepetitionPenalty = 0.01f;
inline constexpr float kMaxRepetitionPenalty = 100.0f;
// sampling.presence_penalty and frequency_penalty in [-2, 2] (OpenAI's range): the logit moves by
// at most 2 + 2 x (tokens generated), finite for any context length.
inline constexpr float kMaxAbsPenalty = 2.0f;

// Range checks of the sampling fields that are set ("sampling.top_p: ...").
absl::Status ValidateSamplingParams(const v1::SamplingParams& sampling);

// `text` tokenized (special-token text parsed; may give no ids); `field` names it in errors.
absl::StatusOr<std::vector<int32_t>> TokenizeText(const ModelContext& model, std::string_view text,
                                                  bool add_special, absl::string_view field);
// `chat` rendered with `template_name` (or the model's template) and tokenized; a template that
// writes BOS itself gets none from the tokenizer. Special-token text counts only in the
// template's markup, not in message contents, unless model.chat_parse_special.
absl::StatusOr<std::vector<int32_t>> TokenizeChat(const ModelContext& model,
                                                  const v1::ChatMessages& chat,
                                                  const std::string& template_name);

// Everything checkable without the scheduler: sampling, limits, stop conditions, the prompt and
// prompt + max_new_tokens against the context length.
absl::StatusOr<PreparedRequest> PrepareGenerateRequest(const v1::GenerateRequest& request,
                                                       const ModelContext& model);

}  // namespace shardlm::coordinator
