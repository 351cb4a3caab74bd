#include "tests/coordinator/test_models.h"

#include <unistd.h>

#include <cstdlib>
#include <filesystem>

#include "formats/random_weights.h"

namespace shardlm::coordinator::testing {

std::unique_ptr<ModelContext> TinyModel(int64_t context_length) {
  auto model = std::make_unique<ModelContext>();
  model->path = "tiny";
  model->config.vocab_size = 256;
  model->config.max_position_embeddings = context_length;
  model->context_length = context_length;
  model->tokenizer_status = absl::NotFoundError("no tokenizer: tiny/tokenizer.json does not exist");
  return model;
}

absl::StatusOr<std::unique_ptr<ModelContext>> LoadSmolLm2() {
  const std::string path =
      std::string(SHARDLM_SOURCE_DIR) + "/models/SmolLM2-135M-Instruct.Q4_1.gguf";
  if (!std::filesystem::exists(path)) return nullptr;
  return LoadModelContext(path, 0);
}

absl::StatusOr<const ModelContext*> SmolLm2() {
  static const absl::StatusOr<const ModelContext*> model =
      []() -> absl::StatusOr<const ModelContext*> {
    auto loaded = LoadSmolLm2();
    if (!loaded.ok()) return loaded.status();
    return loaded->release();
  }();
  return model;
}

std::string TinyModelDir() {
  static const std::string dir = [] {
    const std::string d = std::filesystem::temp_directory_path() /
                          ("shardlm-coordinator-tiny-" + std::to_string(getpid()));
    TinyModelSpec spec;  // vocab 256, llama, 2 layers, hidden 64, 8 heads / 2 KV heads, seed 1
    if (!WriteTinyModel(spec, d).ok()) return std::string();
    static const std::string to_remove = d;
    std::atexit([] {
      std::error_code ignored;
      std::filesystem::remove_all(to_remove, ignored);
    });
    return d;
  }();
  return dir;
}

}  // namespace shardlm::coordinator::testing
