#include "coordinator/validation.h"

#include <cmath>
#include <utility>

#include "absl/strings/str_cat.h"
#include "base/status_macros.h"
#include "tokenizer/unicode.h"

namespace shardlm::coordinator {

namespace {

absl::Status Invalid(absl::string_view field, absl::string_view message) {
  return absl::InvalidArgumentError(absl::StrCat(field, ": ", message));
}

// A float field: finite and inside the range `ok` accepts, else "expected <want>, got <x>".
absl::Status CheckFloat(absl::string_view field, float value, bool ok, absl::string_view want) {
  if (std::isfinite(value) && ok) return absl::OkStatus();
  return Invalid(field, absl::StrCat("expected ", want, ", got ", value));
}

absl::Status CheckUtf8(absl::string_view field, std::string_view text) {
  const size_t bad = unicode::FindInvalidUtf8(text);
  if (bad == unicode::kValid) return absl::OkStatus();
  return Invalid(field, absl::StrCat("invalid UTF-8 at byte ", bad));
}

absl::Status CheckIds(absl::string_view field, const google::protobuf::RepeatedField<int32_t>& ids,
                      int64_t vocab) {
  for (int i = 0; i < ids.size(); ++i) {
    if (ids[i] < 0 || ids[i] >= vocab) {
      return absl::InvalidArgumentError(absl::StrCat(field, "[", i, "]: ", ids[i],
                                                     " is out of range [0, ", vocab, ")"));
    }
  }
  return absl::OkStatus();
}

absl::Status NeedTokenizer(const ModelContext& model, absl::string_view field) {
  if (model.tokenizer != nullptr) return absl::OkStatus();
  return absl::FailedPreconditionError(
      absl::StrCat(field, ": the model ", model.path, " has no tokenizer (",
                   model.tokenizer_status.message(), "); send token_ids instead"));
}

}  // namespace

absl::Status ValidateSamplingParams(const v1::SamplingParams& s) {
  if (s.has_temperature()) {
    SHARDLM_RETURN_IF_ERROR(CheckFloat(
        "sampling.temperature", s.temperature(),
        s.temperature() >= 0 && s.temperature() <= kMaxTemperature,
        absl::StrCat("a value in [0, ", kMaxTemperature, "] (0 = greedy)")));
  }
  if (s.has_top_k() && s.top_k() < 0) {
    return Invalid("sampling.top_k", absl::StrCat("expected >= 0 (0 = off), got ", s.top_k()));
  }
  if (s.has_top_p()) {
    SHARDLM_RETURN_IF_ERROR(CheckFloat("sampling.top_p", s.top_p(),
                                       s.top_p() > 0 && s.top_p() <= 1, "a value in (0, 1]"));
  }
  if (s.has_min_p()) {
    SHARDLM_RETURN_IF_ERROR(CheckFloat("sampling.min_p", s.min_p(),
                                       s.min_p() >= 0 && s.min_p() <= 1, "a value in [0, 1]"));
  }
  if (s.has_repetition_penalty()) {
    // Bounded on both sides so that dividing or multiplying a logit by it stays finite.
    SHARDLM_RETURN_IF_ERROR(CheckFloat(
        "sampling.repetition_penalty", s.repetition_penalty(),
        s.repetition_penalty() >= kMinRepetitionPenalty &&
            s.repetition_penalty() <= kMaxRepetitionPenalty,
        absl::StrCat("a value in [", kMinRepetitionPenalty, ", ", kMaxRepetitionPenalty, "]")));
  }
  const std::string penalty_range = absl::StrCat("a value in [", -kMaxAbsPenalty, ", ",
                                                 kMaxAbsPenalty, "]");
  if (s.has_presence_penalty()) {
    SHARDLM_RETURN_IF_ERROR(CheckFloat("sampling.presence_penalty", s.presence_penalty(),
                                       std::abs(s.presence_penalty()) <= kMaxAbsPenalty,
                                       penalty_range));
  }
  if (s.has_frequency_penalty()) {
    SHARDLM_RETURN_IF_ERROR(CheckFloat("sampling.frequency_penalty", s.frequency_penalty(),
                                       std::abs(s.frequency_penalty()) <= kMaxAbsPenalty,
                                       penalty_range));
  }
  return absl::OkStatus();
}

absl::StatusOr<std::vector<int32_t>> TokenizeText(const ModelContext& model, std::string_view text,
                                                  bool add_special, absl::string_view field) {
  SHARDLM_RETURN_IF_ERROR(CheckUtf8(field, text));
  SHARDLM_RETURN_IF_ERROR(NeedTokenizer(model, field));
  absl::StatusOr<std::vector<int32_t>> ids =
      model.tokenizer->EncodeChecked(text, add_special, /*parse_special=*/true);
  if (!ids.ok()) return Invalid(field, ids.status().message());
  return ids;
}

absl::StatusOr<std::vector<int32_t>> TokenizeChat(const ModelContext& model,
                                                  const v1::ChatMessages& chat,
                                                  const std::string& template_name) {
  if (chat.messages().empty()) return Invalid("chat.messages", "empty");
  std::vector<ChatMessage> messages;
  for (int i = 0; i < chat.messages_size(); ++i) {
    const v1::ChatMessage& m = chat.messages(i);
    SHARDLM_RETURN_IF_ERROR(CheckUtf8(absl::StrCat("chat.messages[", i, "].role"), m.role()));
    SHARDLM_RETURN_IF_ERROR(CheckUtf8(absl::StrCat("chat.messages[", i, "].content"), m.content()));
    messages.push_back({m.role(), m.content()});
  }
  SHARDLM_RETURN_IF_ERROR(NeedTokenizer(model, "chat"));
  absl::StatusOr<ChatTemplate> chat_template = model.ChatTemplateFor(template_name);
  if (!chat_template.ok()) {
    return Invalid(template_name.empty() ? "chat" : "chat_template",
                   chat_template.status().message());
  }
  absl::StatusOr<RenderedChat> rendered = chat_template->RenderChat(messages);
  if (!rendered.ok()) return Invalid("chat", rendered.status().message());
  // Templates that write the BOS text themselves get no second BOS from the tokenizer.
  const bool add_special = !chat_template->renders_bos();
  if (model.chat_parse_special) return TokenizeText(model, rendered->text, add_special, "chat");
  // Only the template's markup may hold special tokens. The text around them is still encoded
  // as one fragment across markup and content, as a plain encode of the rendered text would.
  return model.tokenizer->EncodeWithSpecialSpans(rendered->text, add_special, rendered->markup);
}

absl::StatusOr<PreparedRequest> PrepareGenerateRequest(const v1::GenerateRequest& request,
                                                       const ModelContext& model) {
  PreparedRequest out;
  if (request.request_id().size() > kMaxRequestIdBytes) {
    return Invalid("request_id", absl::StrCat("longer than ", kMaxRequestIdBytes, " bytes"));
  }
  SHARDLM_RETURN_IF_ERROR(CheckUtf8("request_id", request.request_id()));
  out.request_id = request.request_id();
  SHARDLM_RETURN_IF_ERROR(ValidateSamplingParams(request.sampling()));
  out.sampling = request.sampling();
  if (request.max_new_tokens() <= 0) {
    return Invalid("max_new_tokens", absl::StrCat("expected > 0, got ", request.max_new_tokens()));
  }
  out.max_new_tokens = request.max_new_tokens();
  if (request.logprobs() < 0 || request.logprobs() > kMaxLogprobs) {
    return Invalid("logprobs",
                   absl::StrCat("expected a value in [0, ", kMaxLogprobs, "], got ",
                                request.logprobs()));
  }
  out.logprobs = request.logprobs();
  for (int i = 0; i < request.stop_size(); ++i) {
    const std::string field = absl::StrCat("stop[", i, "]");
    if (request.stop(i).empty()) return Invalid(field, "empty");
    SHARDLM_RETURN_IF_ERROR(CheckUtf8(field, request.stop(i)));
    out.stop.push_back(request.stop(i));
  }
  if (!out.stop.empty()) SHARDLM_RETURN_IF_ERROR(NeedTokenizer(model, "stop"));
  SHARDLM_RETURN_IF_ERROR(CheckIds("stop_token_ids", request.stop_token_ids(),
                                   model.config.vocab_size));
  out.stop_token_ids.assign(request.stop_token_ids().begin(), request.stop_token_ids().end());
  out.ignore_eos = request.ignore_eos();
  if (!request.chat_template().empty()) {
    absl::StatusOr<ChatTemplate> t = ChatTemplate::FromName(request.chat_template());
    if (!t.ok()) return Invalid("chat_template", t.status().message());
  }

  switch (request.prompt_case()) {
    case v1::GenerateRequest::kText: {
      if (request.text().empty()) return Invalid("text", "empty");
      SHARDLM_ASSIGN_OR_RETURN(out.prompt, TokenizeText(model, request.text(), true, "text"));
      if (out.prompt.empty()) return Invalid("text", "tokenizes to no ids");
      break;
    }
    case v1::GenerateRequest::kTokenIds: {
      if (request.token_ids().ids().empty()) return Invalid("token_ids.ids", "empty");
      SHARDLM_RETURN_IF_ERROR(
          CheckIds("token_ids.ids", request.token_ids().ids(), model.config.vocab_size));
      out.prompt.assign(request.token_ids().ids().begin(), request.token_ids().ids().end());
      break;
    }
    case v1::GenerateRequest::kChat: {
      SHARDLM_ASSIGN_OR_RETURN(out.prompt,
                               TokenizeChat(model, request.chat(), request.chat_template()));
      if (out.prompt.empty()) return Invalid("chat", "renders to no ids");
      break;
    }
    case v1::GenerateRequest::PROMPT_NOT_SET:
      return Invalid("prompt", "not set: expected one of text, token_ids, chat");
  }
  // Ids from the tokenizer are checked too: its vocabulary may be larger than the model's.
  for (size_t i = 0; i < out.prompt.size(); ++i) {
    if (out.prompt[i] < 0 || out.prompt[i] >= model.config.vocab_size) {
      return Invalid("prompt", absl::StrCat("token ", i, " has id ", out.prompt[i],
                                            ", outside the model's vocabulary [0, ",
                                            model.config.vocab_size, ")"));
    }
  }
  const int64_t total = static_cast<int64_t>(out.prompt.size()) + out.max_new_tokens;
  if (total > model.context_length) {
    return Invalid("max_new_tokens",
                   absl::StrCat("prompt (", out.prompt.size(), " tokens) + max_new_tokens (",
                                out.max_new_tokens, ") = ", total,
                                " exceeds the context length ", model.context_length));
  }
  return out;
}

}  // namespace shardlm::coordinator
