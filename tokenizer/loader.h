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

// The tokenizer of `model_path` without opening the checkpoint: for a .gguf file only its
// header and metadata (GgufFile::OpenMetadata), so vocabulary-only files and architectures the
// decoder does not run work too; for a HF directory (or a file in one) only tokenizer.json and
// tokenizer_config.json. NotFound when a HF directory has no tokenizer.json.
absl::StatusOr<std::unique_ptr<Tokenizer>> LoadTokenizerFromPath(const std::string& model_path);

// The chat template: `name` when given (--chat-template), else recognised from GGUF
// tokenizer.chat_template or tokenizer_config.json's chat_template.
absl::StatusOr<ChatTemplate> LoadChatTemplate(const OpenedCheckpoint& checkpoint,
                                              const std::string& name);

// The chat template of a GGUF file (`path` names it in messages): recognised from
// tokenizer.chat_template; without that key, Gemma's for the gemma architectures, whose
// checkpoints all carry that template (some GGUF conversions leave it out), else NotFound.
absl::StatusOr<ChatTemplate> ChatTemplateFromGguf(const GgufFile& gguf, const std::string& path);

}  // namespace shardlm
