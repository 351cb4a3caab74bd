#include "tokenizer/loader.h"

#include <filesystem>
#include <fstream>

#include "nlohmann/json.hpp"

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "base/status_macros.h"

namespace shardlm {

absl::StatusOr<std::unique_ptr<Tokenizer>> LoadTokenizer(const OpenedCheckpoint& checkpoint) {
  if (checkpoint.is_gguf()) return Tokenizer::FromGguf(*checkpoint.gguf);
  const std::string json = checkpoint.hf_dir + "/tokenizer.json";
  if (!std::filesystem::exists(json)) {
    return absl::NotFoundError(absl::StrCat("no tokenizer: ", json, " does not exist"));
  }
  SHARDLM_ASSIGN_OR_RETURN(TokenizerVocab vocab, TokenizerVocabFromHfJson(checkpoint.hf_dir));
  DetectEndOfTurnTokens(&vocab);
  return Tokenizer::Create(std::move(vocab));
}

absl::StatusOr<ChatTemplate> LoadChatTemplate(const OpenedCheckpoint& checkpoint,
                                              const std::string& name) {
  if (!name.empty()) return ChatTemplate::FromName(name);
  if (checkpoint.is_gguf()) {
    if (!checkpoint.gguf->Find("tokenizer.chat_template")) {
      return absl::NotFoundError(absl::StrCat(
          checkpoint.path, ": no metadata key 'tokenizer.chat_template'; pass --chat-template"));
    }
    SHARDLM_ASSIGN_OR_RETURN(std::string jinja,
                             checkpoint.gguf->GetString("tokenizer.chat_template"));
    return ChatTemplate::Detect(jinja);
  }
  const std::string path = checkpoint.hf_dir + "/tokenizer_config.json";
  std::ifstream in(path);
  nlohmann::json config = nlohmann::json::parse(in, nullptr, /*allow_exceptions=*/false);
  if (!config.is_object() || !config.contains("chat_template") ||
      !config["chat_template"].is_string()) {
    return absl::NotFoundError(absl::StrCat(
        path, ": no string field 'chat_template'; pass --chat-template"));
  }
  return ChatTemplate::Detect(config["chat_template"].get<std::string>());
}

}  // namespace shardlm
