#include "coordinator/output_processor.h"

#include <limits>
#include <string>
#include <vector>

#include "base/logprob.h"

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tokenizer/unicode.h"
#include "tests/coordinator/test_models.h"

namespace shardlm::coordinator {
namespace {

using ::testing::ElementsAre;

PreparedRequest Request(int prompt_len, int max_new) {
  PreparedRequest r;
  r.prompt.assign(static_cast<size_t>(prompt_len), 1);
  r.max_new_tokens = max_new;
  return r;
}

struct Output {
  std::vector<int32_t> ids;
  std::string text;
  std::vector<v1::GenerateResponse> messages;
  v1::FinishReason finish = v1::FINISH_REASON_UNSPECIFIED;
  int fed = 0;  // tokens fed until the finish
};

Output Feed(OutputProcessor& p, const std::vector<int32_t>& tokens) {
  Output run;
  for (int32_t t : tokens) {
    v1::GenerateResponse m;
    run.finish = p.Add(t, nullptr, &m);
    ++run.fed;
    run.ids.insert(run.ids.end(), m.token_ids().begin(), m.token_ids().end());
    run.text += m.text();
    run.messages.push_back(m);
    if (run.finish != v1::FINISH_REASON_UNSPECIFIED) break;
  }
  return run;
}

TEST(OutputProcessorTest, MaxNewTokensEndsWithLength) {
  auto model = testing::TinyModel();
  OutputProcessor p(*model, Request(3, 3));
  Output run = Feed(p, {5, 6, 7, 8, 9});
  EXPECT_EQ(run.finish, v1::FINISH_REASON_LENGTH);
  EXPECT_THAT(run.ids, ElementsAre(5, 6, 7));
  EXPECT_EQ(run.text, "");  // no tokenizer: ids only
  EXPECT_EQ(p.completion_tokens(), 3);
  // Nothing is added after the end.
  v1::GenerateResponse after;
  EXPECT_EQ(p.Add(10, nullptr, &after), v1::FINISH_REASON_LENGTH);
  EXPECT_TRUE(after.token_ids().empty());
}

TEST(OutputProcessorTest, ContextLengthEndsWithLength) {
  auto model = testing::TinyModel(/*context_length=*/6);
  OutputProcessor p(*model, Request(4, 100));
  Output run = Feed(p, {5, 6, 7, 8});
  EXPECT_EQ(run.finish, v1::FINISH_REASON_LENGTH);
  EXPECT_EQ(run.fed, 2);
}

TEST(OutputProcessorTest, StopTokenIdsAndConfigEosEndTheRequest) {
  auto model = testing::TinyModel();
  model->config.eos_token_ids = {2};
  PreparedRequest r = Request(3, 100);
  r.stop_token_ids = {9};
  {
    OutputProcessor p(*model, r);
    Output run = Feed(p, {5, 9, 7});
    EXPECT_EQ(run.finish, v1::FINISH_REASON_STOP);
    EXPECT_THAT(run.ids, ElementsAre(5, 9));  // the stop id is reported, adds no text
  }
  {
    OutputProcessor p(*model, r);
    Output run = Feed(p, {5, 2, 7});
    EXPECT_EQ(run.finish, v1::FINISH_REASON_EOS);
    EXPECT_THAT(run.ids, ElementsAre(5, 2));
  }
  r.ignore_eos = true;
  {
    OutputProcessor p(*model, r);
    Output run = Feed(p, {5, 2, 7, 9});
    EXPECT_EQ(run.finish, v1::FINISH_REASON_STOP);  // ignore_eos does not ignore stop ids
    EXPECT_THAT(run.ids, ElementsAre(5, 2, 7, 9));
  }
}

TEST(OutputProcessorTest, LogprobsOnePerIdEvenWhenTheWorkerSentNone) {
  auto model = testing::TinyModel();
  PreparedRequest r = Request(3, 10);
  r.logprobs = 2;
  OutputProcessor p(*model, r);
  v1::Logprobs lp;
  lp.mutable_chosen()->set_id(5);
  lp.mutable_chosen()->set_logprob(-0.25f);
  lp.add_top()->set_id(5);
  lp.add_top()->set_id(6);
  v1::GenerateResponse m;
  p.Add(5, &lp, &m);
  p.Add(6, nullptr, &m);
  ASSERT_EQ(m.logprobs_size(), 2);
  EXPECT_FLOAT_EQ(m.logprobs(0).chosen().logprob(), -0.25f);
  EXPECT_EQ(m.logprobs(0).top_size(), 2);
  EXPECT_EQ(m.logprobs(1).chosen().id(), 6);
}

// The coordinator does not trust the worker's numbers: -inf (or anything below the floor) is
// reported as kLogprobFloor, more than 0 as 0; NaN or +inf fails the request without adding the
// token; no more alternatives than asked for get through.
TEST(OutputProcessorTest, LogprobsAreFiniteWhateverTheWorkerSends) {
  auto model = testing::TinyModel();
  PreparedRequest r = Request(3, 10);
  r.logprobs = 2;
  const float inf = std::numeric_limits<float>::infinity();
  {
    OutputProcessor p(*model, r);
    v1::Logprobs lp;
    lp.mutable_chosen()->set_id(5);
    lp.mutable_chosen()->set_logprob(-inf);
    for (float v : {-1e30f, 0.5f, -inf}) {
      v1::TokenLogprob* t = lp.add_top();
      t->set_id(7);
      t->set_logprob(v);
    }
    v1::GenerateResponse m;
    EXPECT_EQ(p.Add(5, &lp, &m), v1::FINISH_REASON_UNSPECIFIED);
    ASSERT_EQ(m.logprobs_size(), 1);
    EXPECT_EQ(m.logprobs(0).chosen().logprob(), kLogprobFloor);
    ASSERT_EQ(m.logprobs(0).top_size(), 2);  // asked for 2
    EXPECT_EQ(m.logprobs(0).top(0).logprob(), kLogprobFloor);
    EXPECT_EQ(m.logprobs(0).top(1).logprob(), 0.0f);  // a probability is at most 1
    EXPECT_TRUE(p.error().ok());
  }
  for (const float bad : {std::numeric_limits<float>::quiet_NaN(), inf}) {
    for (const bool in_top : {false, true}) {
      SCOPED_TRACE(::testing::Message() << bad << (in_top ? " in top" : " chosen"));
      OutputProcessor p(*model, r);
      v1::Logprobs lp;
      lp.mutable_chosen()->set_id(5);
      lp.mutable_chosen()->set_logprob(in_top ? -0.5f : bad);
      lp.add_top()->set_id(5);
      lp.mutable_top(0)->set_logprob(in_top ? bad : -0.5f);
      v1::GenerateResponse m;
      EXPECT_EQ(p.Add(5, &lp, &m), v1::FINISH_REASON_ERROR);
      EXPECT_TRUE(m.token_ids().empty());
      EXPECT_TRUE(m.logprobs().empty());
      EXPECT_EQ(p.error().code(), absl::StatusCode::kInternal);
      EXPECT_THAT(p.error().message(), ::testing::HasSubstr("the workers sent logprob"));
      EXPECT_EQ(p.completion_tokens(), 0);
      // Nothing after the end.
      EXPECT_EQ(p.Add(6, nullptr, &m), v1::FINISH_REASON_ERROR);
      EXPECT_TRUE(m.token_ids().empty());
    }
  }
}

// With SmolLM2's real tokenizer: text, stop strings and end-of-generation tokens.
class OutputProcessorTextTest : public ::testing::Test {
 protected:
  void SetUp() override {
    absl::StatusOr<const ModelContext*> loaded = testing::SmolLm2();
    ASSERT_TRUE(loaded.ok()) << loaded.status();
    model_ = *loaded;
    if (model_ == nullptr) GTEST_SKIP() << "models/SmolLM2-135M-Instruct.Q4_1.gguf is absent";
  }
  std::vector<int32_t> Ids(const std::string& text) const {
    return model_->tokenizer->Encode(text, /*add_special=*/false, /*parse_special=*/false);
  }
  const ModelContext* model_ = nullptr;
};

TEST_F(OutputProcessorTextTest, StreamedTextIsTheDecodedTextInWholeCharacters) {
  const std::string text = "Hello world! Ünïcödé text, emoji 😀 and 你好 end.";
  const std::vector<int32_t> ids = Ids(text);
  OutputProcessor p(*model_, Request(3, 1000));
  Output run = Feed(p, ids);
  EXPECT_EQ(run.finish, v1::FINISH_REASON_UNSPECIFIED);
  EXPECT_EQ(run.text, text);
  EXPECT_EQ(run.ids, ids);
  for (const v1::GenerateResponse& m : run.messages) {
    EXPECT_EQ(unicode::FindInvalidUtf8(m.text()), unicode::kValid) << m.text();
  }
}

TEST_F(OutputProcessorTextTest, StopStringCutsTheTextAndEndsWithStop) {
  const std::vector<int32_t> ids = Ids("The answer is 42. STOP here, not shown.");
  PreparedRequest r = Request(3, 1000);
  r.stop = {"STOP", "never"};
  OutputProcessor p(*model_, r);
  Output run = Feed(p, ids);
  EXPECT_EQ(run.finish, v1::FINISH_REASON_STOP);
  EXPECT_EQ(run.text, "The answer is 42. ");
  EXPECT_LT(run.fed, static_cast<int>(ids.size()));
}

TEST_F(OutputProcessorTextTest, HeldTextIsReleasedAtLength) {
  const std::vector<int32_t> ids = Ids("one two three");
  PreparedRequest r = Request(3, static_cast<int>(ids.size()));
  r.stop = {" three!"};  // " three" is held back as a possible start, then released
  OutputProcessor p(*model_, r);
  Output run = Feed(p, ids);
  EXPECT_EQ(run.finish, v1::FINISH_REASON_LENGTH);
  EXPECT_EQ(run.text, "one two three");
}

TEST_F(OutputProcessorTextTest, EndOfGenerationTokenEndsWithoutText) {
  const Tokenizer& tok = *model_->tokenizer;
  const int32_t eog = tok.eot_id() >= 0 ? tok.eot_id() : tok.eos_id();
  ASSERT_GE(eog, 0);
  std::vector<int32_t> ids = Ids("Hi there");
  ids.push_back(eog);
  ids.push_back(Ids("x")[0]);
  {
    OutputProcessor p(*model_, Request(3, 100));
    Output run = Feed(p, ids);
    EXPECT_EQ(run.finish, v1::FINISH_REASON_EOS);
    EXPECT_EQ(run.text, "Hi there");
    EXPECT_EQ(run.ids.back(), eog);
  }
  {
    PreparedRequest r = Request(3, 100);
    r.ignore_eos = true;
    OutputProcessor p(*model_, r);
    Output run = Feed(p, ids);
    EXPECT_EQ(run.finish, v1::FINISH_REASON_UNSPECIFIED);
    EXPECT_EQ(run.text, "Hi therex");  // the special token renders no text
  }
}

TEST_F(OutputProcessorTextTest, LogprobTextsAreTokenPieces) {
  PreparedRequest r = Request(3, 100);
  r.logprobs = 1;
  OutputProcessor p(*model_, r);
  const std::vector<int32_t> ids = Ids(" world");
  ASSERT_EQ(ids.size(), 1u);
  v1::Logprobs lp;
  lp.mutable_chosen()->set_id(ids[0]);
  lp.add_top()->set_id(ids[0]);
  v1::GenerateResponse m;
  p.Add(ids[0], &lp, &m);
  ASSERT_EQ(m.logprobs_size(), 1);
  EXPECT_EQ(m.logprobs(0).chosen().text(), " world");
  EXPECT_EQ(m.logprobs(0).top(0).text(), " world");
}

}  // namespace
}  // namespace shardlm::coordinator
