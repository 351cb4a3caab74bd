#include "tokenizer/loader.h"

#include <filesystem>
#include <fstream>

#include "nlohmann/json.hpp"

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "base/status_macros.h"
#include "formats/gguf.h"

namespace shardlm {

namespace {

// tokenizer.json (+ tokenizer_config.json) of a HF checkpoint directory.
absl::StatusOr<std::unique_ptr<Tokenizer>> LoadHfTokenizer(const std::string& dir) {
  const std::string json = dir + "/tokenizer.json";
  if (!std::filesystem::exists(json)) {
    return absl::NotFoundError(absl::StrCat("no tokenizer: ", json, " does not exist"));
  }
  SHARDLM_ASSIGN_OR_RETURN(TokenizerVocab vocab, TokenizerVocabFromHfJson(dir));
  DetectEndOfTurnTokens(&vocab);
  return Tokenizer::Create(std::move(vocab));
}

}  // namespace

absl::StatusOr<std::unique_ptr<Tokenizer>> LoadTokenizer(const OpenedCheckpoint& checkpoint) {
  if (checkpoint.is_gguf()) return Tokenizer::FromGguf(*checkpoint.gguf);
  return LoadHfTokenizer(checkpoint.hf_dir);
}

absl::StatusOr<std::unique_ptr<Tokenizer>> LoadTokenizerFromPath(const std::string& model_path) {
  namespace fs = std::filesystem;
  if (absl::EndsWith(model_path, ".gguf")) {
    SHARDLM_ASSIGN_OR_RETURN(std::unique_ptr<GgufFile> gguf, GgufFile::OpenMetadata(model_path));
    return Tokenizer::FromGguf(*gguf);
  }
  // As OpenCheckpoint: a directory, or the directory of the file named.
  std::error_code ec;
  std::string dir =
      fs::is_directory(model_path, ec) ? model_path : fs::path(model_path).parent_path().string();
  if (dir.empty()) dir = ".";
  return LoadHfTokenizer(dir);
}

absl::StatusOr<ChatTemplate> ChatTemplateFromGguf(const GgufFile& gguf, const std::string& path) {
  if (gguf.Find("tokenizer.chat_template")) {
    SHARDLM_ASSIGN_OR_RETURN(std::string jinja, gguf.GetString("tokenizer.chat_template"));
    return ChatTemplate::Detect(jinja);
  }
  // Gemma 3 270M's GGUF (scripts/get-model.sh gemma3) has no template, while the HF checkpoint
  // it comes from has Gemma's; llama.cpp would fall back to ChatML, whose markers this
  // vocabulary lacks.
  if (gguf.Find("general.architecture")) {
    SHARDLM_ASSIGN_OR_RETURN(std::string arch, gguf.GetString("general.architecture"));
    if (arch == "gemma" || arch == "gemma2" || arch == "gemma3") {
      return ChatTemplate::FromName("gemma");
    }
  }
  return absl::NotFoundError(
      absl::StrCat(path, ": no metadata key 'tokenizer.chat_template'; pass --chat-template"));
}

absl::StatusOr<ChatTemplate> LoadChatTemplate(const OpenedCheckpoint& checkpoint,
                                              const std::string& name) {
  if (!name.empty()) return ChatTemplate::FromName(name);
  if (checkpoint.is_gguf()) return ChatTemplateFromGguf(*checkpoint.gguf, checkpoint.path);
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
