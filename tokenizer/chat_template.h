// Built-in chat templates for the model families in use, chosen by recognising the model's own
// Jinja template (GGUF tokenizer.chat_template or tokenizer_config.json's chat_template), or by
// name. We render the common cases exactly rather than run a Jinja engine.
#pragma once

#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "tokenizer/tokenizer.h"

namespace shardlm {

struct ChatMessage {
  std::string role;  // "system", "user" or "assistant"
  std::string content;
};

// A rendered chat: the prompt text and which of its bytes the template wrote itself.
struct RenderedChat {
  std::string text;
  // The template's markup (turn and header tokens, role names, separators, BOS text, a built-in
  // system prompt) as sorted, disjoint byte ranges of `text`; every other byte is message
  // content. Tokenize with Tokenizer::EncodeWithSpecialSpans(text, ..., markup) so that special-
  // token text a user writes in a message stays ordinary text.
  std::vector<TextSpan> markup;
};

class ChatTemplate {
 public:
  enum class Kind { kChatml, kLlama3, kLlama2, kMistral, kGemma, kGlm4 };

  // By name: "chatml", "llama3", "llama2", "mistral", "gemma", "glm4". An unknown name is an
  // error that lists the known ones.
  static absl::StatusOr<ChatTemplate> FromName(const std::string& name);
  // By recognising a Jinja template's markers; an unrecognised one is an error naming the
  // known templates and suggesting --chat-template.
  static absl::StatusOr<ChatTemplate> Detect(const std::string& jinja);
  static std::vector<std::string> KnownNames();

  Kind kind() const { return kind_; }
  std::string name() const;
  // The prompt text for `messages` followed by the opening of the assistant's turn. Includes the
  // BOS text where the family's template writes it (then the caller must not add another BOS).
  absl::StatusOr<std::string> Render(const std::vector<ChatMessage>& messages) const;
  // As Render, with the template's markup marked (see RenderedChat).
  absl::StatusOr<RenderedChat> RenderChat(const std::vector<ChatMessage>& messages) const;
  // True when Render writes the BOS token text itself.
  bool renders_bos() const;

 private:
  explicit ChatTemplate(Kind kind) : kind_(kind) {}
  Kind kind_;
  std::string default_system_;  // e.g. SmolLM2's and Qwen2.5's built-in system prompts
};

}  // namespace shardlm
