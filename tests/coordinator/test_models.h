// Model contexts for the coordinator tests.
#pragma once

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "coordinator/model_context.h"

namespace shardlm::coordinator::testing {

// A llama config with a 256-id vocabulary, no tokenizer, context 512 (built in memory).
std::unique_ptr<ModelContext> TinyModel(int64_t context_length = 512);

// SmolLM2-135M-Instruct Q4_1 (real tokenizer and chat template), loaded once: null when models/
// lacks the file (a test then skips), an error when the file is there but does not load.
absl::StatusOr<const ModelContext*> SmolLm2();
// A fresh SmolLM2 context of one's own, to change its settings (null when the file is absent).
absl::StatusOr<std::unique_ptr<ModelContext>> LoadSmolLm2();

// A directory holding a tiny HF checkpoint (WriteTinyModel, no tokenizer), made once per run.
std::string TinyModelDir();

}  // namespace shardlm::coordinator::testing
