#include "model/generator.h"

#include <algorithm>
#include <chrono>

#include "absl/strings/str_cat.h"
#include "kernels/status_macros.h"

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
  Backend& backend = model.backend();
  const int64_t n_prompt = static_cast<int64_t>(prompt.size());
  // The last generated token is never fed back, so the cache needs one row fewer.
  KvCache cache = model.NewCache(n_prompt + options.max_new_tokens - 1);

  GenerateResult result;
  auto take = [&](const Tensor& logits) -> int32_t {
    int32_t id = 0;
    backend.Argmax(logits, std::span<int32_t>(&id, 1));
    if (options.keep_logits) {
      Tensor host = backend.ToHost(logits);
      result.logits.insert(result.logits.end(), host.data<float>(),
                           host.data<float>() + host.numel());
    }
    result.tokens.push_back(id);
    if (options.on_token) options.on_token(id);
    return id;
  };
  auto is_eos = [&](int32_t id) {
    if (!options.stop_at_eos) return false;
    if (options.is_eog) return options.is_eog(id);
    return std::find(config.eos_token_ids.begin(), config.eos_token_ids.end(), id) !=
           config.eos_token_ids.end();
  };

  auto t0 = std::chrono::steady_clock::now();
  SHARDLM_ASSIGN_OR_RETURN(Tensor logits, model.Forward(prompt, 0, cache));
  int32_t next = take(logits);
  result.prefill_ms = MsSince(t0);

  t0 = std::chrono::steady_clock::now();
  for (int64_t step = 1; step < options.max_new_tokens && !is_eos(next); ++step) {
    SHARDLM_ASSIGN_OR_RETURN(logits, model.Forward(std::span<const int32_t>(&next, 1),
                                                   n_prompt + step - 1, cache));
    next = take(logits);
  }
  result.decode_ms = MsSince(t0);
  return result;
}

}  // namespace shardlm
