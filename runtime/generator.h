// Offline greedy generation for one sequence: the prompt in one batched prefill pass, then one
// token per step with the KV cache.
#pragma once

#include <cstdint>
#include <functional>
#include <span>
#include <vector>

#include "absl/status/statusor.h"
#include "model/llama.h"

namespace shardlm {

struct GenerateOptions {
  int64_t max_new_tokens = 16;
  bool keep_logits = false;  // keep the logits row that chose each generated token
  bool stop_at_eos = true;   // stop after emitting an end-of-generation token
  // End of generation; when unset, config.eos_token_ids.
  std::function<bool(int32_t)> is_eog;
  // Called with each generated id as soon as it is chosen (streaming output).
  std::function<void(int32_t)> on_token;
};

struct GenerateResult {
  std::vector<int32_t> tokens;  // generated ids (not the prompt)
  std::vector<float> logits;    // tokens.size() x vocab when keep_logits (world rank 0 only)
  double prefill_ms = 0;
  double decode_ms = 0;         // for tokens.size() - 1 decode steps
};

// Checks the prompt (non-empty, every id in [0, vocab)) and max_new_tokens (> 0, and prompt plus
// new tokens within max_position_embeddings when the config gives one); errors name the bad value.
absl::Status ValidateGenerateRequest(const ModelConfig& config, std::span<const int32_t> prompt,
                                     int64_t max_new_tokens);

// With a distributed model every rank calls this with the same arguments; all of them get the
// tokens.
absl::StatusOr<GenerateResult> GenerateGreedy(LlamaModel& model, std::span<const int32_t> prompt,
                                              const GenerateOptions& options);

}  // namespace shardlm
