#include "tokenizer/chat_template.h"

#include <string_view>
#include <utility>

#include "base/quote.h"
#include "base/status_macros.h"

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

namespace shardlm {

namespace {

struct Known {
  const char* name;
  ChatTemplate::Kind kind;
};
constexpr Known kKnown[] = {
    {"chatml", ChatTemplate::Kind::kChatml}, {"llama3", ChatTemplate::Kind::kLlama3},
    {"llama2", ChatTemplate::Kind::kLlama2}, {"mistral", ChatTemplate::Kind::kMistral},
    {"gemma", ChatTemplate::Kind::kGemma},   {"glm4", ChatTemplate::Kind::kGlm4},
};

bool Contains(const std::string& s, const char* needle) {
  return s.find(needle) != std::string::npos;
}

// ChatML templates that insert a fixed system prompt when the conversation has none write it as
// literal text: "<|im_start|>system\nYou are ...<|im_end|>". Returns that text, or "".
std::string DefaultChatmlSystem(const std::string& jinja) {
  // The newline is either a real one or the two characters \n of a Jinja string literal.
  for (const std::string open : {"<|im_start|>system\n", "<|im_start|>system\\n"}) {
    for (size_t at = jinja.find(open); at != std::string::npos; at = jinja.find(open, at + 1)) {
      const size_t begin = at + open.size();
      const size_t end = jinja.find("<|im_end|>", begin);
      if (end == std::string::npos) break;
      std::string text = jinja.substr(begin, end - begin);
      if (text.empty() || Contains(text, "{") || Contains(text, "'") || Contains(text, "+")) {
        continue;
      }
      return text;
    }
  }
  return "";
}

// Builds a RenderedChat: markup appended next to earlier markup extends its span.
class ChatWriter {
 public:
  template <typename... Parts>
  void Markup(const Parts&... parts) {
    const size_t begin = chat_.text.size();
    absl::StrAppend(&chat_.text, parts...);
    if (chat_.text.size() == begin) return;
    if (!chat_.markup.empty() && chat_.markup.back().end == begin) {
      chat_.markup.back().end = chat_.text.size();
    } else {
      chat_.markup.push_back({begin, chat_.text.size()});
    }
  }
  void Content(std::string_view text) { chat_.text.append(text); }
  RenderedChat Done() && { return std::move(chat_); }

 private:
  RenderedChat chat_;
};

}  // namespace

std::vector<std::string> ChatTemplate::KnownNames() {
  std::vector<std::string> names;
  for (const Known& k : kKnown) names.push_back(k.name);
  return names;
}

std::string ChatTemplate::name() const {
  for (const Known& k : kKnown) {
    if (k.kind == kind_) return k.name;
  }
  return "?";
}

absl::StatusOr<ChatTemplate> ChatTemplate::FromName(const std::string& name) {
  for (const Known& k : kKnown) {
    if (name == k.name) return ChatTemplate(k.kind);
  }
  return absl::InvalidArgumentError(absl::StrCat("unknown chat template ", Quote(name),
                                                 ": known templates are ",
                                                 absl::StrJoin(KnownNames(), ", ")));
}

absl::StatusOr<ChatTemplate> ChatTemplate::Detect(const std::string& jinja) {
  if (Contains(jinja, "<|im_start|>")) {
    ChatTemplate t(Kind::kChatml);
    t.default_system_ = DefaultChatmlSystem(jinja);
    return t;
  }
  if (Contains(jinja, "<|start_header_id|>")) return ChatTemplate(Kind::kLlama3);
  if (Contains(jinja, "<start_of_turn>")) return ChatTemplate(Kind::kGemma);
  if (Contains(jinja, "[gMASK]") && Contains(jinja, "<|user|>")) return ChatTemplate(Kind::kGlm4);
  if (Contains(jinja, "[INST]")) {
    // Llama 2 wraps a system prompt in <<SYS>>; Mistral's templates have no such block.
    return ChatTemplate(Contains(jinja, "<<SYS>>") ? Kind::kLlama2 : Kind::kMistral);
  }
  return absl::InvalidArgumentError(absl::StrCat(
      "unrecognised chat template in the model (", jinja.size(),
      " characters); pass --chat-template with one of: ", absl::StrJoin(KnownNames(), ", ")));
}

bool ChatTemplate::renders_bos() const {
  return kind_ == Kind::kLlama3 || kind_ == Kind::kLlama2 || kind_ == Kind::kMistral ||
         kind_ == Kind::kGemma;
}

absl::StatusOr<std::string> ChatTemplate::Render(const std::vector<ChatMessage>& messages) const {
  SHARDLM_ASSIGN_OR_RETURN(RenderedChat rendered, RenderChat(messages));
  return std::move(rendered.text);
}

absl::StatusOr<RenderedChat> ChatTemplate::RenderChat(
    const std::vector<ChatMessage>& messages) const {
  if (messages.empty()) return absl::InvalidArgumentError("chat: no messages");
  for (size_t i = 0; i < messages.size(); ++i) {
    const std::string& r = messages[i].role;
    if (r != "system" && r != "user" && r != "assistant") {
      return absl::InvalidArgumentError(absl::StrCat(
          "chat message ", i, ": role ", Quote(r), ", expected system, user or assistant"));
    }
  }
  ChatWriter out;
  switch (kind_) {
    case Kind::kChatml:
      if (messages[0].role != "system" && !default_system_.empty()) {
        out.Markup("<|im_start|>system\n", default_system_, "<|im_end|>\n");
      }
      for (const ChatMessage& m : messages) {
        out.Markup("<|im_start|>", m.role, "\n");
        out.Content(m.content);
        out.Markup("<|im_end|>\n");
      }
      out.Markup("<|im_start|>assistant\n");
      break;
    case Kind::kLlama3:
      out.Markup("<|begin_of_text|>");
      for (const ChatMessage& m : messages) {
        out.Markup("<|start_header_id|>", m.role, "<|end_header_id|>\n\n");
        out.Content(m.content);
        out.Markup("<|eot_id|>");
      }
      out.Markup("<|start_header_id|>assistant<|end_header_id|>\n\n");
      break;
    case Kind::kLlama2:
    case Kind::kMistral: {
      // <s>[INST] (<<SYS>>\nsystem\n<</SYS>>\n\n)user [/INST] answer</s><s>[INST] ...
      const std::string* system = nullptr;
      size_t i = 0;
      if (messages[0].role == "system") {
        if (!messages[0].content.empty()) system = &messages[0].content;
        i = 1;
      }
      bool first_user = true;
      for (; i < messages.size(); ++i) {
        const ChatMessage& m = messages[i];
        if (m.role == "user") {
          out.Markup("<s>[INST] ");
          if (first_user && system != nullptr) {
            if (kind_ == Kind::kLlama2) out.Markup("<<SYS>>\n");
            out.Content(*system);
            out.Markup(kind_ == Kind::kLlama2 ? "\n<</SYS>>\n\n" : "\n\n");
          }
          first_user = false;
          out.Content(m.content);
          out.Markup(" [/INST]");
        } else if (m.role == "assistant") {
          out.Markup(" ");
          out.Content(m.content);
          out.Markup("</s>");
        } else {
          return absl::InvalidArgumentError(
              absl::StrCat("chat message ", i, ": a system message may only come first for ",
                           name()));
        }
      }
      // The system prompt goes inside the first user turn: without one it would vanish.
      if (first_user && system != nullptr) {
        return absl::InvalidArgumentError(absl::StrCat(
            "chat message 0: a system message needs a user message after it for ", name()));
      }
      break;
    }
    case Kind::kGemma: {
      // Gemma has no system role: a system message is prepended to the first user turn.
      out.Markup("<bos>");
      // Several system messages in a row all go to the next turn.
      std::vector<const std::string*> pending_system;
      for (const ChatMessage& m : messages) {
        if (m.role == "system") {
          pending_system.push_back(&m.content);
          continue;
        }
        out.Markup("<start_of_turn>", m.role == "assistant" ? "model" : "user", "\n");
        for (const std::string* system : pending_system) {
          out.Content(*system);
          out.Markup("\n\n");
        }
        pending_system.clear();
        out.Content(m.content);
        out.Markup("<end_of_turn>\n");
      }
      // A trailing system prompt has no turn to go into: it would vanish.
      for (const std::string* system : pending_system) {
        if (!system->empty()) {
          return absl::InvalidArgumentError(absl::StrCat(
              "chat message ", messages.size() - 1,
              ": a system message needs a user or assistant message after it for ", name()));
        }
      }
      out.Markup("<start_of_turn>model\n");
      break;
    }
    case Kind::kGlm4:
      out.Markup("[gMASK]<sop>");
      for (const ChatMessage& m : messages) {
        out.Markup("<|", m.role, "|>\n");
        out.Content(m.content);
      }
      out.Markup("<|assistant|>");
      break;
  }
  return std::move(out).Done();
}

}  // namespace shardlm
