// Opens whatever --model names: a HF directory (config.json + safetensors) or a .gguf file, and
// hands out its config and its weights under HF tensor names.
#pragma once

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "model/chat_template.h"
#include "model/config.h"
#include "model/gguf.h"
#include "model/tokenizer.h"
#include "model/weight_source.h"

namespace shardlm {

struct OpenedCheckpoint {
  std::string path;
  ModelConfig config;
  std::unique_ptr<GgufFile> gguf;          // set for GGUF checkpoints (tokenizer metadata too)
  std::unique_ptr<WeightSource> weights;   // HF names; may refer to *gguf, declared after it

  bool is_gguf() const { return gguf != nullptr; }
  // The directory holding a HF checkpoint's config.json / tokenizer.json ("" for GGUF).
  std::string hf_dir;
};

absl::StatusOr<OpenedCheckpoint> OpenCheckpoint(const std::string& path);

// The checkpoint's tokenizer: GGUF tokenizer.ggml.* metadata, or the HF directory's
// tokenizer.json (+ tokenizer_config.json). NotFound when a HF directory has none.
absl::StatusOr<std::unique_ptr<Tokenizer>> LoadTokenizer(const OpenedCheckpoint& checkpoint);

// The chat template: `name` when given (--chat-template), else recognised from GGUF
// tokenizer.chat_template or tokenizer_config.json's chat_template.
absl::StatusOr<ChatTemplate> LoadChatTemplate(const OpenedCheckpoint& checkpoint,
                                              const std::string& name);

}  // namespace shardlm
