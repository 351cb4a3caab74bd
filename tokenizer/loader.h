// A checkpoint's tokenizer and chat template, from GGUF metadata or a HF directory's
// tokenizer.json / tokenizer_config.json.
#pragma once

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "formats/checkpoint_loader.h"
#include "tokenizer/chat_template.h"
#include "tokenizer/tokenizer.h"

namespace shardlm {

// The checkpoint's tokenizer: GGUF tokenizer.ggml.* metadata, or the HF directory's
// tokenizer.json (+ tokenizer_config.json). NotFound when a HF directory has none.
absl::StatusOr<std::unique_ptr<Tokenizer>> LoadTokenizer(const OpenedCheckpoint& checkpoint);

// The chat template: `name` when given (--chat-template), else recognised from GGUF
// tokenizer.chat_template or tokenizer_config.json's chat_template.
absl::StatusOr<ChatTemplate> LoadChatTemplate(const OpenedCheckpoint& checkpoint,
                                              const std::string& name);

}  // namespace shardlm
