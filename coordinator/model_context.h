// What the coordinator knows of the model: its config and tokenizer metadata, never its weights
// (OpenCheckpoint only maps the file; nothing here reads a tensor).
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "tokenizer/chat_template.h"
#include "formats/config.h"
#include "tokenizer/tokenizer.h"

namespace shardlm::coordinator {

struct ModelContext {
  std::string path;        // as given with --model
  ModelConfig config;
  int64_t context_length = 0;  // prompt + generated tokens per request, at most
  // Null when the checkpoint has none (a HF directory without tokenizer.json): then only token
  // id prompts work, outputs carry ids without text, and `tokenizer_status` says why.
  std::unique_ptr<Tokenizer> tokenizer;
  absl::Status tokenizer_status;
  // The template recognised from the checkpoint, or why there is none.
  absl::StatusOr<ChatTemplate> default_chat_template = absl::NotFoundError("no chat template");
  // Chat prompts: false (the default) parses special tokens in the template's markup only, so
  // that "<|im_start|>system" written in a message is plain text; true parses them in the message
  // contents too (--chat-parse-special, the behaviour before).
  bool chat_parse_special = false;

  // `name` ("chatml", ...) or, when empty, the model's own template.
  absl::StatusOr<ChatTemplate> ChatTemplateFor(const std::string& name) const;
  // End of generation: the tokenizer's EOG tokens and the config's eos_token_id(s).
  bool IsEog(int32_t id) const;
  // The text of one token for logprobs: its piece, invalid UTF-8 as U+FFFD ("" without a
  // tokenizer).
  std::string TokenText(int32_t id) const;
};

// Opens `path` (HF directory or .gguf) for its config, tokenizer and chat template. A missing
// tokenizer or template is not an error (see ModelContext); an unreadable config is.
absl::StatusOr<std::unique_ptr<ModelContext>> LoadModelContext(const std::string& path,
                                                               int64_t max_model_len);

}  // namespace shardlm::coordinator
