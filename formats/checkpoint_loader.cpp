#include "formats/checkpoint_loader.h"

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "base/status_macros.h"
#include "formats/gguf_model.h"

namespace shardlm {

absl::StatusOr<OpenedCheckpoint> OpenCheckpoint(const std::string& path) {
  namespace fs = std::filesystem;
  OpenedCheckpoint c;
  c.path = path;
  std::error_code ec;
  if (absl::EndsWith(path, ".gguf")) {
    SHARDLM_ASSIGN_OR_RETURN(c.gguf, GgufFile::Open(path));
    SHARDLM_ASSIGN_OR_RETURN(c.config, ModelConfigFromGguf(*c.gguf));
    c.weights = std::make_unique<GgufHfView>(*c.gguf);
    return c;
  }
  c.hf_dir = fs::is_directory(path, ec) ? path : fs::path(path).parent_path().string();
  if (c.hf_dir.empty()) c.hf_dir = ".";
  SHARDLM_ASSIGN_OR_RETURN(c.config, LoadModelConfig(c.hf_dir + "/config.json"));
  SHARDLM_ASSIGN_OR_RETURN(c.weights, OpenSafetensorsCheckpoint(path));
  return c;
}

}  // namespace shardlm
