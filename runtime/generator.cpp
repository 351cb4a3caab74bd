#include "runtime/generator.h"

#include <algorithm>
#include <chrono>

#include "absl/strings/str_cat.h"
#include "base/status_macros.h"

namespace shardlm {

namespace {
double MsSince(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
}
}  // namespace

absl::Status ValidateGenerateRequest(const ModelConfig& config, std::span<const int32_t> prompt,
                                     int64_t max_new_tokens) {
  if (prompt.empty()) return absl::InvalidArgumentError("prompt: empty, expected at least one id");
  for (size_t i = 0; i < prompt.size(); ++i) {
    if (prompt[i] < 0 || prompt[i] >= config.vocab_size) {
      return absl::InvalidArgumentError(
          absl::StrCat("prompt id ", prompt[i], " at index ", i, " is out of range: expected 0 <= id < vocab_size = ",
                       config.vocab_size));
    }
  }
  if (max_new_tokens <= 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("max_new_tokens: expected a positive integer, got ", max_new_tokens));
  }
  const int64_t total = static_cast<int64_t>(prompt.size()) + max_new_tokens;
  if (config.max_position_embeddings > 0 && total > config.max_position_embeddings) {
    return absl::InvalidArgumentError(absl::StrCat(
        "prompt (", prompt.size(), " ids) + max_new_tokens (", max_new_tokens, ") = ", total,
        " exceeds the context length max_position_embeddings = ", config.max_position_embeddings));
  }
  return absl::OkStatus();
}

absl::StatusOr<GenerateResult> GenerateGreedy(LlamaModel& model, std::span<const int32_t> prompt,
                                              const GenerateOptions& options) {
  const ModelConfig& config = model.config();
  SHARDLM_RETURN_IF_ERROR(ValidateGenerateRequest(config, prompt, options.max_new_tokens));
  const int64_t n_prompt = static_cast<int64_t>(prompt.size());
  // The last generated token is never fed back, so the cache needs one row fewer.
  KvCache cache = model.NewCache(n_prompt + options.max_new_tokens - 1);

  GenerateResult result;
  // Collective on every rank: the next id (on all ranks), and the logits row on rank 0.
  auto take = [&](const Tensor& logits) -> absl::StatusOr<int32_t> {
    SHARDLM_ASSIGN_OR_RETURN(std::vector<int32_t> ids, model.Greedy(logits, 1));
    if (options.keep_logits) {
      SHARDLM_ASSIGN_OR_RETURN(std::vector<float> row, model.GatherLogits(logits, 1));
      result.logits.insert(result.logits.end(), row.begin(), row.end());
    }
    result.tokens.push_back(ids[0]);
    if (options.on_token) options.on_token(ids[0]);
    return ids[0];
  };
  auto is_eos = [&](int32_t id) {
    if (!options.stop_at_eos) return false;
    if (options.is_eog) return options.is_eog(id);
    return std::find(config.eos_token_ids.begin(), config.eos_token_ids.end(), id) !=
           config.eos_token_ids.end();
  };

  auto t0 = std::chrono::steady_clock::now();
  SHARDLM_ASSIGN_OR_RETURN(Tensor logits, model.Forward(prompt, 0, cache));
  SHARDLM_ASSIGN_OR_RETURN(int32_t next, take(logits));
  result.prefill_ms = MsSince(t0);

  t0 = std::chrono::steady_clock::now();
  for (int64_t step = 1; step < options.max_new_tokens && !is_eos(next); ++step) {
    SHARDLM_ASSIGN_OR_RETURN(logits, model.Forward(std::span<const int32_t>(&next, 1),
                                                   n_prompt + step - 1, cache));
    SHARDLM_ASSIGN_OR_RETURN(next, take(logits));
  }
  result.decode_ms = MsSince(t0);
  return result;
}

}  // namespace shardlm
