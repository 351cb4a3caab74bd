#include "tokenizer/chat_template.h"

#include "base/quote.h"

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
  if (messages.empty()) return absl::InvalidArgumentError("chat: no messages");
  for (size_t i = 0; i < messages.size(); ++i) {
    const std::string& r = messages[i].role;
    if (r != "system" && r != "user" && r != "assistant") {
      return absl::InvalidArgumentError(absl::StrCat(
          "chat message ", i, ": role ", Quote(r), ", expected system, user or assistant"));
    }
  }
  std::string out;
  switch (kind_) {
    case Kind::kChatml:
      if (messages[0].role != "system" && !default_system_.empty()) {
        absl::StrAppend(&out, "<|im_start|>system\n", default_system_, "<|im_end|>\n");
      }
      for (const ChatMessage& m : messages) {
        absl::StrAppend(&out, "<|im_start|>", m.role, "\n", m.content, "<|im_end|>\n");
      }
      absl::StrAppend(&out, "<|im_start|>assistant\n");
      return out;
    case Kind::kLlama3:
      out = "<|begin_of_text|>";
      for (const ChatMessage& m : messages) {
        absl::StrAppend(&out, "<|start_header_id|>", m.role, "<|end_header_id|>\n\n", m.content,
                        "<|eot_id|>");
      }
      absl::StrAppend(&out, "<|start_header_id|>assistant<|end_header_id|>\n\n");
      return out;
    case Kind::kLlama2:
    case Kind::kMistral: {
      // <s>[INST] (<<SYS>>\nsystem\n<</SYS>>\n\n)user [/INST] answer</s><s>[INST] ...
      std::string system;
      size_t i = 0;
      if (messages[0].role == "system") {
        system = messages[0].content;
        i = 1;
      }
      bool first_user = true;
      for (; i < messages.size(); ++i) {
        const ChatMessage& m = messages[i];
        if (m.role == "user") {
          std::string content = m.content;
          if (first_user && !system.empty()) {
            content = kind_ == Kind::kLlama2
                          ? absl::StrCat("<<SYS>>\n", system, "\n<</SYS>>\n\n", content)
                          : absl::StrCat(system, "\n\n", content);
          }
          first_user = false;
          absl::StrAppend(&out, "<s>[INST] ", content, " [/INST]");
        } else if (m.role == "assistant") {
          absl::StrAppend(&out, " ", m.content, "</s>");
        } else {
          return absl::InvalidArgumentError(
              absl::StrCat("chat message ", i, ": a system message may only come first for ",
                           name()));
        }
      }
      // The system prompt goes inside the first user turn: without one it would vanish.
      if (first_user && !system.empty()) {
        return absl::InvalidArgumentError(absl::StrCat(
            "chat message 0: a system message needs a user message after it for ", name()));
      }
      return out;
    }
    case Kind::kGemma:
      // Gemma has no system role: a system message is prepended to the first user turn.
      out = "<bos>";
      {
        std::string pending_system;
        for (const ChatMessage& m : messages) {
          if (m.role == "system") {
            // Several in a row all go to the next turn (each used to replace the one before).
            pending_system += m.content + "\n\n";
            continue;
          }
          const char* role = m.role == "assistant" ? "model" : "user";
          absl::StrAppend(&out, "<start_of_turn>", role, "\n", pending_system, m.content,
                          "<end_of_turn>\n");
          pending_system.clear();
        }
        // A trailing system prompt has no turn to go into: it would vanish.
        if (pending_system.find_first_not_of('\n') != std::string::npos) {
          return absl::InvalidArgumentError(absl::StrCat(
              "chat message ", messages.size() - 1,
              ": a system message needs a user or assistant message after it for ", name()));
        }
      }
      absl::StrAppend(&out, "<start_of_turn>model\n");
      return out;
    case Kind::kGlm4:
      out = "[gMASK]<sop>";
      for (const ChatMessage& m : messages) {
        absl::StrAppend(&out, "<|", m.role, "|>\n", m.content);
      }
      absl::StrAppend(&out, "<|assistant|>");
      return out;
  }
  return out;
}

}  // namespace shardlm
