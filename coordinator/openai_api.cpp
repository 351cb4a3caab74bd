#include "coordinator/openai_api.h"

#include <cmath>
#include <limits>
#include <utility>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_replace.h"
#include "base/status_macros.h"

namespace shardlm::coordinator::openai {

using nlohmann::json;

namespace {

absl::Status Bad(absl::string_view field, absl::string_view message) {
  return absl::InvalidArgumentError(absl::StrCat(field, ": ", message));
}

// "got string", "got -3.5": what a wrong value was, briefly.
std::string Got(const json& value) {
  if (value.is_number() || value.is_boolean()) return absl::StrCat("got ", value.dump());
  return absl::StrCat("got ", value.type_name());
}

// The field when present and not null (OpenAI clients send null for "not given").
const json* Field(const json& body, const char* name) {
  auto it = body.find(name);
  if (it == body.end() || it->is_null()) return nullptr;
  return &*it;
}

// An integer value: JSON integers, or numbers with no fraction (5.0), within [lo, hi].
absl::StatusOr<int64_t> AsInteger(const json& v, absl::string_view field, int64_t lo, int64_t hi) {
  int64_t out = 0;
  if (v.is_number_unsigned()) {
    const uint64_t u = v.get<uint64_t>();
    if (u > static_cast<uint64_t>(hi)) return Bad(field, absl::StrCat("out of range, ", Got(v)));
    out = static_cast<int64_t>(u);
  } else if (v.is_number_integer()) {
    out = v.get<int64_t>();
  } else if (v.is_number_float()) {
    const double d = v.get<double>();
    if (d != std::floor(d) || std::abs(d) > 9.0e15) {
      return Bad(field, absl::StrCat("expected an integer, ", Got(v)));
    }
    out = static_cast<int64_t>(d);
  } else {
    return Bad(field, absl::StrCat("expected an integer, ", Got(v)));
  }
  if (out < lo || out > hi) return Bad(field, absl::StrCat("out of range, ", Got(v)));
  return out;
}

constexpr int64_t kInt32Min = std::numeric_limits<int32_t>::min();
constexpr int64_t kInt32Max = std::numeric_limits<int32_t>::max();

absl::StatusOr<std::optional<int64_t>> Integer(const json& body, const char* name,
                                               int64_t lo = kInt32Min, int64_t hi = kInt32Max) {
  const json* v = Field(body, name);
  if (v == nullptr) return std::nullopt;
  SHARDLM_ASSIGN_OR_RETURN(int64_t i, AsInteger(*v, name, lo, hi));
  return i;
}

absl::StatusOr<std::optional<float>> Number(const json& body, const char* name) {
  const json* v = Field(body, name);
  if (v == nullptr) return std::nullopt;
  if (!v->is_number()) return Bad(name, absl::StrCat("expected a number, ", Got(*v)));
  // Out of float's range becomes inf, which the validator refuses with the value.
  return static_cast<float>(v->get<double>());
}

absl::StatusOr<std::optional<bool>> Bool(const json& body, const char* name) {
  const json* v = Field(body, name);
  if (v == nullptr) return std::nullopt;
  if (!v->is_boolean()) return Bad(name, absl::StrCat("expected a boolean, ", Got(*v)));
  return v->get<bool>();
}

absl::StatusOr<v1::TokenIds> TokenIdList(const json& list, absl::string_view field) {
  v1::TokenIds ids;
  for (size_t i = 0; i < list.size(); ++i) {
    SHARDLM_ASSIGN_OR_RETURN(
        int64_t id, AsInteger(list[i], absl::StrCat(field, "[", i, "]"), kInt32Min, kInt32Max));
    ids.add_ids(static_cast<int32_t>(id));
  }
  return ids;
}

bool AllIntegers(const json& list) {
  for (const json& v : list) {
    if (!v.is_number()) return false;
  }
  return true;
}

// /v1/completions' prompt: a string, token ids, or a list of one of those.
absl::Status ParsePrompt(const json& body, v1::GenerateRequest* out) {
  const json* p = Field(body, "prompt");
  if (p == nullptr) return Bad("prompt", "required");
  if (p->is_string()) {
    out->set_text(p->get<std::string>());
    return absl::OkStatus();
  }
  if (!p->is_array()) {
    return Bad("prompt", absl::StrCat("expected a string or an array of token ids, ", Got(*p)));
  }
  if (p->empty()) return Bad("prompt", "empty");
  if (AllIntegers(*p)) {
    SHARDLM_ASSIGN_OR_RETURN(*out->mutable_token_ids(), TokenIdList(*p, "prompt"));
    return absl::OkStatus();
  }
  const json& first = p->front();
  if (!first.is_string() && !first.is_array()) {
    return Bad("prompt[0]",
               absl::StrCat("expected a string or an array of token ids, ", Got(first)));
  }
  if (p->size() > 1) {
    return Bad("prompt", absl::StrCat("a batch of ", p->size(),
                                      " prompts is not supported: send one prompt per request "
                                      "(n asks for several samples of it)"));
  }
  if (first.is_string()) {
    out->set_text(first.get<std::string>());
    return absl::OkStatus();
  }
  if (first.empty()) return Bad("prompt[0]", "empty");
  SHARDLM_ASSIGN_OR_RETURN(*out->mutable_token_ids(), TokenIdList(first, "prompt[0]"));
  return absl::OkStatus();
}

absl::Status ParseStop(const json& body, v1::GenerateRequest* out) {
  const json* stop = Field(body, "stop");
  if (stop == nullptr) return absl::OkStatus();
  if (stop->is_string()) {
    out->add_stop(stop->get<std::string>());
    return absl::OkStatus();
  }
  if (!stop->is_array()) {
    return Bad("stop", absl::StrCat("expected a string or an array of strings, ", Got(*stop)));
  }
  for (size_t i = 0; i < stop->size(); ++i) {
    const json& s = (*stop)[i];
    if (!s.is_string()) {
      return Bad(absl::StrCat("stop[", i, "]"), absl::StrCat("expected a string, ", Got(s)));
    }
    out->add_stop(s.get<std::string>());
  }
  return absl::OkStatus();
}

// "x: ..." -> ("x", "..."), when the message starts with a field name (no spaces before ": ").
std::optional<std::pair<std::string, std::string>> SplitField(absl::string_view message) {
  const size_t colon = message.find(": ");
  if (colon == absl::string_view::npos || colon == 0) return std::nullopt;
  const absl::string_view field = message.substr(0, colon);
  if (field.find(' ') != absl::string_view::npos) return std::nullopt;
  return std::make_pair(std::string(field), std::string(message.substr(colon + 2)));
}

// A validator field (generation.proto's names) as the OpenAI field of `request`.
std::string OpenAiField(const std::string& field, Api api, const std::string& max_tokens_field) {
  const std::string prompt = api == Api::kChat ? "messages" : "prompt";
  auto replace_prefix = [&](absl::string_view from,
                            absl::string_view to) -> std::optional<std::string> {
    if (!absl::StartsWith(field, from)) return std::nullopt;
    const absl::string_view rest = absl::string_view(field).substr(from.size());
    if (!rest.empty() && rest.front() != '[' && rest.front() != '.') return std::nullopt;
    return absl::StrCat(to, rest);
  };
  if (absl::StartsWith(field, "sampling.")) return field.substr(9);
  if (field == "max_new_tokens") {
    return max_tokens_field.empty() ? prompt : max_tokens_field;
  }
  if (field == "logprobs") return api == Api::kChat ? "top_logprobs" : "logprobs";
  for (const auto& [from, to] :
       {std::pair<absl::string_view, absl::string_view>{"token_ids.ids", prompt},
        {"token_ids", prompt},
        {"text", prompt},
        {"prompt", prompt},
        {"chat.messages", "messages"},
        {"chat", "messages"}}) {
    if (std::optional<std::string> renamed = replace_prefix(from, to)) return *renamed;
  }
  return field;
}

int Utf8Chars(absl::string_view text) {
  int n = 0;
  for (unsigned char c : text) n += (c & 0xC0) != 0x80;
  return n;
}

json Bytes(const std::string& text) {
  json out = json::array();
  for (unsigned char c : text) out.push_back(static_cast<int>(c));
  return out;
}

}  // namespace

json ErrorBody(const ApiError& error) {
  const char* type = "internal_error";
  switch (error.status) {
    case 400:
      type = "invalid_request_error";
      break;
    case 401:
      type = "authentication_error";
      break;
    case 403:
      type = "permission_error";
      break;
    case 404:
      type = "not_found_error";
      break;
    case 429:
      type = "rate_limit_error";
      break;
    case 503:
      type = "service_unavailable_error";
      break;
    default:
      break;
  }
  return {{"error",
           {{"message", error.message},
            {"type", type},
            {"param", error.param.empty() ? json(nullptr) : json(error.param)},
            {"code", error.status}}}};
}

ApiError ToApiError(const absl::Status& status) {
  ApiError error;
  error.message = std::string(status.message());
  if (auto split = SplitField(status.message())) error.param = split->first;
  switch (status.code()) {
    case absl::StatusCode::kInvalidArgument:
    case absl::StatusCode::kFailedPrecondition:
    case absl::StatusCode::kOutOfRange:
    case absl::StatusCode::kAlreadyExists:
      error.status = 400;
      break;
    case absl::StatusCode::kUnauthenticated:
      error.status = 401;
      break;
    case absl::StatusCode::kPermissionDenied:
      error.status = 403;
      break;
    case absl::StatusCode::kNotFound:
      error.status = 404;
      break;
    case absl::StatusCode::kResourceExhausted:
      error.status = 429;
      break;
    case absl::StatusCode::kUnavailable:
      error.status = 503;
      break;
    case absl::StatusCode::kDeadlineExceeded:
      error.status = 504;
      break;
    default:
      error.status = 500;
      break;
  }
  if (error.status >= 429) error.param.clear();  // not a field's fault
  return error;
}

absl::StatusOr<v1::ChatMessages> ParseMessages(const json& messages) {
  if (!messages.is_array()) {
    return Bad("messages", absl::StrCat("expected an array of messages, ", Got(messages)));
  }
  v1::ChatMessages out;
  for (size_t i = 0; i < messages.size(); ++i) {
    const json& m = messages[i];
    const std::string at = absl::StrCat("messages[", i, "]");
    if (!m.is_object()) return Bad(at, absl::StrCat("expected an object, ", Got(m)));
    v1::ChatMessage* msg = out.add_messages();
    const json* role = Field(m, "role");
    if (role == nullptr) return Bad(at + ".role", "required");
    if (!role->is_string())
      return Bad(at + ".role", absl::StrCat("expected a string, ", Got(*role)));
    msg->set_role(role->get<std::string>());
    const json* content = Field(m, "content");
    if (content == nullptr) continue;  // e.g. an assistant turn that only called tools
    if (content->is_string()) {
      msg->set_content(content->get<std::string>());
    } else if (content->is_array()) {
      for (size_t j = 0; j < content->size(); ++j) {
        const json& part = (*content)[j];
        const std::string part_at = absl::StrCat(at, ".content[", j, "]");
        const json* type = part.is_object() ? Field(part, "type") : nullptr;
        if (type == nullptr || !type->is_string() || type->get<std::string>() != "text") {
          return Bad(part_at, "only parts of type 'text' are supported");
        }
        const json* text = Field(part, "text");
        if (text == nullptr || !text->is_string()) {
          return Bad(part_at + ".text", "expected a string");
        }
        msg->mutable_content()->append(text->get<std::string>());
      }
    } else {
      return Bad(at + ".content",
                 absl::StrCat("expected a string or an array of text parts, ", Got(*content)));
    }
  }
  return out;
}

absl::StatusOr<CompletionRequest> ParseCompletionRequest(Api api, const json& body) {
  if (!body.is_object()) return Bad("body", absl::StrCat("expected a JSON object, ", Got(body)));
  CompletionRequest out;
  out.api = api;
  v1::GenerateRequest base;

  if (const json* model = Field(body, "model")) {
    if (!model->is_string()) return Bad("model", absl::StrCat("expected a string, ", Got(*model)));
    out.model = model->get<std::string>();
  }
  if (api == Api::kCompletions) {
    SHARDLM_RETURN_IF_ERROR(ParsePrompt(body, &base));
    SHARDLM_ASSIGN_OR_RETURN(std::optional<bool> echo, Bool(body, "echo"));
    if (echo.value_or(false)) return Bad("echo", "not supported");
  } else {
    const json* messages = Field(body, "messages");
    if (messages == nullptr) return Bad("messages", "required");
    SHARDLM_ASSIGN_OR_RETURN(*base.mutable_chat(), ParseMessages(*messages));
  }

  // max_completion_tokens replaces max_tokens in OpenAI's chat API; it wins when both are sent.
  for (const char* name : {"max_tokens", "max_completion_tokens"}) {
    SHARDLM_ASSIGN_OR_RETURN(std::optional<int64_t> max, Integer(body, name));
    if (max) {
      base.set_max_new_tokens(static_cast<int32_t>(*max));
      out.max_tokens_field = name;
    }
  }

  v1::SamplingParams* s = base.mutable_sampling();
  struct FloatField {
    const char* name;
    void (v1::SamplingParams::*set)(float);
  };
  for (const FloatField& f :
       {FloatField{"temperature", &v1::SamplingParams::set_temperature},
        FloatField{"top_p", &v1::SamplingParams::set_top_p},
        FloatField{"min_p", &v1::SamplingParams::set_min_p},
        FloatField{"presence_penalty", &v1::SamplingParams::set_presence_penalty},
        FloatField{"frequency_penalty", &v1::SamplingParams::set_frequency_penalty},
        FloatField{"repetition_penalty", &v1::SamplingParams::set_repetition_penalty}}) {
    SHARDLM_ASSIGN_OR_RETURN(std::optional<float> v, Number(body, f.name));
    if (v) (s->*f.set)(*v);
  }
  SHARDLM_ASSIGN_OR_RETURN(std::optional<int64_t> top_k, Integer(body, "top_k"));
  // vLLM's "no top-k" is -1; ours is 0.
  if (top_k) s->set_top_k(*top_k == -1 ? 0 : static_cast<int32_t>(*top_k));
  SHARDLM_ASSIGN_OR_RETURN(std::optional<int64_t> seed,
                           Integer(body, "seed", 0, std::numeric_limits<int64_t>::max()));

  SHARDLM_RETURN_IF_ERROR(ParseStop(body, &base));
  if (const json* ids = Field(body, "stop_token_ids")) {  // vLLM's extension
    if (!ids->is_array()) {
      return Bad("stop_token_ids", absl::StrCat("expected an array of token ids, ", Got(*ids)));
    }
    SHARDLM_ASSIGN_OR_RETURN(v1::TokenIds stop_ids, TokenIdList(*ids, "stop_token_ids"));
    *base.mutable_stop_token_ids() = std::move(*stop_ids.mutable_ids());
  }
  SHARDLM_ASSIGN_OR_RETURN(std::optional<bool> ignore_eos, Bool(body, "ignore_eos"));
  base.set_ignore_eos(ignore_eos.value_or(false));

  std::optional<int64_t> logprobs;  // alternatives asked for, when logprobs are
  if (api == Api::kCompletions) {
    SHARDLM_ASSIGN_OR_RETURN(logprobs, Integer(body, "logprobs"));
  } else {
    SHARDLM_ASSIGN_OR_RETURN(std::optional<bool> want, Bool(body, "logprobs"));
    SHARDLM_ASSIGN_OR_RETURN(std::optional<int64_t> top, Integer(body, "top_logprobs"));
    if (top && !want.value_or(false)) return Bad("top_logprobs", "needs logprobs true");
    if (want.value_or(false)) logprobs = top.value_or(0);
  }
  if (logprobs) {
    // The workers send the chosen token's logprob along with at least one alternative; a
    // negative count goes through for the validator to refuse.
    base.set_logprobs(*logprobs == 0 ? 1 : static_cast<int32_t>(*logprobs));
    out.logprobs = static_cast<int32_t>(*logprobs);
  }

  SHARDLM_ASSIGN_OR_RETURN(std::optional<bool> stream, Bool(body, "stream"));
  out.stream = stream.value_or(false);
  if (const json* options = Field(body, "stream_options")) {
    if (!options->is_object()) {
      return Bad("stream_options", absl::StrCat("expected an object, ", Got(*options)));
    }
    if (const json* usage = Field(*options, "include_usage")) {
      if (!usage->is_boolean()) {
        return Bad("stream_options.include_usage",
                   absl::StrCat("expected a boolean, ", Got(*usage)));
      }
      out.include_usage = usage->get<bool>();
    }
  }

  SHARDLM_ASSIGN_OR_RETURN(std::optional<int64_t> n, Integer(body, "n"));
  if (n && (*n < 1 || *n > kMaxSamples)) {
    return Bad("n", absl::StrCat("expected a value in [1, ", kMaxSamples, "], got ", *n));
  }
  for (int64_t i = 0; i < n.value_or(1); ++i) {
    v1::GenerateRequest& sample = out.samples.emplace_back(base);
    if (seed) sample.mutable_sampling()->set_seed(static_cast<uint64_t>(*seed) + i);
  }
  return out;
}

absl::Status RenameFields(const absl::Status& status, Api api,
                          const std::string& max_tokens_field) {
  auto split = SplitField(status.message());
  if (!split) return status;
  // The context-length message names max_new_tokens in its text too.
  const std::string max_field = max_tokens_field.empty()
                                    ? (api == Api::kChat ? "max_completion_tokens" : "max_tokens")
                                    : max_tokens_field;
  return absl::Status(
      status.code(),
      absl::StrCat(OpenAiField(split->first, api, max_tokens_field), ": ",
                   absl::StrReplaceAll(split->second, {{"max_new_tokens", max_field}})));
}

absl::StatusOr<std::vector<PreparedRequest>> PrepareSamples(const CompletionRequest& request,
                                                            const ModelContext& model) {
  const bool default_length = request.max_tokens_field.empty();
  std::vector<PreparedRequest> out;
  for (v1::GenerateRequest sample : request.samples) {
    // Without max_tokens the length is what the context leaves: validate with one token.
    if (default_length) sample.set_max_new_tokens(1);
    absl::StatusOr<PreparedRequest> prepared = PrepareGenerateRequest(sample, model);
    if (!prepared.ok()) {
      const absl::Status& s = prepared.status();
      if (default_length && absl::StartsWith(s.message(), "max_new_tokens: ")) {
        return absl::Status(s.code(),
                            absl::StrCat(request.api == Api::kChat ? "messages" : "prompt",
                                         ": the prompt leaves no room to generate within the "
                                         "context length ",
                                         model.context_length));
      }
      return RenameFields(s, request.api, request.max_tokens_field);
    }
    if (default_length) {
      prepared->max_new_tokens = static_cast<int32_t>(
          model.context_length - static_cast<int64_t>(prepared->prompt.size()));
    }
    out.push_back(std::move(*prepared));
  }
  return out;
}

ApiError SubmitError(const absl::Status& status, const CompletionRequest& request) {
  if (status.code() == absl::StatusCode::kResourceExhausted &&
      !absl::StartsWith(status.message(), "queue full")) {
    // Larger than the whole KV cache: no wait would help.
    return {400, std::string(status.message()), request.api == Api::kChat ? "messages" : "prompt"};
  }
  if (status.code() == absl::StatusCode::kFailedPrecondition) {
    return {503, std::string(status.message()), ""};  // the scheduler's "no workers attached"
  }
  return ToApiError(status);
}

bool ModelNameMatches(absl::string_view name, const std::string& model_path) {
  if (name == model_path) return true;
  absl::string_view path = model_path;
  while (path.size() > 1 && path.back() == '/') path.remove_suffix(1);
  if (name == path) return true;
  const size_t slash = path.rfind('/');
  return slash != absl::string_view::npos && name == path.substr(slash + 1);
}

json FinishReasonJson(v1::FinishReason reason) {
  switch (reason) {
    case v1::FINISH_REASON_LENGTH:
      return "length";
    case v1::FINISH_REASON_STOP:
    case v1::FINISH_REASON_EOS:
      return "stop";
    case v1::FINISH_REASON_CANCELLED:
      return "abort";
    case v1::FINISH_REASON_ERROR:
      return "error";
    default:
      return nullptr;
  }
}

ResponseBuilder::ResponseBuilder(const CompletionRequest& request, std::string id, int64_t created,
                                 std::string model)
    : api_(request.api),
      logprobs_(request.logprobs),
      include_usage_(request.include_usage),
      id_(std::move(id)),
      created_(created),
      model_(std::move(model)),
      choices_(request.samples.size()) {
  for (Choice& c : choices_) {
    if (logprobs_ < 0) continue;
    c.logprobs = api_ == Api::kChat ? json{{"content", json::array()}}
                                    : json{{"tokens", json::array()},
                                           {"token_logprobs", json::array()},
                                           {"top_logprobs", json::array()},
                                           {"text_offset", json::array()}};
  }
}

json ResponseBuilder::Envelope(const char* object) const {
  return {{"id", id_}, {"object", object}, {"created", created_}, {"model", model_}};
}

void ResponseBuilder::Record(Choice& c, const v1::GenerateResponse& m) {
  if (m.finish_reason() != v1::FINISH_REASON_UNSPECIFIED) c.finish = m.finish_reason();
  if (m.has_usage()) {
    c.prompt_tokens = m.usage().prompt_tokens();
    c.completion_tokens = m.usage().completion_tokens();
    c.has_usage = true;
  }
}

json ResponseBuilder::Logprobs(Choice& c, const v1::GenerateResponse& m) {
  if (logprobs_ < 0 || m.logprobs().empty()) return nullptr;
  const int keep = logprobs_;
  if (api_ == Api::kChat) {
    json content = json::array();
    for (const v1::Logprobs& lp : m.logprobs()) {
      json top = json::array();
      for (int i = 0; i < lp.top_size() && i < keep; ++i) {
        const v1::TokenLogprob& t = lp.top(i);
        top.push_back({{"token", t.text()}, {"logprob", t.logprob()}, {"bytes", Bytes(t.text())}});
      }
      content.push_back({{"token", lp.chosen().text()},
                         {"logprob", lp.chosen().logprob()},
                         {"bytes", Bytes(lp.chosen().text())},
                         {"top_logprobs", std::move(top)}});
    }
    return {{"content", std::move(content)}};
  }
  json out = {{"tokens", json::array()},
              {"token_logprobs", json::array()},
              {"top_logprobs", json::array()},
              {"text_offset", json::array()}};
  for (const v1::Logprobs& lp : m.logprobs()) {
    out["tokens"].push_back(lp.chosen().text());
    out["token_logprobs"].push_back(lp.chosen().logprob());
    json top = json::object();
    for (int i = 0; i < lp.top_size() && i < keep; ++i) {
      // Two ids with the same text keep the likelier (the list is by logprob).
      if (!top.contains(lp.top(i).text())) top[lp.top(i).text()] = lp.top(i).logprob();
    }
    out["top_logprobs"].push_back(std::move(top));
    out["text_offset"].push_back(c.text_offset);
    c.text_offset += Utf8Chars(lp.chosen().text());
  }
  return out;
}

json ResponseBuilder::Chunk(int index, const v1::GenerateResponse& m) {
  Choice& c = choices_.at(index);
  Record(c, m);
  json lp = Logprobs(c, m);
  const bool chat = api_ == Api::kChat;
  const bool first = chat && !c.role_sent;
  if (m.text().empty() && lp.is_null() && m.finish_reason() == v1::FINISH_REASON_UNSPECIFIED &&
      !first) {
    return nullptr;
  }
  json choice = {{"index", index}};
  if (chat) {
    json delta = json::object();
    if (first) delta["role"] = "assistant";
    if (first || !m.text().empty()) delta["content"] = m.text();
    c.role_sent = true;
    choice["delta"] = std::move(delta);
  } else {
    choice["text"] = m.text();
  }
  choice["logprobs"] = std::move(lp);
  choice["finish_reason"] = FinishReasonJson(m.finish_reason());
  json chunk = Envelope(chat ? "chat.completion.chunk" : "text_completion");
  chunk["choices"] = json::array({std::move(choice)});
  if (include_usage_) chunk["usage"] = nullptr;
  return chunk;
}

json ResponseBuilder::UsageChunk() const {
  json chunk = Envelope(api_ == Api::kChat ? "chat.completion.chunk" : "text_completion");
  chunk["choices"] = json::array();
  chunk["usage"] = Usage();
  return chunk;
}

void ResponseBuilder::Add(int index, const v1::GenerateResponse& m) {
  Choice& c = choices_.at(index);
  Record(c, m);
  c.text += m.text();
  json lp = Logprobs(c, m);
  if (lp.is_null()) return;
  for (auto& [key, values] : lp.items()) {
    for (json& v : values) c.logprobs[key].push_back(std::move(v));
  }
}

json ResponseBuilder::Response() const {
  const bool chat = api_ == Api::kChat;
  json out = Envelope(chat ? "chat.completion" : "text_completion");
  json choices = json::array();
  for (size_t i = 0; i < choices_.size(); ++i) {
    const Choice& c = choices_[i];
    json choice = {{"index", i}};
    if (chat) {
      choice["message"] = {{"role", "assistant"}, {"content", c.text}};
    } else {
      choice["text"] = c.text;
    }
    choice["logprobs"] = c.logprobs;
    choice["finish_reason"] = FinishReasonJson(c.finish);
    choices.push_back(std::move(choice));
  }
  out["choices"] = std::move(choices);
  out["usage"] = Usage();
  return out;
}

json ResponseBuilder::Usage() const {
  int64_t prompt = 0, completion = 0;
  bool have_prompt = false;
  for (const Choice& c : choices_) {
    if (!c.has_usage) continue;
    if (!have_prompt) prompt = c.prompt_tokens;
    have_prompt = true;
    completion += c.completion_tokens;
  }
  return {{"prompt_tokens", prompt},
          {"completion_tokens", completion},
          {"total_tokens", prompt + completion}};
}

}  // namespace shardlm::coordinator::openai
