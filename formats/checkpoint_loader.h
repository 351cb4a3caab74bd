// Opens whatever --model names: a HF directory (config.json + safetensors) or a .gguf file, and
// hands out its config and its weights under HF tensor names.
#pragma once

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "formats/config.h"
#include "formats/gguf.h"
#include "formats/weight_source.h"

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

}  // namespace shardlm
