// The OpenAI-compatible API's pure functions (coordinator/openai_api.h): JSON bodies to
// GenerateRequests, the shared validator's errors under OpenAI field names, and the response and
// chunk shapes of both APIs, logprobs included.
#include "coordinator/openai_api.h"

#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/coordinator/test_models.h"

namespace shardlm::coordinator::openai {
namespace {

using nlohmann::json;
using ::testing::HasSubstr;

CompletionRequest Parse(Api api, const json& body) {
  absl::StatusOr<CompletionRequest> r = ParseCompletionRequest(api, body);
  EXPECT_TRUE(r.ok()) << r.status() << " for " << body.dump();
  return r.ok() ? *r : CompletionRequest{};
}

// The ApiError of a body refused by the parser or the validator (TinyModel: ids only).
ApiError Refusal(Api api, const json& body, const ModelContext& model) {
  absl::StatusOr<CompletionRequest> r = ParseCompletionRequest(api, body);
  if (!r.ok()) return ToApiError(r.status());
  absl::StatusOr<std::vector<PreparedRequest>> p = PrepareSamples(*r, model);
  if (!p.ok()) return ToApiError(p.status());
  ADD_FAILURE() << "accepted: " << body.dump();
  return {};
}

TEST(OpenAiParseTest, EveryFieldReachesTheRequest) {
  const CompletionRequest r =
      Parse(Api::kCompletions, {{"model", "m"},
                                {"prompt", {1, 2, 3}},
                                {"max_tokens", 7},
                                {"temperature", 0.5},
                                {"top_p", 0.9},
                                {"top_k", 40},
                                {"min_p", 0.05},
                                {"presence_penalty", 0.1},
                                {"frequency_penalty", -0.2},
                                {"repetition_penalty", 1.1},
                                {"seed", 42},
                                {"stop", {"\n", "END"}},
                                {"n", 3},
                                {"logprobs", 2},
                                {"stream", true},
                                {"stream_options", {{"include_usage", true}}},
                                {"ignore_eos", true},
                                {"stop_token_ids", {5}},
                                {"user", "ignored"},
                                {"logit_bias", json::object()}});
  EXPECT_EQ(r.model, "m");
  EXPECT_TRUE(r.stream);
  EXPECT_TRUE(r.include_usage);
  EXPECT_EQ(r.logprobs, 2);
  EXPECT_EQ(r.max_tokens_field, "max_tokens");
  ASSERT_EQ(r.samples.size(), 3u);
  for (int i = 0; i < 3; ++i) {
    const v1::GenerateRequest& s = r.samples[i];
    EXPECT_THAT(s.token_ids().ids(), ::testing::ElementsAre(1, 2, 3));
    EXPECT_EQ(s.max_new_tokens(), 7);
    EXPECT_FLOAT_EQ(s.sampling().temperature(), 0.5f);
    EXPECT_FLOAT_EQ(s.sampling().top_p(), 0.9f);
    EXPECT_EQ(s.sampling().top_k(), 40);
    EXPECT_FLOAT_EQ(s.sampling().min_p(), 0.05f);
    EXPECT_FLOAT_EQ(s.sampling().presence_penalty(), 0.1f);
    EXPECT_FLOAT_EQ(s.sampling().frequency_penalty(), -0.2f);
    EXPECT_FLOAT_EQ(s.sampling().repetition_penalty(), 1.1f);
    EXPECT_EQ(s.sampling().seed(), 42u + i);  // sample i: seed + i
    EXPECT_THAT(s.stop(), ::testing::ElementsAre("\n", "END"));
    EXPECT_THAT(s.stop_token_ids(), ::testing::ElementsAre(5));
    EXPECT_TRUE(s.ignore_eos());
    EXPECT_EQ(s.logprobs(), 2);
  }
}

TEST(OpenAiParseTest, UnsetFieldsStayUnset) {
  const CompletionRequest r =
      Parse(Api::kCompletions, {{"prompt", "hi"}, {"temperature", nullptr}});
  ASSERT_EQ(r.samples.size(), 1u);
  const v1::GenerateRequest& s = r.samples[0];
  EXPECT_EQ(s.text(), "hi");
  EXPECT_FALSE(s.sampling().has_temperature());
  EXPECT_FALSE(s.sampling().has_seed());
  EXPECT_EQ(s.max_new_tokens(), 0);
  EXPECT_EQ(r.max_tokens_field, "");
  EXPECT_EQ(r.logprobs, -1);
  EXPECT_EQ(s.logprobs(), 0);
  EXPECT_FALSE(r.stream);
}

TEST(OpenAiParseTest, PromptShapes) {
  EXPECT_EQ(Parse(Api::kCompletions, {{"prompt", {"one"}}}).samples[0].text(), "one");
  EXPECT_THAT(Parse(Api::kCompletions, {{"prompt", {{4, 5}}}}).samples[0].token_ids().ids(),
              ::testing::ElementsAre(4, 5));
  EXPECT_THAT(Parse(Api::kCompletions, {{"prompt", {4.0, 5}}}).samples[0].token_ids().ids(),
              ::testing::ElementsAre(4, 5));
  const CompletionRequest chat = Parse(
      Api::kChat,
      {{"messages",
        {{{"role", "system"}, {"content", "be brief"}},
         {{"role", "user"},
          {"content", {{{"type", "text"}, {"text", "a"}}, {{"type", "text"}, {"text", "b"}}}}},
         {{"role", "assistant"}, {"content", nullptr}}}},
       {"max_completion_tokens", 9},
       {"max_tokens", 3}});
  const v1::ChatMessages& m = chat.samples[0].chat();
  ASSERT_EQ(m.messages_size(), 3);
  EXPECT_EQ(m.messages(1).content(), "ab");
  EXPECT_EQ(m.messages(2).content(), "");
  // max_completion_tokens wins over the deprecated max_tokens.
  EXPECT_EQ(chat.samples[0].max_new_tokens(), 9);
  EXPECT_EQ(chat.max_tokens_field, "max_completion_tokens");
}

TEST(OpenAiParseTest, ChatLogprobs) {
  const json messages = {{{"role", "user"}, {"content", "x"}}};
  EXPECT_EQ(Parse(Api::kChat, {{"messages", messages}}).logprobs, -1);
  const CompletionRequest plain = Parse(Api::kChat, {{"messages", messages}, {"logprobs", true}});
  EXPECT_EQ(plain.logprobs, 0);
  EXPECT_EQ(plain.samples[0].logprobs(), 1);  // the chosen token's comes with one alternative
  const CompletionRequest top =
      Parse(Api::kChat, {{"messages", messages}, {"logprobs", true}, {"top_logprobs", 4}});
  EXPECT_EQ(top.logprobs, 4);
  EXPECT_EQ(top.samples[0].logprobs(), 4);
}

TEST(OpenAiParseTest, WrongTypesAndShapesNameTheField) {
  struct Case {
    Api api;
    json body;
    std::string param;
    std::string message;
  };
  const json msgs = {{{"role", "user"}, {"content", "x"}}};
  const std::vector<Case> cases = {
      {Api::kCompletions, json::array(), "body", "expected a JSON object"},
      {Api::kCompletions, {{"max_tokens", 3}}, "prompt", "required"},
      {Api::kCompletions, {{"prompt", 5}}, "prompt", "got 5"},
      {Api::kCompletions, {{"prompt", {"a", "b"}}}, "prompt", "batch of 2 prompts"},
      {Api::kCompletions, {{"prompt", {{1}, {2}}}}, "prompt", "batch of 2 prompts"},
      {Api::kCompletions, {{"prompt", {1, "x"}}}, "prompt[0]", "expected a string or an array"},
      {Api::kCompletions, {{"prompt", {1, 2.5}}}, "prompt[1]", "expected an integer, got 2.5"},
      {Api::kCompletions,
       {{"prompt", "x"}, {"max_tokens", "9"}},
       "max_tokens",
       "expected an integer, got string"},
      {Api::kCompletions, {{"prompt", "x"}, {"max_tokens", 1e12}}, "max_tokens", "out of range"},
      {Api::kCompletions,
       {{"prompt", "x"}, {"temperature", "hot"}},
       "temperature",
       "expected a number, got string"},
      {Api::kCompletions, {{"prompt", "x"}, {"top_k", true}}, "top_k", "got true"},
      {Api::kCompletions, {{"prompt", "x"}, {"seed", -1}}, "seed", "out of range"},
      {Api::kCompletions, {{"prompt", "x"}, {"stop", 3}}, "stop", "expected a string or"},
      {Api::kCompletions, {{"prompt", "x"}, {"stop", {"a", 3}}}, "stop[1]", "expected a string"},
      {Api::kCompletions, {{"prompt", "x"}, {"n", 0}}, "n", "expected a value in [1, 128]"},
      {Api::kCompletions, {{"prompt", "x"}, {"stream", "yes"}}, "stream", "expected a boolean"},
      {Api::kCompletions,
       {{"prompt", "x"}, {"stream_options", {{"include_usage", 1}}}},
       "stream_options.include_usage",
       "expected a boolean"},
      {Api::kCompletions, {{"prompt", "x"}, {"echo", true}}, "echo", "not supported"},
      {Api::kCompletions, {{"prompt", "x"}, {"model", 7}}, "model", "expected a string"},
      {Api::kChat, {{"prompt", "x"}}, "messages", "required"},
      {Api::kChat, {{"messages", "hi"}}, "messages", "expected an array"},
      {Api::kChat, {{"messages", {{{"content", "x"}}}}}, "messages[0].role", "required"},
      {Api::kChat,
       {{"messages", {{{"role", "user"}, {"content", 3}}}}},
       "messages[0].content",
       "expected a string or an array of text parts"},
      {Api::kChat,
       {{"messages", {{{"role", "user"}, {"content", {{{"type", "image_url"}}}}}}}},
       "messages[0].content[0]",
       "only parts of type 'text'"},
      {Api::kChat, {{"messages", msgs}, {"logprobs", 1}}, "logprobs", "expected a boolean"},
      {Api::kChat,
       {{"messages", msgs}, {"top_logprobs", 2}},
       "top_logprobs",
       "needs logprobs true"},
  };
  for (const Case& c : cases) {
    absl::StatusOr<CompletionRequest> r = ParseCompletionRequest(c.api, c.body);
    ASSERT_FALSE(r.ok()) << c.body.dump();
    const ApiError e = ToApiError(r.status());
    EXPECT_EQ(e.status, 400) << c.body.dump();
    EXPECT_EQ(e.param, c.param) << c.body.dump() << ": " << e.message;
    EXPECT_THAT(e.message, HasSubstr(c.message)) << c.body.dump();
  }
}

TEST(OpenAiParseTest, ValidatorErrorsUseOpenAiFieldNames) {
  auto model = testing::TinyModel(/*context_length=*/64);  // vocabulary 256, no tokenizer
  struct Case {
    Api api;
    json body;
    std::string param;
    std::string message;
  };
  const json ids = {1, 2, 3};
  const json msgs = {{{"role", "user"}, {"content", "x"}}};
  const std::vector<Case> cases = {
      {Api::kCompletions,
       {{"prompt", ids}, {"temperature", -1}},
       "temperature",
       "temperature: expected a value in [0, 100]"},
      {Api::kCompletions, {{"prompt", ids}, {"top_p", 0}}, "top_p", "top_p: expected"},
      {Api::kCompletions, {{"prompt", ids}, {"top_k", -2}}, "top_k", "top_k: expected >= 0"},
      {Api::kCompletions, {{"prompt", ids}, {"min_p", 2}}, "min_p", "min_p:"},
      {Api::kCompletions, {{"prompt", ids}, {"presence_penalty", 3}}, "presence_penalty", ""},
      {Api::kCompletions, {{"prompt", ids}, {"frequency_penalty", -3}}, "frequency_penalty", ""},
      {Api::kCompletions, {{"prompt", ids}, {"repetition_penalty", 0}}, "repetition_penalty", ""},
      {Api::kCompletions,
       {{"prompt", ids}, {"max_tokens", 0}},
       "max_tokens",
       "max_tokens: expected > 0"},
      {Api::kCompletions,
       {{"prompt", ids}, {"max_tokens", 62}},
       "max_tokens",
       "prompt (3 tokens) + max_tokens (62) = 65 exceeds the context length 64"},
      {Api::kChat,
       {{"messages", msgs}, {"max_completion_tokens", -1}},
       "max_completion_tokens",
       "max_completion_tokens: expected > 0"},
      {Api::kCompletions,
       {{"prompt", ids}, {"logprobs", 21}},
       "logprobs",
       "logprobs: expected a value in [0, 20], got 21"},
      {Api::kCompletions, {{"prompt", ids}, {"logprobs", -3}}, "logprobs", "got -3"},
      {Api::kChat,
       {{"messages", msgs}, {"logprobs", true}, {"top_logprobs", 30}},
       "top_logprobs",
       "top_logprobs: expected a value in [0, 20], got 30"},
      {Api::kCompletions, {{"prompt", {1, 256}}}, "prompt[1]", "prompt[1]: 256 is out of range"},
      {Api::kCompletions, {{"prompt", ids}, {"stop", {"a", ""}}}, "stop[1]", "stop[1]: empty"},
      {Api::kCompletions, {{"prompt", ids}, {"stop_token_ids", {999}}}, "stop_token_ids[0]", ""},
      {Api::kCompletions, {{"prompt", ""}}, "prompt", "prompt: empty"},
      {Api::kCompletions, {{"prompt", "text"}}, "prompt", "has no tokenizer"},
      {Api::kChat, {{"messages", json::array()}}, "messages", "messages: empty"},
      {Api::kChat, {{"messages", msgs}}, "messages", "has no tokenizer"},
      // Without max_tokens a prompt that fills the context leaves nothing to generate.
      {Api::kCompletions,
       {{"prompt", json(std::vector<int>(64, 1))}},
       "prompt",
       "leaves no room to generate within the context length 64"},
  };
  for (const Case& c : cases) {
    const ApiError e = Refusal(c.api, c.body, *model);
    EXPECT_EQ(e.status, 400) << c.body.dump();
    EXPECT_EQ(e.param, c.param) << c.body.dump() << ": " << e.message;
    EXPECT_THAT(e.message, HasSubstr(c.message)) << c.body.dump();
    EXPECT_THAT(e.message, ::testing::Not(HasSubstr("sampling."))) << e.message;
    EXPECT_THAT(e.message, ::testing::Not(HasSubstr("max_new_tokens"))) << e.message;
  }
}

TEST(OpenAiParseTest, DefaultLengthIsTheRestOfTheContext) {
  auto model = testing::TinyModel(/*context_length=*/64);
  const CompletionRequest r = Parse(Api::kCompletions, {{"prompt", {1, 2, 3, 4}}, {"n", 2}});
  absl::StatusOr<std::vector<PreparedRequest>> p = PrepareSamples(r, *model);
  ASSERT_TRUE(p.ok()) << p.status();
  ASSERT_EQ(p->size(), 2u);
  EXPECT_EQ((*p)[0].max_new_tokens, 60);
  EXPECT_EQ((*p)[1].max_new_tokens, 60);
}

TEST(OpenAiErrorTest, StatusCodesAndBody) {
  CompletionRequest chat;
  chat.api = Api::kChat;
  EXPECT_EQ(
      SubmitError(absl::ResourceExhaustedError("queue full: 3 requests waiting"), chat).status,
      429);
  const ApiError too_big = SubmitError(
      absl::ResourceExhaustedError("the prompt of 900 tokens needs 57 KV blocks"), chat);
  EXPECT_EQ(too_big.status, 400);
  EXPECT_EQ(too_big.param, "messages");
  EXPECT_EQ(SubmitError(absl::UnavailableError("no workers attached"), chat).status, 503);
  EXPECT_EQ(
      SubmitError(absl::FailedPreconditionError("no KV blocks: no workers attached"), chat).status,
      503);
  EXPECT_EQ(ToApiError(absl::UnavailableError("the coordinator is shutting down")).status, 503);
  EXPECT_EQ(ToApiError(absl::InternalError("x: y")).status, 500);
  const json body = ErrorBody({400, "temperature: bad", "temperature"});
  EXPECT_EQ(body["error"]["message"], "temperature: bad");
  EXPECT_EQ(body["error"]["type"], "invalid_request_error");
  EXPECT_EQ(body["error"]["param"], "temperature");
  EXPECT_EQ(body["error"]["code"], 400);
  EXPECT_TRUE(ErrorBody({503, "down", ""})["error"]["param"].is_null());
  EXPECT_EQ(ErrorBody({401, "no", ""})["error"]["type"], "authentication_error");
  EXPECT_EQ(ErrorBody({404, "no", ""})["error"]["type"], "not_found_error");
}

TEST(OpenAiModelTest, PathOrBasename) {
  EXPECT_TRUE(ModelNameMatches("/m/a.gguf", "/m/a.gguf"));
  EXPECT_TRUE(ModelNameMatches("a.gguf", "/m/a.gguf"));
  EXPECT_TRUE(ModelNameMatches("dir", "/models/dir/"));
  EXPECT_FALSE(ModelNameMatches("b.gguf", "/m/a.gguf"));
  EXPECT_FALSE(ModelNameMatches("", "/m/a.gguf"));
  EXPECT_FALSE(ModelNameMatches("m/a", "/m/a.gguf"));
}

v1::GenerateResponse Message(std::vector<int32_t> ids, std::string text,
                             v1::FinishReason finish = v1::FINISH_REASON_UNSPECIFIED,
                             int prompt = 0, int completion = 0) {
  v1::GenerateResponse m;
  for (int32_t id : ids) {
    m.add_token_ids(id);
    v1::Logprobs* lp = m.add_logprobs();
    lp->mutable_chosen()->set_id(id);
    lp->mutable_chosen()->set_logprob(-0.5f * id);
    lp->mutable_chosen()->set_text("t" + std::to_string(id));
    for (int k = 0; k < 3; ++k) {
      v1::TokenLogprob* t = lp->add_top();
      t->set_id(100 + k);
      t->set_logprob(-0.25f * (k + 1));
      t->set_text("alt" + std::to_string(k));
    }
  }
  m.set_text(std::move(text));
  m.set_finish_reason(finish);
  if (finish != v1::FINISH_REASON_UNSPECIFIED) {
    m.mutable_usage()->set_prompt_tokens(prompt);
    m.mutable_usage()->set_completion_tokens(completion);
  }
  return m;
}

TEST(OpenAiResponseTest, CompletionsWholeWithLogprobsAndTwoChoices) {
  CompletionRequest r = Parse(Api::kCompletions, {{"prompt", "x"}, {"n", 2}, {"logprobs", 2}});
  ResponseBuilder b(r, "cmpl-1", 1700000000, "model-a");
  b.Add(1, Message({7}, "B"));
  b.Add(0, Message({1, 2}, "A1"));
  b.Add(0, Message({3}, "é", v1::FINISH_REASON_EOS, 5, 3));
  b.Add(1, Message({8}, "C", v1::FINISH_REASON_LENGTH, 5, 2));
  const json out = b.Response();
  EXPECT_EQ(out["id"], "cmpl-1");
  EXPECT_EQ(out["object"], "text_completion");
  EXPECT_EQ(out["created"], 1700000000);
  EXPECT_EQ(out["model"], "model-a");
  ASSERT_EQ(out["choices"].size(), 2u);
  const json& c0 = out["choices"][0];
  EXPECT_EQ(c0["index"], 0);
  EXPECT_EQ(c0["text"], "A1é");
  EXPECT_EQ(c0["finish_reason"], "stop");  // EOS is "stop" to OpenAI
  EXPECT_EQ(c0["logprobs"]["tokens"], json({"t1", "t2", "t3"}));
  EXPECT_FLOAT_EQ(c0["logprobs"]["token_logprobs"][1].get<float>(), -1.0f);
  EXPECT_EQ(c0["logprobs"]["text_offset"], json({0, 2, 4}));
  ASSERT_EQ(c0["logprobs"]["top_logprobs"][0].size(), 2u);  // logprobs: 2 alternatives
  EXPECT_FLOAT_EQ(c0["logprobs"]["top_logprobs"][0]["alt1"].get<float>(), -0.5f);
  EXPECT_EQ(out["choices"][1]["text"], "BC");
  EXPECT_EQ(out["choices"][1]["finish_reason"], "length");
  // Prompt counted once, completions of both samples summed.
  EXPECT_EQ(out["usage"],
            json({{"prompt_tokens", 5}, {"completion_tokens", 5}, {"total_tokens", 10}}));
}

TEST(OpenAiResponseTest, ChatWholeWithoutLogprobs) {
  CompletionRequest r = Parse(Api::kChat, {{"messages", {{{"role", "user"}, {"content", "x"}}}}});
  ResponseBuilder b(r, "chatcmpl-1", 1, "m");
  b.Add(0, Message({1}, "Hi"));
  b.Add(0, Message({2}, "!", v1::FINISH_REASON_STOP, 4, 2));
  const json out = b.Response();
  EXPECT_EQ(out["object"], "chat.completion");
  const json& c = out["choices"][0];
  EXPECT_EQ(c["message"], json({{"role", "assistant"}, {"content", "Hi!"}}));
  EXPECT_TRUE(c["logprobs"].is_null());
  EXPECT_EQ(c["finish_reason"], "stop");
  EXPECT_EQ(out["usage"]["total_tokens"], 6);
}

TEST(OpenAiResponseTest, ChatChunksRoleFirstLogprobsAndUsageChunk) {
  CompletionRequest r = Parse(Api::kChat, {{"messages", {{{"role", "user"}, {"content", "x"}}}},
                                           {"stream", true},
                                           {"stream_options", {{"include_usage", true}}},
                                           {"logprobs", true},
                                           {"top_logprobs", 1}});
  ResponseBuilder b(r, "chatcmpl-9", 2, "m");
  const json first = b.Chunk(0, Message({65}, "A"));
  EXPECT_EQ(first["object"], "chat.completion.chunk");
  EXPECT_EQ(first["id"], "chatcmpl-9");
  EXPECT_TRUE(first["usage"].is_null());
  ASSERT_EQ(first["choices"].size(), 1u);
  const json& c = first["choices"][0];
  EXPECT_EQ(c["delta"], json({{"role", "assistant"}, {"content", "A"}}));
  EXPECT_TRUE(c["finish_reason"].is_null());
  const json& lp = c["logprobs"]["content"][0];
  EXPECT_EQ(lp["token"], "t65");
  EXPECT_EQ(lp["bytes"], json({116, 54, 53}));
  ASSERT_EQ(lp["top_logprobs"].size(), 1u);
  EXPECT_EQ(lp["top_logprobs"][0]["token"], "alt0");
  // Later deltas carry no role; a message with nothing to say gives no chunk.
  v1::GenerateResponse empty;
  EXPECT_TRUE(b.Chunk(0, empty).is_null());
  const json last = b.Chunk(0, Message({66}, "B", v1::FINISH_REASON_LENGTH, 3, 2));
  EXPECT_EQ(last["choices"][0]["delta"], json({{"content", "B"}}));
  EXPECT_EQ(last["choices"][0]["finish_reason"], "length");
  const json usage = b.UsageChunk();
  EXPECT_TRUE(usage["choices"].empty());
  EXPECT_EQ(usage["usage"],
            json({{"prompt_tokens", 3}, {"completion_tokens", 2}, {"total_tokens", 5}}));
}

TEST(OpenAiResponseTest, CompletionChunksKeepTextOffsetsAcrossChunks) {
  CompletionRequest r =
      Parse(Api::kCompletions, {{"prompt", "x"}, {"stream", true}, {"logprobs", 0}, {"n", 2}});
  ResponseBuilder b(r, "cmpl-2", 3, "m");
  const json a = b.Chunk(1, Message({1}, "t1"));
  EXPECT_EQ(a["object"], "text_completion");
  EXPECT_EQ(a["choices"][0]["index"], 1);
  EXPECT_EQ(a["choices"][0]["text"], "t1");
  EXPECT_FALSE(a.contains("usage"));  // only with include_usage
  EXPECT_EQ(a["choices"][0]["logprobs"]["text_offset"], json::array({0}));
  EXPECT_TRUE(a["choices"][0]["logprobs"]["top_logprobs"][0].empty());  // logprobs: 0
  const json c = b.Chunk(1, Message({22}, "t22", v1::FINISH_REASON_STOP, 1, 2));
  EXPECT_EQ(c["choices"][0]["logprobs"]["text_offset"], json::array({2}));
  EXPECT_EQ(c["choices"][0]["finish_reason"], "stop");
  // An end without text still tells the finish reason.
  v1::GenerateResponse end;
  end.set_finish_reason(v1::FINISH_REASON_CANCELLED);
  EXPECT_EQ(b.Chunk(0, end)["choices"][0]["finish_reason"], "abort");
}

}  // namespace
}  // namespace shardlm::coordinator::openai
