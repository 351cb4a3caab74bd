#include "coordinator/model_context.h"

#include <algorithm>
#include <utility>

#include "coordinator/options.h"
#include "base/status_macros.h"
#include "formats/checkpoint_loader.h"
#include "tokenizer/loader.h"
#include "tokenizer/unicode.h"
#include "spdlog/spdlog.h"

namespace shardlm::coordinator {

absl::StatusOr<ChatTemplate> ModelContext::ChatTemplateFor(const std::string& name) const {
  if (!name.empty()) return ChatTemplate::FromName(name);
  return default_chat_template;
}

bool ModelContext::IsEog(int32_t id) const {
  if (tokenizer != nullptr && tokenizer->IsEog(id)) return true;
  return std::find(config.eos_token_ids.begin(), config.eos_token_ids.end(), id) !=
         config.eos_token_ids.end();
}

std::string ModelContext::TokenText(int32_t id) const {
  if (tokenizer == nullptr) return "";
  std::string text;
  unicode::AppendSanitizedUtf8(tokenizer->TokenPiece(id), /*final=*/true, &text);
  return text;
}

absl::StatusOr<std::unique_ptr<ModelContext>> LoadModelContext(const std::string& path,
                                                               int64_t max_model_len) {
  SHARDLM_ASSIGN_OR_RETURN(OpenedCheckpoint checkpoint, OpenCheckpoint(path));
  auto model = std::make_unique<ModelContext>();
  model->path = path;
  model->config = checkpoint.config;
  model->context_length = ContextLength(model->config.max_position_embeddings, max_model_len);
  absl::StatusOr<std::unique_ptr<Tokenizer>> tokenizer = LoadTokenizer(checkpoint);
  if (tokenizer.ok()) {
    model->tokenizer = std::move(*tokenizer);
  } else {
    model->tokenizer_status = tokenizer.status();
    spdlog::warn("{}: no tokenizer ({}): only token id prompts will work", path,
                 std::string(tokenizer.status().message()));
  }
  model->default_chat_template = LoadChatTemplate(checkpoint, "");
  if (!model->default_chat_template.ok() && model->tokenizer != nullptr) {
    spdlog::warn("{}: no chat template ({}): chat prompts need chat_template", path,
                 std::string(model->default_chat_template.status().message()));
  }
  // The tokenizer copied what it needs: the checkpoint (and its mapping) can go.
  return model;
}

}  // namespace shardlm::coordinator
