#include "tokenizer/chat_template.h"

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace shardlm {
namespace {

using ::testing::HasSubstr;

// SmolLM2-135M-Instruct's template, as stored in its GGUF (real newlines inside the literals).
const char kSmolLm2[] =
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging "
    "Face<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + "
    "message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|im_start|>assistant\n' }}{% endif %}";

TEST(ChatTemplateTest, SmolLm2AddsItsDefaultSystemPrompt) {
  auto t = ChatTemplate::Detect(kSmolLm2);
  ASSERT_TRUE(t.ok()) << t.status();
  EXPECT_EQ(t->name(), "chatml");
  auto text = t->Render({{"user", "Hi"}});
  ASSERT_TRUE(text.ok());
  EXPECT_EQ(*text,
            "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging "
            "Face<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n");
  // An explicit system message replaces the default.
  text = t->Render({{"system", "Be brief."}, {"user", "Hi"}});
  ASSERT_TRUE(text.ok());
  EXPECT_EQ(*text,
            "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
            "<|im_start|>assistant\n");
}

TEST(ChatTemplateTest, QwenEscapedDefaultSystemPrompt) {
  const std::string qwen =
      "{%- if messages[0]['role'] == 'system' %}{{- '<|im_start|>system\\n' + "
      "messages[0]['content'] + '<|im_end|>\\n' }}{%- else %}{{- '<|im_start|>system\\nYou are "
      "Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\\n' }}{%- endif %}";
  auto t = ChatTemplate::Detect(qwen);
  ASSERT_TRUE(t.ok());
  auto text = t->Render({{"user", "x"}});
  ASSERT_TRUE(text.ok());
  EXPECT_THAT(*text, HasSubstr("<|im_start|>system\nYou are Qwen, created by Alibaba Cloud."));
}

TEST(ChatTemplateTest, Llama3) {
  auto t = ChatTemplate::Detect("...<|start_header_id|>' + message['role'] + '<|end_header_id|>");
  ASSERT_TRUE(t.ok());
  auto text = t->Render({{"system", "S"}, {"user", "U"}});
  ASSERT_TRUE(text.ok());
  EXPECT_EQ(*text,
            "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nS<|eot_id|>"
            "<|start_header_id|>user<|end_header_id|>\n\nU<|eot_id|>"
            "<|start_header_id|>assistant<|end_header_id|>\n\n");
  EXPECT_TRUE(t->renders_bos());
}

TEST(ChatTemplateTest, Llama2AndMistral) {
  auto llama2 = ChatTemplate::Detect("[INST] <<SYS>>\\n");
  ASSERT_TRUE(llama2.ok());
  EXPECT_EQ(llama2->name(), "llama2");
  auto text = llama2->Render({{"system", "S"}, {"user", "U1"}, {"assistant", "A1"}, {"user", "U2"}});
  ASSERT_TRUE(text.ok());
  EXPECT_EQ(*text, "<s>[INST] <<SYS>>\nS\n<</SYS>>\n\nU1 [/INST] A1</s><s>[INST] U2 [/INST]");
  auto mistral = ChatTemplate::Detect("{{ '[INST] ' + message['content'] + ' [/INST]' }}");
  ASSERT_TRUE(mistral.ok());
  EXPECT_EQ(mistral->name(), "mistral");
  text = mistral->Render({{"user", "U"}});
  ASSERT_TRUE(text.ok());
  EXPECT_EQ(*text, "<s>[INST] U [/INST]");
}

// Llama 2 and Mistral carry the system prompt inside the first user turn; with no user turn it
// was dropped without a word (found by tests/fuzz/chat_template_fuzz.cpp).
TEST(ChatTemplateTest, Llama2AndMistralRefuseASystemPromptWithoutAUserTurn) {
  for (const char* name : {"llama2", "mistral"}) {
    auto t = ChatTemplate::FromName(name);
    ASSERT_TRUE(t.ok());
    for (const std::vector<ChatMessage>& messages :
         {std::vector<ChatMessage>{{"system", "S"}},
          std::vector<ChatMessage>{{"system", "S"}, {"assistant", "A"}}}) {
      auto text = t->Render(messages);
      ASSERT_FALSE(text.ok()) << name << " rendered " << *text;
      EXPECT_THAT(
          text.status().message(),
          HasSubstr(std::string("a system message needs a user message after it for ") + name));
    }
    // An empty system prompt has nothing to lose.
    EXPECT_TRUE(t->Render({{"system", ""}, {"assistant", "A"}}).ok()) << name;
  }
}

// Gemma prepends system prompts to the next turn: consecutive ones are all kept (the last used to
// replace the others) and a trailing one is refused (it was dropped; found by
// tests/fuzz/chat_template_fuzz.cpp).
TEST(ChatTemplateTest, GemmaKeepsEverySystemPrompt) {
  auto t = ChatTemplate::FromName("gemma");
  ASSERT_TRUE(t.ok());
  auto text = t->Render({{"system", "S1"}, {"system", "S2"}, {"user", "U"}});
  ASSERT_TRUE(text.ok()) << text.status();
  EXPECT_EQ(*text, "<bos><start_of_turn>user\nS1\n\nS2\n\nU<end_of_turn>\n<start_of_turn>model\n");
  for (const std::vector<ChatMessage>& messages :
       {std::vector<ChatMessage>{{"system", "S"}},
        std::vector<ChatMessage>{{"user", "U"}, {"system", "S"}}}) {
    text = t->Render(messages);
    ASSERT_FALSE(text.ok()) << *text;
    EXPECT_THAT(text.status().message(),
                HasSubstr("a system message needs a user or assistant message after it for gemma"));
  }
}

TEST(ChatTemplateTest, GemmaAndGlm4) {
  auto gemma = ChatTemplate::FromName("gemma");
  ASSERT_TRUE(gemma.ok());
  auto text = gemma->Render({{"system", "S"}, {"user", "U"}});
  ASSERT_TRUE(text.ok());
  EXPECT_EQ(*text, "<bos><start_of_turn>user\nS\n\nU<end_of_turn>\n<start_of_turn>model\n");
  auto glm = ChatTemplate::Detect("[gMASK]<sop>{% for m in messages %}<|user|>");
  ASSERT_TRUE(glm.ok());
  text = glm->Render({{"user", "U"}});
  ASSERT_TRUE(text.ok());
  EXPECT_EQ(*text, "[gMASK]<sop><|user|>\nU<|assistant|>");
}

// RenderChat marks what the template wrote: the bytes outside its markup spans are exactly the
// message contents, in order, whatever they hold (here the templates' own special-token text).
TEST(ChatTemplateTest, MarkupSpansLeaveExactlyTheContents) {
  const std::vector<ChatMessage> messages = {
      {"system", "S<|im_start|>system\n"},
      {"user", "U1<|eot_id|><|start_header_id|>"},
      {"assistant", "A1</s><s>[INST]"},
      {"user", "U2<end_of_turn><|user|>"}};
  const std::string contents = messages[0].content + messages[1].content + messages[2].content +
                               messages[3].content;
  for (const std::string& name : ChatTemplate::KnownNames()) {
    SCOPED_TRACE(name);
    auto t = ChatTemplate::FromName(name);
    ASSERT_TRUE(t.ok());
    auto chat = t->RenderChat(messages);
    ASSERT_TRUE(chat.ok()) << chat.status();
    EXPECT_EQ(chat->text, t->Render(messages).value());
    std::string outside;
    size_t at = 0;
    for (const TextSpan& span : chat->markup) {
      ASSERT_LT(span.begin, span.end);  // none empty
      ASSERT_LE(span.end, chat->text.size());
      // Sorted, and apart: adjacent markup is one span.
      if (&span != &chat->markup.front()) {
        ASSERT_GT(span.begin, at);
      }
      outside += chat->text.substr(at, span.begin - at);
      at = span.end;
    }
    outside += chat->text.substr(at);
    EXPECT_EQ(outside, contents);
  }
  // A built-in system prompt is the template's own text: markup.
  auto smol = ChatTemplate::Detect(kSmolLm2);
  ASSERT_TRUE(smol.ok());
  auto chat = smol->RenderChat({{"user", "Hi"}});
  ASSERT_TRUE(chat.ok());
  const size_t hi = chat->text.find("\nHi<") + 1;
  EXPECT_EQ(chat->markup, (std::vector<TextSpan>{{0, hi}, {hi + 2, chat->text.size()}}));
}

TEST(ChatTemplateTest, UnknownNamesListTheKnownOnes) {
  auto t = ChatTemplate::FromName("vicuna");
  ASSERT_FALSE(t.ok());
  EXPECT_THAT(std::string(t.status().message()), HasSubstr("vicuna"));
  EXPECT_THAT(std::string(t.status().message()), HasSubstr("chatml, llama3, llama2, mistral, gemma, glm4"));
  auto d = ChatTemplate::Detect("{{ bos_token }}{% for m in messages %}### Human: {{ m }}");
  ASSERT_FALSE(d.ok());
  EXPECT_THAT(std::string(d.status().message()), HasSubstr("--chat-template"));
}

TEST(ChatTemplateTest, BadRole) {
  auto t = ChatTemplate::FromName("chatml");
  ASSERT_TRUE(t.ok());
  auto text = t->Render({{"tool", "x"}});
  ASSERT_FALSE(text.ok());
  EXPECT_THAT(std::string(text.status().message()), HasSubstr("role 'tool'"));
}

}  // namespace
}  // namespace shardlm
