// libFuzzer harness: chat template rendering. The input is split at "\x1e" (record separator):
// the first record is a template name (FromName) and also a Jinja template to recognise
// (Detect); every further record is one message, its role and content split at the first "\x1f"
// (unit separator). Each template found renders the messages.
// Invariants: a rendered prompt holds every message's content; errors quote at most a bounded
// part of what was sent (base/quote.h), whatever the size of the role or name.
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "tests/fuzz/fuzz_util.h"
#include "tokenizer/chat_template.h"

namespace shardlm::fuzz {
namespace {

// Longest error message accepted: a quoted value (100 bytes and its length), the field, and the
// list of known templates.
constexpr size_t kMaxErrorBytes = 512;

void CheckError(const absl::Status& status, const char* what) {
  SHARDLM_FUZZ_CHECK(status.message().size() <= kMaxErrorBytes, "%s: a %zu-byte error message",
                     what, status.message().size());
}

void RenderWith(const ChatTemplate& t, const std::vector<ChatMessage>& messages) {
  absl::StatusOr<std::string> text = t.Render(messages);
  if (!text.ok()) {
    CheckError(text.status(), "Render");
    return;
  }
  for (size_t i = 0; i < messages.size(); ++i) {
    SHARDLM_FUZZ_CHECK(text->find(messages[i].content) != std::string::npos,
                       "%s: message %zu's content is missing from the prompt", t.name().c_str(), i);
  }
}

}  // namespace
}  // namespace shardlm::fuzz

extern "C" int LLVMFuzzerInitialize(int*, char***) { return 0; }

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace shardlm;
  const std::vector<std::string_view> records =
      fuzz::Split(std::string_view(reinterpret_cast<const char*>(data), size), "\x1e");
  const std::string name(records[0]);
  std::vector<ChatMessage> messages;
  for (size_t i = 1; i < records.size(); ++i) {
    const size_t cut = records[i].find('\x1f');
    if (cut == std::string_view::npos) {
      messages.push_back({std::string(records[i]), ""});
    } else {
      messages.push_back(
          {std::string(records[i].substr(0, cut)), std::string(records[i].substr(cut + 1))});
    }
  }
  std::vector<ChatTemplate> templates;
  if (absl::StatusOr<ChatTemplate> t = ChatTemplate::FromName(name); t.ok()) {
    templates.push_back(*t);
  } else {
    fuzz::CheckError(t.status(), "FromName");
  }
  if (absl::StatusOr<ChatTemplate> t = ChatTemplate::Detect(name); t.ok()) {
    templates.push_back(*t);
  } else {
    fuzz::CheckError(t.status(), "Detect");
  }
  // And one known template whatever the name, so that every renderer sees every message list.
  const std::vector<std::string> known = ChatTemplate::KnownNames();
  templates.push_back(*ChatTemplate::FromName(known[name.size() % known.size()]));
  for (const ChatTemplate& t : templates) fuzz::RenderWith(t, messages);
  return 0;
}
